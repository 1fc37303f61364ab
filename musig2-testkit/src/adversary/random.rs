//! The seeded per-message strategy of [`Behaviour::Randomized`](super::Behaviour).
//!
//! Every frame the adversary sends passes through [`Actor::random_send`], which draws one
//! [`Action`] from the strategy's ChaCha20 stream and carries it out. The protocol logic around
//! it stays honest (join, commitment, nonce, partial signature; as star coordinator the relays,
//! aggregate nonce and final signature), so what the honest nodes see is the honest protocol
//! bent one message at a time. Frame-level actions (drop, duplicate, delay, reorder, relay
//! stale envelopes) apply to any frame; envelope-level ones (re-date, reuse a sequence number,
//! equivocate, sign with another key) to the adversary's own envelope in it.

use std::time::Duration;

use bytes::Bytes;
use musig2_proto::SignedNonce;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::task::JoinHandle;

use super::{
    Actor, Attempt, Body, Envelope, Frame, NonceCommitment, PartialSigBytes, PeerId, PubNonceBytes,
    SeqNo, SharedTransport, SignedEnvelope, TransportError, decode_frame,
};
use crate::clock::WallClock;

/// Envelopes kept for stale relays and sequence-number reuse.
const KEPT: usize = 64;

/// Tries per delayed frame while the receiver's queue is full or the frame was dropped.
const DELAYED_SEND_ATTEMPTS: usize = 20;

/// What the strategy does with one outgoing frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Send it as the protocol says.
    Pass,
    /// Do not send it to a subset of its targets.
    Drop,
    /// Send it, and again to a subset.
    Duplicate,
    /// Send it to a subset later (also just before and after phase deadlines).
    Delay,
    /// Hold it back a few milliseconds, so the frames sent after it overtake it.
    Reorder,
    /// Re-sign our envelope with another timestamp (inside, at and past the skew bound).
    Redate,
    /// Re-sign our envelope under an earlier sequence number, or burn the next one on a copy of
    /// an earlier message.
    ReuseSeq,
    /// Send a subset a different value (nonce, commitment, partial signature, aggregate nonce,
    /// final signature) under the same or a new sequence number.
    Equivocate,
    /// Send it, and relay stale envelopes: other signers' earlier ones, our earlier ones, ours
    /// for another attempt.
    RelayStale,
    /// Send a subset our envelope under a signature by another key (then, half the time, the
    /// genuine one too): what a node acts on before its check (ADR 0021, 0022) must never
    /// convict anyone unchecked.
    BadSignature,
}

impl Action {
    fn needs_own_envelope(self) -> bool {
        matches!(
            self,
            Action::Redate | Action::ReuseSeq | Action::Equivocate | Action::BadSignature
        )
    }
}

/// The strategy's state (owned by the adversary's actor).
pub(super) struct Strategy {
    rng: ChaCha20Rng,
    skew_ms: u64,
    transport: SharedTransport,
    clock: WallClock,
    started_ms: u64,
    /// Our own envelopes as sent, oldest first.
    history: Vec<SignedEnvelope>,
    /// Other signers' envelopes as received.
    stale: Vec<SignedEnvelope>,
    delayed: Vec<JoinHandle<()>>,
    mutations: Vec<String>,
    /// Our second nonce, shown to the equivocation victims (its commitment too), so that a
    /// victim can be shown a consistent commitment and reveal.
    alt_nonce: Option<PubNonceBytes>,
    /// The peers the first equivocation went to; later ones mostly go to the same peers.
    victims: Option<Vec<PeerId>>,
    /// A run-wide plan that overrides the per-message draw for commitments and nonces.
    theme: Option<Theme>,
}

/// A run-wide plan (a quarter of the runs): equivocate consistently — one commitment and nonce
/// to the victims, another to the rest — with the nonces dated `nonce_offset_ms` (just inside
/// the skew bound, in the past) and the commitments sent `commit_delay` late, so that the
/// honest nodes reveal, sign and relay the nonces only once the relayed copies are outside the
/// bound (issue 9, attack 7).
#[derive(Debug, Clone, Copy)]
struct Theme {
    nonce_offset_ms: i64,
    commit_delay: Duration,
}

impl Strategy {
    pub(super) fn new(
        seed: u64,
        max_clock_skew: Duration,
        transport: SharedTransport,
        clock: WallClock,
    ) -> Strategy {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let skew_ms = u64::try_from(max_clock_skew.as_millis()).unwrap_or(u64::MAX);
        let theme = rng.random_bool(0.25).then(|| {
            let edge = i64::try_from(skew_ms).unwrap_or(i64::MAX / 2);
            Theme {
                nonce_offset_ms: -(edge - rng.random_range(1..=1_000)),
                commit_delay: Duration::from_millis(rng.random_range(200..=3_000)),
            }
        });
        Strategy {
            rng,
            theme,
            skew_ms,
            transport,
            clock,
            started_ms: clock.now_ms(),
            history: Vec::new(),
            stale: Vec::new(),
            delayed: Vec::new(),
            mutations: Vec::new(),
            alt_nonce: None,
            victims: None,
        }
    }

    /// Keeps another signer's envelope for stale relays.
    pub(super) fn saw(&mut self, env: &SignedEnvelope) {
        if self.stale.len() < KEPT {
            self.stale.push(env.clone());
        } else {
            let i = self.rng.random_range(0..KEPT);
            self.stale[i] = env.clone();
        }
    }

    /// Stops the delayed sends still pending and returns what was done.
    pub(super) fn finish(self) -> Vec<String> {
        for task in &self.delayed {
            task.abort();
        }
        self.mutations
    }

    fn choose(&mut self, own: bool) -> Action {
        loop {
            let action = match self.rng.random_range(0..100u32) {
                0..35 => Action::Pass,
                35..40 => Action::BadSignature,
                40..47 => Action::Drop,
                47..54 => Action::Duplicate,
                54..62 => Action::Delay,
                62..69 => Action::Reorder,
                69..77 => Action::Redate,
                77..84 => Action::ReuseSeq,
                84..93 => Action::Equivocate,
                _ => Action::RelayStale,
            };
            if own || !action.needs_own_envelope() {
                return action;
            }
        }
    }

    /// A non-empty subset of `peers` (all of them a third of the time) and the rest.
    fn split(&mut self, peers: &[PeerId]) -> (Vec<PeerId>, Vec<PeerId>) {
        if peers.len() <= 1 || self.rng.random_bool(1.0 / 3.0) {
            return (peers.to_vec(), Vec::new());
        }
        let keep = self.rng.random_range(0..peers.len());
        let (mut chosen, mut rest) = (Vec::new(), Vec::new());
        for (i, p) in peers.iter().enumerate() {
            if i == keep || self.rng.random_bool(0.5) {
                chosen.push(*p);
            } else {
                rest.push(*p);
            }
        }
        (chosen, rest)
    }

    /// The equivocation victims among `peers`: mostly the same as the first time, else a
    /// fresh subset.
    fn victims(&mut self, peers: &[PeerId]) -> (Vec<PeerId>, Vec<PeerId>) {
        if let Some(victims) = &self.victims {
            let (chosen, rest): (Vec<PeerId>, Vec<PeerId>) =
                peers.iter().partition(|p| victims.contains(p));
            if !chosen.is_empty() && (self.theme.is_some() || self.rng.random_bool(0.75)) {
                return (chosen, rest);
            }
        }
        let (chosen, rest) = self.split(peers);
        self.victims.get_or_insert_with(|| chosen.clone());
        (chosen, rest)
    }

    /// A delay: short, or landing just before or after a phase deadline (`phase_ms`: the
    /// session's nonce and partial-signature timeouts), a star member's deadline (1.5 times
    /// those) or the skew bound.
    fn delay(&mut self, phase_ms: [u64; 2]) -> Duration {
        let around = |rng: &mut ChaCha20Rng, at: u64| {
            let off = rng.random_range(1..=200);
            if rng.random_bool(0.5) {
                at.saturating_sub(off)
            } else {
                at.saturating_add(off)
            }
        };
        let phase = phase_ms[self.rng.random_range(0..2)];
        let ms = match self.rng.random_range(0..6u32) {
            0 | 1 => self.rng.random_range(1..=1_000),
            2 => around(&mut self.rng, phase),
            3 => around(&mut self.rng, phase.saturating_mul(3) / 2),
            4 => around(&mut self.rng, self.skew_ms),
            _ => self.rng.random_range(1..=30_000),
        };
        Duration::from_millis(ms)
    }

    /// A timestamp offset: well inside the skew bound, just inside it, exactly on it, just past
    /// it, or well past it; into the past or the future.
    fn redate_offset(&mut self) -> i64 {
        let edge = i64::try_from(self.skew_ms).unwrap_or(i64::MAX / 2);
        let magnitude = match self.rng.random_range(0..6u32) {
            0 => self.rng.random_range(0..edge.max(1)),
            1 | 2 => edge - self.rng.random_range(1..=500),
            3 => edge,
            4 => edge + self.rng.random_range(1..=10),
            _ => edge + self.rng.random_range(11..=10_000),
        };
        if self.rng.random_bool(0.6) {
            -magnitude
        } else {
            magnitude
        }
    }

    /// Sends `frame` to `peers` after `delay`, from a task of its own.
    fn later(&mut self, delay: Duration, peers: Vec<PeerId>, frame: Vec<u8>) {
        if peers.is_empty() {
            return;
        }
        let transport = self.transport.clone();
        let frame = Bytes::from(frame);
        self.delayed.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            for peer in peers {
                for _ in 0..DELAYED_SEND_ATTEMPTS {
                    match transport.send(peer, frame.clone()).await {
                        Err(TransportError::Timeout { .. } | TransportError::Backpressure(_)) => {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        _ => break,
                    }
                }
            }
        }));
    }

    fn note(&mut self, what: &str, mutation: String) {
        let at = self.clock.now_ms().saturating_sub(self.started_ms);
        self.mutations.push(format!(
            "+{}.{:03}s {what}: {mutation}",
            at / 1000,
            at % 1000
        ));
    }
}

/// `kind#seq` of each envelope (with its signer when it is not ours).
fn describe(envs: &[SignedEnvelope], me: Option<usize>) -> String {
    let names: Vec<String> = envs
        .iter()
        .map(|e| {
            let e = e.envelope();
            let from = e.signer().as_usize();
            if Some(from) == me {
                format!("{}#{}", e.body().kind(), e.seq().get())
            } else {
                format!("{}#{} of {from}", e.body().kind(), e.seq().get())
            }
        })
        .collect();
    match names.len() {
        0 => "announcement".into(),
        1 => names.concat(),
        _ => format!("batch[{}]", names.join(", ")),
    }
}

/// `body` with its attempt number replaced, where it has one.
fn with_attempt(body: &Body, attempt: Attempt) -> Option<Body> {
    Some(match body.clone() {
        Body::NonceCommit { commitment, .. } => Body::NonceCommit {
            attempt,
            commitment,
        },
        Body::Nonce { pub_nonces, .. } => Body::Nonce {
            attempt,
            pub_nonces,
        },
        Body::PartialSig {
            partial_sigs,
            aggregate,
            ..
        } => Body::PartialSig {
            attempt,
            partial_sigs,
            aggregate,
        },
        _ => return None,
    })
}

impl Actor {
    /// Sends `frame` to `peers` the way the randomized strategy decides.
    pub(super) async fn random_send(&mut self, peers: &[PeerId], frame: &[u8]) {
        let Some(mut strategy) = self.random.take() else {
            return;
        };
        let now = self.plan(&mut strategy, peers, frame);
        self.random = Some(strategy);
        for (targets, bytes) in now {
            if !targets.is_empty() {
                self.send_now(&targets, &bytes).await;
            }
        }
    }

    /// The session's nonce and partial-signature timeouts (what delays aim around).
    fn phase_ms(&self) -> [u64; 2] {
        self.session.as_ref().map_or([10_000; 2], |s| {
            let t = s.ann.announcement().policy.timeouts;
            [t.nonce_ms, t.partial_sig_ms]
        })
    }

    /// Signer indices of `peers`, for the mutation log.
    fn names(&self, peers: &[PeerId]) -> String {
        let Some(s) = &self.session else {
            return format!("{} peers", peers.len());
        };
        let idx: Vec<String> = peers
            .iter()
            .map(|p| {
                s.peers
                    .iter()
                    .position(|q| q.as_ref() == Some(p))
                    .map_or_else(|| "?".into(), |i| i.to_string())
            })
            .collect();
        format!("[{}]", idx.join(","))
    }

    /// Decides what to do with `frame`; schedules delayed copies and returns what to send now.
    fn plan(
        &mut self,
        st: &mut Strategy,
        peers: &[PeerId],
        frame: &[u8],
    ) -> Vec<(Vec<PeerId>, Vec<u8>)> {
        let pass = vec![(peers.to_vec(), frame.to_vec())];
        if peers.is_empty() {
            return Vec::new();
        }
        let Ok(decoded) = decode_frame(frame, &self.limits) else {
            return pass;
        };
        let (envs, batch) = match decoded {
            Frame::Envelope(e) => (vec![e], false),
            Frame::Batch(v) => (v, true),
            Frame::Announcement(_) | Frame::Signatures(_) => (Vec::new(), false),
        };
        let me = self.session.as_ref().map(|s| s.me);
        let own = envs.iter().position(|e| Some(e.envelope().signer()) == me);
        for e in envs.iter().filter(|e| Some(e.envelope().signer()) == me) {
            if st.history.len() < KEPT {
                st.history.push(e.clone());
            }
        }
        let what = describe(&envs, me.map(|m| m.as_usize()));
        let encode = |envs: &[SignedEnvelope]| -> Vec<u8> {
            match envs {
                [single] if !batch => Frame::Envelope(single.clone()).encode(),
                many => Frame::encode_batch(many),
            }
        };
        let replaced = |with: SignedEnvelope| -> Vec<u8> {
            let mut copy = envs.clone();
            if let Some(i) = own {
                copy[i] = with;
            }
            encode(&copy)
        };
        let own_kind = own.map(|i| envs[i].envelope().body().kind());
        // The run's theme (if any) for our commitment and nonce: (re-date, delay).
        let themed = match (st.theme, own_kind) {
            (Some(t), Some("nonce-commit")) => Some((0, Some(t.commit_delay))),
            (Some(t), Some("nonce")) => Some((t.nonce_offset_ms, None)),
            _ => None,
        };
        let action = if themed.is_some() {
            Action::Equivocate
        } else {
            st.choose(own.is_some())
        };
        match action {
            Action::Pass => pass,
            Action::Drop => {
                let (dropped, rest) = st.split(peers);
                let names = self.names(&dropped);
                st.note(&what, format!("dropped for {names}"));
                vec![(rest, frame.to_vec())]
            }
            Action::Duplicate => {
                let (twice, _) = st.split(peers);
                let names = self.names(&twice);
                st.note(&what, format!("duplicated to {names}"));
                vec![(peers.to_vec(), frame.to_vec()), (twice, frame.to_vec())]
            }
            Action::Delay => {
                let (late, rest) = st.split(peers);
                let delay = st.delay(self.phase_ms());
                let names = self.names(&late);
                st.note(&what, format!("delayed {delay:?} to {names}"));
                st.later(delay, late, frame.to_vec());
                vec![(rest, frame.to_vec())]
            }
            Action::Reorder => {
                let hold = Duration::from_millis(st.rng.random_range(1..=200));
                st.note(&what, format!("held back {hold:?} (reordered)"));
                st.later(hold, peers.to_vec(), frame.to_vec());
                Vec::new()
            }
            Action::Redate => {
                let Some(env) = own.map(|i| envs[i].clone()) else {
                    return pass;
                };
                let offset = st.redate_offset();
                let now = self.clock.now_ms();
                let ts = now.saturating_add_signed(offset);
                let redated = resigned(&env, ts, &self.keypair);
                let (chosen, rest) = st.split(peers);
                let names = self.names(&chosen);
                st.note(&what, format!("re-dated {offset:+} ms for {names}"));
                vec![(chosen, replaced(redated)), (rest, frame.to_vec())]
            }
            Action::ReuseSeq => self.reuse_seq(st, peers, frame, &envs, own, &what, &replaced),
            Action::BadSignature => {
                let Some(env) = own.map(|i| envs[i].clone()) else {
                    return pass;
                };
                let throwaway = secp256k1::Keypair::new(&mut st.rng);
                let forged = resigned(&env, env.envelope().timestamp_ms(), &throwaway);
                let (chosen, rest) = st.split(peers);
                let (genuine_to, then) = if st.rng.random_bool(0.5) {
                    (peers.to_vec(), ", then the genuine one to all")
                } else {
                    (rest, "")
                };
                let names = self.names(&chosen);
                st.note(&what, format!("badly signed for {names}{then}"));
                vec![(chosen, replaced(forged)), (genuine_to, frame.to_vec())]
            }
            Action::Equivocate => {
                let Some(env) = own.map(|i| envs[i].clone()) else {
                    return pass;
                };
                let Some(alt) = self.alternative(st, env.envelope().body()) else {
                    return pass;
                };
                let e = env.envelope().clone();
                let same_seq = st.rng.random_bool(0.5);
                let seq = if same_seq {
                    Some(e.seq())
                } else {
                    self.session.as_mut().map(|s| s.take_seq())
                };
                let Some(seq) = seq else { return pass };
                // A third of the time both versions are re-dated alike (e.g. to just inside the
                // skew bound, so later relays of them fall outside it).
                let offset = match themed {
                    Some((offset, _)) => offset,
                    None if st.rng.random_bool(1.0 / 3.0) => st.redate_offset(),
                    None => 0,
                };
                let ts = self.clock.now_ms().saturating_add_signed(offset);
                let sign = |body: Body, seq: SeqNo| {
                    Envelope::sign(e.session_id(), e.signer(), seq, ts, body, &self.keypair)
                };
                let original = if offset == 0 {
                    frame.to_vec()
                } else {
                    replaced(sign(e.body().clone(), e.seq()))
                };
                let alt_frame = replaced(sign(alt, seq));
                let (chosen, rest) = st.victims(peers);
                let names = self.names(&chosen);
                let order = if themed.is_some() {
                    2
                } else {
                    st.rng.random_range(0..4u32)
                };
                // A quarter of the time everything goes out late.
                let delay = match themed {
                    Some((_, delay)) => delay,
                    None => st
                        .rng
                        .random_bool(0.25)
                        .then(|| self.phase_ms())
                        .map(|phase| st.delay(phase)),
                };
                st.note(
                    &what,
                    format!(
                        "{}equivocated to {names} (seq {}{}{}{})",
                        if themed.is_some() { "[theme] " } else { "" },
                        seq.get(),
                        match order {
                            0 => ", after the original",
                            1 => ", before the original",
                            _ => "",
                        },
                        if offset == 0 {
                            String::new()
                        } else {
                            format!(", both re-dated {offset:+} ms")
                        },
                        delay
                            .map(|d| format!(", delayed {d:?}"))
                            .unwrap_or_default()
                    ),
                );
                let sends = match order {
                    0 => vec![(peers.to_vec(), original), (chosen, alt_frame)],
                    1 => vec![(chosen, alt_frame), (peers.to_vec(), original)],
                    _ => vec![(chosen, alt_frame), (rest, original)],
                };
                match delay {
                    None => sends,
                    Some(d) => {
                        for (to, bytes) in sends {
                            st.later(d, to, bytes);
                        }
                        Vec::new()
                    }
                }
            }
            Action::RelayStale => {
                let mut out = pass;
                let count = st.rng.random_range(1..=3);
                for _ in 0..count {
                    let Some(stale) = self.stale_envelope(st, own.map(|i| &envs[i])) else {
                        continue;
                    };
                    let (to, _) = st.split(peers);
                    let names = self.names(&to);
                    let label = describe(std::slice::from_ref(&stale), me.map(|m| m.as_usize()));
                    st.note(&what, format!("then relayed stale {label} to {names}"));
                    out.push((to, Frame::Envelope(stale).encode()));
                }
                out
            }
        }
    }

    /// [`Action::ReuseSeq`]: our envelope under an earlier sequence number for a subset, or
    /// (half the time) the frame as is plus a copy of an earlier message of ours under the
    /// *next* sequence number (so our next message reaches that subset as a duplicate).
    #[allow(clippy::too_many_arguments)]
    fn reuse_seq(
        &mut self,
        st: &mut Strategy,
        peers: &[PeerId],
        frame: &[u8],
        envs: &[SignedEnvelope],
        own: Option<usize>,
        what: &str,
        replaced: &dyn Fn(SignedEnvelope) -> Vec<u8>,
    ) -> Vec<(Vec<PeerId>, Vec<u8>)> {
        let pass = vec![(peers.to_vec(), frame.to_vec())];
        let Some(env) = own.map(|i| envs[i].clone()) else {
            return pass;
        };
        let e = env.envelope().clone();
        let now = self.clock.now_ms();
        let (chosen, rest) = st.split(peers);
        let names = self.names(&chosen);
        if st.rng.random_bool(0.5) {
            let Some(next) = self.session.as_ref().map(|s| s.next_seq) else {
                return pass;
            };
            let earlier: Vec<&SignedEnvelope> = st
                .history
                .iter()
                .filter(|h| h.envelope().body() != e.body())
                .collect();
            if earlier.is_empty() {
                return pass;
            }
            let pick = earlier[st.rng.random_range(0..earlier.len())]
                .envelope()
                .clone();
            let burn = Envelope::sign(
                e.session_id(),
                e.signer(),
                next,
                now,
                pick.body().clone(),
                &self.keypair,
            );
            st.note(
                what,
                format!(
                    "sent, then a copy of our {}#{} under the next seq {} to {names}",
                    pick.body().kind(),
                    pick.seq().get(),
                    next.get()
                ),
            );
            return vec![
                (peers.to_vec(), frame.to_vec()),
                (chosen, Frame::Envelope(burn).encode()),
            ];
        }
        let earlier: Vec<SeqNo> = st
            .history
            .iter()
            .map(|h| h.envelope())
            .filter(|h| h.seq() < e.seq() && h.body() != e.body())
            .map(|h| h.seq())
            .collect();
        if earlier.is_empty() {
            return pass;
        }
        let seq = earlier[st.rng.random_range(0..earlier.len())];
        let reused = Envelope::sign(
            e.session_id(),
            e.signer(),
            seq,
            now,
            e.body().clone(),
            &self.keypair,
        );
        st.note(
            what,
            format!("re-signed under earlier seq {} for {names}", seq.get()),
        );
        vec![(chosen, replaced(reused)), (rest, frame.to_vec())]
    }

    /// Mostly our one second nonce (so a victim's commitment and reveal agree), sometimes a
    /// fresh one.
    fn second_nonce(&mut self, st: &mut Strategy) -> Option<PubNonceBytes> {
        if st.theme.is_none() && st.rng.random_bool(0.25) {
            return self.make_nonce(false);
        }
        if st.alt_nonce.is_none() {
            st.alt_nonce = self.make_nonce(false);
        }
        st.alt_nonce
    }

    /// A different value of the same kind as `body`, where there is one.
    fn alternative(&mut self, st: &mut Strategy, body: &Body) -> Option<Body> {
        let s = self.session.as_ref()?;
        let (id, me) = (s.id, s.me);
        Some(match body {
            Body::Join { .. } => body.clone(),
            Body::NonceCommit { attempt, .. } => {
                let fresh = self.second_nonce(st)?;
                Body::NonceCommit {
                    attempt: *attempt,
                    commitment: NonceCommitment::compute(&id, me, *attempt, &[fresh]),
                }
            }
            Body::Nonce { attempt, .. } => Body::Nonce {
                attempt: *attempt,
                pub_nonces: vec![self.second_nonce(st)?],
            },
            Body::PartialSig {
                attempt, aggregate, ..
            } => {
                let mut scalar = [0u8; 32];
                st.rng.fill(&mut scalar[1..]);
                Body::PartialSig {
                    attempt: *attempt,
                    partial_sigs: vec![PartialSigBytes::from_bytes(scalar).ok()?],
                    aggregate: *aggregate,
                }
            }
            Body::AggregateNonce { attempt, .. } => {
                // The set the honest aggregate committed to, with our nonce swapped for a fresh
                // one (signed under a new number): another aggregate, another digest.
                let mut nonces = self.session.as_ref()?.hub.as_ref()?.nonce_set()?;
                let fresh = self.make_nonce(false)?;
                let seq = self.session.as_mut()?.take_seq();
                let ts = self.clock.now_ms();
                let nonce_body = Body::Nonce {
                    attempt: *attempt,
                    pub_nonces: vec![fresh],
                };
                let signed = Envelope::sign(id, me, seq, ts, nonce_body, &self.keypair);
                let slot = nonces.get_mut(me.as_usize())?;
                *slot = SignedNonce {
                    signer: me,
                    seq,
                    timestamp_ms: ts,
                    attempt: *attempt,
                    pub_nonces: vec![fresh],
                    auth: signed.auth().clone(),
                };
                Body::AggregateNonce {
                    attempt: *attempt,
                    agg_nonces: Body::sum_nonce_set(&nonces, 1)?,
                    nonce_set: Body::nonce_set_digest(&id, *attempt, &nonces),
                }
            }
            Body::FinalSignature {
                attempt,
                signatures,
            } => {
                let mut signatures = signatures.clone();
                let which = st.rng.random_range(0..signatures.len().max(1));
                if let Some(sig) = signatures.get_mut(which) {
                    sig.0[st.rng.random_range(0..64)] ^= 1;
                }
                Body::FinalSignature {
                    attempt: *attempt,
                    signatures,
                }
            }
            _ => return None,
        })
    }

    /// A stale envelope: another signer's earlier one, one of ours, or `current` (ours) for
    /// another attempt.
    fn stale_envelope(
        &mut self,
        st: &mut Strategy,
        current: Option<&SignedEnvelope>,
    ) -> Option<SignedEnvelope> {
        match st.rng.random_range(0..3u32) {
            0 if !st.stale.is_empty() => {
                let i = st.rng.random_range(0..st.stale.len());
                Some(st.stale[i].clone())
            }
            1 if !st.history.is_empty() => {
                let i = st.rng.random_range(0..st.history.len());
                Some(st.history[i].clone())
            }
            _ => {
                let e = current?.envelope();
                let attempt = Attempt::new(st.rng.random_range(2..=3)).ok()?;
                let body = with_attempt(e.body(), attempt)?;
                let seq = self.session.as_mut()?.take_seq();
                Some(Envelope::sign(
                    e.session_id(),
                    e.signer(),
                    seq,
                    self.clock.now_ms(),
                    body,
                    &self.keypair,
                ))
            }
        }
    }
}

/// `env`'s session, signer, sequence number and body, dated `timestamp_ms` and signed by
/// `keypair`: re-dated by its author, or signed with a key that is not the signer's.
fn resigned(
    env: &musig2_proto::SignedEnvelope,
    timestamp_ms: u64,
    keypair: &secp256k1::Keypair,
) -> musig2_proto::SignedEnvelope {
    let e = env.envelope();
    Envelope::sign(
        e.session_id(),
        e.signer(),
        e.seq(),
        timestamp_ms,
        e.body().clone(),
        keypair,
    )
}
