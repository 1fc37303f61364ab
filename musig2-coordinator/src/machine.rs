//! The sans-IO session state machine.
//!
//! A [`SessionMachine`] is one signer's view of one session. It never touches the network, a
//! clock or a random source of its own: every call takes the current time (milliseconds since
//! the UNIX epoch) and, where nonces are made, an RNG; every call returns [`Output`]s (envelopes
//! to send to peers, events to emit). The next deadline is [`SessionMachine::next_deadline`];
//! call [`SessionMachine::tick`] when it passes.
//!
//! Contributions are kept in one slot per signer and kind, whatever the current phase, so a
//! message that arrives early (before the phase it belongs to) waits in its slot and is used when
//! the phase comes. The same value twice is a no-op; a different value from the same signer is
//! equivocation and aborts the session, blaming that signer.

use std::collections::{BTreeMap, VecDeque};

use musig2_core::{
    AggNonce, KeyAggContext, NonceGen, PartialSignature, PubNonce, SecNonce, SessionContext,
};
use musig2_proto::{
    AbortReason, Attempt, Body, Envelope, NonceCommitment, PartialSigBytes, PeerIdBytes,
    PubNonceBytes, SeqNo, SessionId, SignedEnvelope, SignerIndex, Topology, VerifiedAnnouncement,
    VerifiedEnvelope,
};
use musig2_transport::PeerId;
use secp256k1::{Keypair, schnorr};

use crate::config::Config;
use crate::election::election_order;
use crate::error::{CoordinatorError, Result};
use crate::event::{AbortOrigin, Event};
use crate::replay::ReplayWindow;
use crate::store::{Outcome, Record, SEQ_RESERVATION_BLOCK, StoredSession};

/// Answers a signer gets about a session that has finished here (it may have missed the end,
/// e.g. while it was restarting); bounded, as each costs a frame.
const MAX_FINISHED_ANSWERS: u8 = 3;

/// Where a session stands, from this signer's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Known (announcement verified) but not joined by this node.
    Created,
    /// Joined; waiting to learn the peers of signers whose peer ids were not announced.
    Joined,
    /// Round 0: exchanging nonce commitments.
    NonceCommit,
    /// Round 1: exchanging public nonces.
    Nonce,
    /// Round 2: exchanging partial signatures.
    PartialSig,
    /// Finished with a verified final signature.
    Done,
    /// Finished without a signature.
    Aborted,
}

impl Phase {
    /// Whether the session has finished.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::Aborted)
    }
}

/// What the machine asks its runtime to do.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send these envelopes to `to`, in one frame if possible.
    Send {
        /// Destination peer.
        to: PeerId,
        /// Signed envelopes (the runtime batches several into one frame).
        envelopes: Vec<SignedEnvelope>,
    },
    /// Emit an event.
    Event(Event),
    /// Make these records durable before sending any envelope of the same step (see
    /// [`crate::store`]). If that fails, send nothing and call
    /// [`SessionMachine::store_failed`].
    Persist(Vec<Record>),
    /// Records no envelope of the step depends on (what others sent us, how the session
    /// ended): store them too, but the step's envelopes need not wait for them. Lost in a
    /// crash, they cost nothing a restart cannot ask for again.
    PersistLater(Vec<Record>),
}

/// A snapshot of a session's progress, for monitoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHealth {
    /// The session.
    pub session: SessionId,
    /// Current phase.
    pub phase: Phase,
    /// Our signer index.
    pub signer: SignerIndex,
    /// Number of signers.
    pub signers: usize,
    /// Milliseconds since this node learned of the session.
    pub age_ms: u64,
    /// Signers we are waiting for in the current phase.
    pub holdouts: Vec<SignerIndex>,
    /// Joins received (ours included).
    pub joined: usize,
    /// Nonce commitments received.
    pub commitments: usize,
    /// Public nonces received.
    pub nonces: usize,
    /// Partial signatures received.
    pub partial_signatures: usize,
    /// The elected coordinator (aggregator in star topology).
    pub coordinator: SignerIndex,
    /// The signing attempt.
    pub attempt: Attempt,
    /// Messages rejected so far (invalid, unauthenticated, replayed, ...).
    pub rejected_messages: u64,
}

/// Outcome of placing a contribution in its slot.
enum Slot {
    New,
    Same,
    Conflict,
}

fn place<T: PartialEq, E>(slot: &mut Option<(T, E)>, value: T, extra: E) -> Slot {
    match slot {
        None => {
            *slot = Some((value, extra));
            Slot::New
        }
        Some((old, _)) if *old == value => Slot::Same,
        Some(_) => Slot::Conflict,
    }
}

/// One signer's state machine for one session.
pub struct SessionMachine {
    ann: VerifiedAnnouncement,
    id: SessionId,
    me: SignerIndex,
    keypair: Keypair,
    key_agg: KeyAggContext,
    n: usize,
    topology: Topology,
    commit_round: bool,
    coordinator: SignerIndex,
    nonce_timeout_ms: u64,
    partial_sig_timeout_ms: u64,
    max_skew_ms: u64,
    max_buffered_per_peer: usize,

    phase: Phase,
    attempt: Attempt,
    next_seq: SeqNo,
    started_ms: u64,
    phase_deadline_ms: Option<u64>,
    session_deadline_ms: u64,

    peers: Vec<Option<PeerId>>,
    /// Whether signer `i`'s peer id came from the announcement (so everyone knows it).
    listed: Vec<bool>,
    joins: Vec<Option<(PeerId, SignedEnvelope)>>,
    /// Signers we have sent our own join to.
    join_sent: Vec<bool>,
    commits: Vec<Option<(NonceCommitment, SignedEnvelope)>>,
    nonces: Vec<Option<(PubNonceBytes, SignedEnvelope)>>,
    /// Verified nonce envelopes, kept by the star coordinator to build the aggregate message.
    verified_nonces: Vec<Option<VerifiedEnvelope>>,
    psigs: Vec<Option<(PartialSigBytes, SignedEnvelope)>>,
    aggnonce_received: bool,
    nonces_announced: bool,
    psigs_announced: bool,

    secnonce: Option<SecNonce>,
    my_nonce: Option<PubNonceBytes>,
    context: Option<SessionContext>,
    signature: Option<schnorr::Signature>,
    /// Why the session aborted, whom it blamed and who decided, once it has.
    aborted: Option<(AbortReason, Vec<SignerIndex>, AbortOrigin)>,

    replay: Vec<ReplayWindow>,
    /// Per signer, the envelopes verified (or, for us, sent) in the replay window: sequence
    /// number → (signing hash, signature). The same number under another hash is equivocation;
    /// under the same signature it is an exact replay, dropped before any verification.
    seen: Vec<BTreeMap<u64, SeenEnvelope>>,
    /// The star coordinator's verified AggregateNonce envelope (members), to drop replays cheaply.
    aggnonce_env: Option<SignedEnvelope>,
    /// The AggregateNonce envelope we sent (star coordinator), to send again when asked.
    aggnonce_sent: Option<SignedEnvelope>,
    /// The announcement lists, at our index, a peer id that is not ours.
    misrouted: bool,
    replay_window: u64,
    unbound: VecDeque<(PeerId, SignedEnvelope)>,
    rejected: u64,

    /// Whether this node keeps the session across restarts (from its join on).
    persist: bool,
    /// Records produced by the current step, handed out as one [`Output::Persist`].
    records: Vec<Record>,
    /// Sequence numbers below this are reserved in the store.
    reserved_seq: u64,
    /// Attempts the announcement allows in all.
    max_attempts: u16,
    /// The envelope that ends the session for a signer who missed the end: the final
    /// signature, or the signed abort (ours, or the claim we accepted).
    final_env: Option<SignedEnvelope>,
    /// Per signer, answers sent about the finished session.
    answered: Vec<u8>,
    /// Verified contributions of the next attempt that arrived before its restart.
    next_attempt: Vec<VerifiedEnvelope>,
}

#[derive(Debug, Clone, Copy)]
struct SeenEnvelope {
    hash: [u8; 32],
    signature: [u8; 64],
}

impl std::fmt::Debug for SessionMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionMachine")
            .field("session", &self.id)
            .field("me", &self.me)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl SessionMachine {
    /// A machine for a verified announcement that names `keypair`'s key, for a node speaking
    /// from `local_peer`.
    pub fn new(
        ann: VerifiedAnnouncement,
        keypair: Keypair,
        local_peer: PeerId,
        config: &Config,
        now_ms: u64,
    ) -> Result<SessionMachine> {
        Self::with_key_agg(ann, keypair, local_peer, config, now_ms, None)
    }

    /// Like [`SessionMachine::new`], reusing the untweaked key-aggregation context of the same
    /// signer list when the caller has one (key aggregation costs one scalar multiplication per
    /// signer; repeated sessions among the same signers are the common case). A context for a
    /// different key list is ignored.
    pub fn with_key_agg(
        ann: VerifiedAnnouncement,
        keypair: Keypair,
        local_peer: PeerId,
        config: &Config,
        now_ms: u64,
        untweaked: Option<&KeyAggContext>,
    ) -> Result<SessionMachine> {
        let id = ann.session_id();
        let me = ann
            .index_of(&keypair.public_key())
            .ok_or(CoordinatorError::NotASigner(id))?;
        let a = ann.announcement();
        let keys = ann.signer_keys();
        let tweaks = a
            .tweaks
            .iter()
            .map(|t| musig2_core::Tweak::new(t.value(), t.is_x_only()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let base = match untweaked {
            Some(ctx)
                if ctx.pubkeys() == keys.as_slice()
                    && ctx.aggregate_key() == ctx.untweaked_key() =>
            {
                ctx.clone()
            }
            _ => KeyAggContext::new(&keys)?,
        };
        let key_agg = base.with_tweaks(&tweaks)?;
        let n = keys.len();
        let mut peers: Vec<Option<PeerId>> = a
            .signers
            .iter()
            .map(|s| {
                s.peer_id
                    .as_ref()
                    .and_then(|p| PeerId::from_bytes(p.as_bytes()).ok())
            })
            .collect();
        let listed = peers.iter().map(Option::is_some).collect();
        // The creator may list a peer id for us that is not ours; we never silently correct it
        // (see `is_misrouted`), but we always speak from our own.
        let misrouted = peers[me.as_usize()].is_some_and(|p| p != local_peer);
        peers[me.as_usize()] = Some(local_peer);
        let order = election_order(a.policy.election, &id, &keys);
        let coordinator = order.first().copied().unwrap_or(me);
        let session_deadline_ms = a.expires_at_ms.min(
            a.created_at_ms
                .saturating_add(a.policy.timeouts.join_ms)
                .saturating_add(a.policy.timeouts.session_ms),
        );
        Ok(SessionMachine {
            id,
            me,
            keypair,
            key_agg,
            n,
            topology: a.policy.topology,
            commit_round: a.policy.nonce_commitment,
            coordinator,
            nonce_timeout_ms: a.policy.timeouts.nonce_ms,
            partial_sig_timeout_ms: a.policy.timeouts.partial_sig_ms,
            max_skew_ms: u64::try_from(config.max_clock_skew.as_millis()).unwrap_or(u64::MAX),
            max_buffered_per_peer: config.max_buffered_messages_per_peer,
            phase: Phase::Created,
            attempt: Attempt::FIRST,
            next_seq: SeqNo::FIRST,
            started_ms: now_ms,
            phase_deadline_ms: None,
            session_deadline_ms,
            peers,
            listed,
            joins: vec![None; n],
            join_sent: vec![false; n],
            commits: vec![None; n],
            nonces: vec![None; n],
            verified_nonces: vec![None; n],
            psigs: vec![None; n],
            aggnonce_received: false,
            nonces_announced: false,
            psigs_announced: false,
            secnonce: None,
            my_nonce: None,
            context: None,
            signature: None,
            aborted: None,
            replay: vec![ReplayWindow::new(config.replay_window, config.max_seq_gap); n],
            seen: vec![BTreeMap::new(); n],
            aggnonce_env: None,
            aggnonce_sent: None,
            misrouted,
            replay_window: config.replay_window.clamp(1, 128),
            unbound: VecDeque::new(),
            rejected: 0,
            persist: false,
            records: Vec::new(),
            reserved_seq: SeqNo::FIRST.get(),
            max_attempts: a.policy.max_attempts.max(1),
            final_env: None,
            answered: vec![0; n],
            next_attempt: Vec::new(),
            ann,
        })
    }

    /// The session id.
    pub fn session_id(&self) -> SessionId {
        self.id
    }

    /// The verified announcement.
    pub fn announcement(&self) -> &VerifiedAnnouncement {
        &self.ann
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Our signer index.
    pub fn signer_index(&self) -> SignerIndex {
        self.me
    }

    /// The elected coordinator.
    pub fn coordinator(&self) -> SignerIndex {
        self.coordinator
    }

    /// The key-aggregation context (aggregate key after tweaks).
    pub fn key_agg(&self) -> &KeyAggContext {
        &self.key_agg
    }

    /// The final signature, once the session is done.
    pub fn signature(&self) -> Option<schnorr::Signature> {
        self.signature
    }

    /// Why the session aborted, the signers blamed and who decided (our finding or another
    /// signer's claim), once it has aborted.
    pub fn abort_outcome(&self) -> Option<(AbortReason, &[SignerIndex], AbortOrigin)> {
        self.aborted
            .as_ref()
            .map(|(reason, blamed, origin)| (*reason, blamed.as_slice(), *origin))
    }

    /// Whether the announcement lists, at our index, a peer id other than the one this node
    /// speaks from. Such a session must be refused ([`SessionMachine::refuse`]), never joined:
    /// the other signers would route our traffic to whoever the creator named.
    pub fn is_misrouted(&self) -> bool {
        self.misrouted
    }

    /// Refuses a misrouted session: aborts it with [`AbortReason::Misrouted`] blaming the
    /// creator, and sends that signed abort to the other listed signers so they learn why we will
    /// not take part (our claim, which they report as such) instead of timing out on us.
    pub fn refuse(&mut self, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        if self.phase.is_terminal() {
            return out;
        }
        let creator = self.ann.announcement().creator;
        let env = self.sign(
            now_ms,
            Body::Abort {
                reason: AbortReason::Misrouted,
                blamed: Some(creator),
            },
        );
        // The announced peer at our index is not ours: never send there.
        let others: Vec<SignerIndex> = self
            .others()
            .filter(|&k| self.peer_of(k) != self.listed_peer(self.me))
            .collect();
        self.send_to(&mut out, others, vec![env]);
        self.phase = Phase::Aborted;
        self.phase_deadline_ms = None;
        self.secnonce = None;
        self.aborted = Some((AbortReason::Misrouted, vec![creator], AbortOrigin::Local));
        out.push(Output::Event(Event::Aborted {
            session: self.id,
            reason: AbortReason::Misrouted,
            blamed: vec![creator],
            origin: AbortOrigin::Local,
        }));
        out
    }

    /// The peer id the announcement lists for signer `index`, if it lists one.
    pub fn listed_peer(&self, index: SignerIndex) -> Option<PeerId> {
        self.ann
            .announcement()
            .signers
            .get(index.as_usize())
            .and_then(|s| s.peer_id.as_ref())
            .and_then(|p| PeerId::from_bytes(p.as_bytes()).ok())
    }

    /// Whether a frame whose header was peeked is an exact copy of an envelope this machine has
    /// already verified (or sent): same signer, sequence number and signature. Such a frame can
    /// be dropped without decoding or verifying it; a different envelope under the same number
    /// is not covered and must go through [`SessionMachine::handle_envelope`] (it may be
    /// evidence of equivocation).
    pub fn is_exact_replay(&self, header: &musig2_proto::EnvelopeHeader) -> bool {
        self.seen
            .get(header.signer.as_usize())
            .and_then(|m| m.get(&header.seq.get()))
            .is_some_and(|s| s.signature == header.signature)
    }

    /// The peer bound to signer `index`, if known.
    pub fn peer_of(&self, index: SignerIndex) -> Option<PeerId> {
        self.peers.get(index.as_usize()).copied().flatten()
    }

    /// The signer bound to `peer`, if any.
    pub fn signer_of(&self, peer: &PeerId) -> Option<SignerIndex> {
        self.peers
            .iter()
            .position(|p| p.as_ref() == Some(peer))
            .and_then(|i| SignerIndex::try_from(i).ok())
    }

    /// When [`SessionMachine::tick`] must next be called.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.phase.is_terminal() {
            return None;
        }
        Some(match self.phase_deadline_ms {
            Some(d) => d.min(self.session_deadline_ms),
            None => self.session_deadline_ms,
        })
    }

    /// Signers we are waiting for in the current phase.
    pub fn holdouts(&self) -> Vec<SignerIndex> {
        let star_member = self.topology == Topology::Star && self.me != self.coordinator;
        let missing = |present: &dyn Fn(usize) -> bool| -> Vec<SignerIndex> {
            (0..self.n)
                .filter(|&i| !present(i))
                .filter_map(|i| SignerIndex::try_from(i).ok())
                .collect()
        };
        match self.phase {
            Phase::Created | Phase::Done | Phase::Aborted => Vec::new(),
            // Round 1 needs a route to the signers we send to: a listed peer id or a join.
            Phase::Joined if star_member => {
                missing(&|i| i != self.coordinator.as_usize() || self.peers[i].is_some())
            }
            Phase::Joined => missing(&|i| self.peers[i].is_some()),
            // A star member gets the others' commitments only from the coordinator, relayed
            // together once all are in: if they do not come, the coordinator is who it waits for.
            Phase::NonceCommit if star_member => {
                if missing(&|i| self.commits[i].is_some()).is_empty() {
                    Vec::new()
                } else {
                    vec![self.coordinator]
                }
            }
            Phase::NonceCommit => missing(&|i| self.commits[i].is_some()),
            Phase::Nonce if star_member => {
                if self.aggnonce_received {
                    Vec::new()
                } else {
                    vec![self.coordinator]
                }
            }
            Phase::Nonce => missing(&|i| self.nonces[i].is_some()),
            Phase::PartialSig if star_member => vec![self.coordinator],
            Phase::PartialSig => missing(&|i| self.psigs[i].is_some()),
        }
    }

    /// A snapshot of progress.
    pub fn health(&self, now_ms: u64) -> SessionHealth {
        SessionHealth {
            session: self.id,
            phase: self.phase,
            signer: self.me,
            signers: self.n,
            age_ms: now_ms.saturating_sub(self.started_ms),
            holdouts: self.holdouts(),
            joined: filled(&self.joins),
            commitments: filled(&self.commits),
            nonces: filled(&self.nonces),
            partial_signatures: filled(&self.psigs),
            coordinator: self.coordinator,
            attempt: self.attempt,
            rejected_messages: self.rejected,
        }
    }

    // ------------------------------------------------------------------------------------------
    // Commands

    /// Joins the session: binds our signer index to our peer id and tells the peers that need
    /// it. Idempotent.
    pub fn join<R: rand::CryptoRng + ?Sized>(&mut self, now_ms: u64, rng: &mut R) -> Vec<Output> {
        let mut out = Vec::new();
        if self.phase != Phase::Created || self.misrouted {
            return out;
        }
        let Some(local_peer) = self.peers[self.me.as_usize()] else {
            return out;
        };
        // A libp2p peer id is at most 42 bytes, within the wire limit of 64.
        let Ok(peer_id) = PeerIdBytes::new(local_peer.to_bytes()) else {
            return out;
        };
        self.start_persisting();
        let join = self.sign(now_ms, Body::Join { peer_id });
        self.joins[self.me.as_usize()] = Some((local_peer, join.clone()));
        self.enter(Phase::Joined, now_ms, self.nonce_timeout_ms);
        // Everyone has the same join window: it ends `join_ms` after the session's creation.
        let a = self.ann.announcement();
        self.phase_deadline_ms = Some(a.created_at_ms.saturating_add(a.policy.timeouts.join_ms));
        out.push(Output::Event(Event::SessionJoined {
            session: self.id,
            signer: self.me,
        }));
        let creator = self.ann.announcement().creator;
        let targets: Vec<SignerIndex> = self
            .all_signers()
            .filter(|&j| self.needs_join_of(j, self.me) || j == creator)
            .filter(|&j| self.peer_of(j).is_some())
            .collect();
        for &j in &targets {
            self.join_sent[j.as_usize()] = true;
        }
        self.send_to(&mut out, targets, vec![join]);
        // The creator hands the newcomer the joins it could not know about.
        if self.me == creator {
            self.relay_unlisted_joins_to(&mut out, self.me);
        }
        self.advance(now_ms, rng, &mut out);
        self.flush_records(&mut out);
        out
    }

    /// Aborts the session locally (e.g. the application cancelled), telling the other signers.
    pub fn cancel(&mut self, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.abort(now_ms, AbortReason::Cancelled, Vec::new(), &mut out);
        self.flush_records(&mut out);
        out
    }

    /// Checks deadlines: aborts with the holdouts when the phase or the session has timed out.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        if self.phase.is_terminal() {
            return out;
        }
        if now_ms >= self.session_deadline_ms {
            let holdouts = self.holdouts();
            self.abort(now_ms, AbortReason::Expired, holdouts, &mut out);
        } else if self.phase_deadline_ms.is_some_and(|d| now_ms >= d) {
            let holdouts = self.holdouts();
            self.abort(now_ms, AbortReason::Timeout, holdouts, &mut out);
        }
        self.flush_records(&mut out);
        out
    }

    /// A machine for a session this node stored before it stopped (see [`crate::store`]),
    /// and what to send now.
    ///
    /// A finished session stays finished. Otherwise what the store holds decides (the store
    /// never holds a secret nonce, so one we had is gone):
    /// * our partial signature of the current attempt: re-send exactly that one, never sign
    ///   again in that attempt;
    /// * anything else after our join: a public nonce of ours may have left (a restored older
    ///   copy of the store looks the same as a store that saw nothing sent), so we start a new
    ///   attempt with a signed `Restart`, which the others follow without blaming anyone;
    ///   past the announcement's `max_attempts` the session aborts with reason `Restarted`
    ///   naming us (if no attempt is left and nothing of a round is stored, we continue).
    ///
    /// Sequence numbers continue one reservation block past the stored reservation, so a
    /// restored copy up to a block behind never reuses a number.
    pub fn restore<R: rand::CryptoRng + ?Sized>(
        stored: &StoredSession,
        keypair: Keypair,
        local_peer: PeerId,
        config: &Config,
        now_ms: u64,
        untweaked: Option<&KeyAggContext>,
        rng: &mut R,
    ) -> Result<(SessionMachine, Vec<Output>)> {
        let id = stored.session_id();
        let unrestorable = |why: String| CoordinatorError::Unrestorable { session: id, why };
        let created = stored.announcement.announcement().created_at_ms;
        let ann = stored
            .announcement
            .verify(created, &config.limits)
            .map_err(|e| unrestorable(format!("announcement: {e}")))?;
        let mut m = Self::with_key_agg(
            ann,
            keypair,
            local_peer,
            config,
            stored.learned_ms,
            untweaked,
        )?;
        let mut out = Vec::new();
        if let Some((outcome, _)) = &stored.outcome {
            m.persist = true;
            m.phase_deadline_ms = None;
            match outcome {
                Outcome::Signed(sig) => {
                    m.phase = Phase::Done;
                    m.signature = Some(*sig);
                }
                Outcome::Aborted {
                    reason,
                    blamed,
                    origin,
                } => {
                    m.phase = Phase::Aborted;
                    m.aborted = Some((*reason, blamed.clone(), *origin));
                }
            }
            m.final_env = stored
                .envelopes
                .iter()
                .rev()
                .find(|e| {
                    matches!(
                        e.envelope().body(),
                        Body::Abort { .. } | Body::FinalSignature { .. }
                    )
                })
                .cloned();
            m.next_seq = SeqNo::new(stored.next_seq.get().saturating_add(SEQ_RESERVATION_BLOCK))
                .map_err(|e| unrestorable(e.to_string()))?;
            m.reserve_seq(m.next_seq.get());
            // What we sent last before the crash may not have left: the others may still be
            // waiting for it. Tell them how it ended while the session lasts.
            if now_ms < m.session_deadline_ms {
                m.tell_the_end(now_ms, &mut out);
            }
            m.flush_records(&mut out);
            return Ok((m, out));
        }
        m.attempt = stored.attempt;
        let mut own_aggnonce = None;
        let mut scratch = Vec::new();
        for env in &stored.envelopes {
            let verified = env
                .verify(&m.ann)
                .map_err(|e| unrestorable(format!("stored envelope: {e}")))?;
            let signer = verified.signer();
            m.replay[signer.as_usize()].record(verified.seq());
            m.remember(
                signer,
                verified.seq(),
                verified.signing_hash(),
                *env.signature(),
            );
            if signer == m.me {
                if matches!(verified.body(), Body::AggregateNonce { attempt, .. } if *attempt == m.attempt)
                {
                    own_aggnonce = Some(env.clone());
                }
                m.restore_own(verified);
            } else if let Err(e) = m.apply(verified, stored.learned_ms, &mut scratch) {
                // Contributions of attempts we left are stored for the transcript, not used.
                tracing::trace!(session = %id, error = %e, "stored envelope not applied");
            }
        }
        m.persist = true;
        let seq_floor = stored
            .next_seq
            .get()
            .max(m.next_seq.get())
            .saturating_add(SEQ_RESERVATION_BLOCK);
        m.next_seq = SeqNo::new(seq_floor).map_err(|e| unrestorable(e.to_string()))?;
        m.reserve_seq(seq_floor);
        if m.phase.is_terminal() {
            // The stored contributions imply the end (it was decided but not yet stored).
            let outcome = match (m.signature, &m.aborted) {
                (Some(sig), _) => Some(Outcome::Signed(sig)),
                (None, Some((reason, blamed, origin))) => Some(Outcome::Aborted {
                    reason: *reason,
                    blamed: blamed.clone(),
                    origin: *origin,
                }),
                _ => None,
            };
            if let Some(outcome) = outcome {
                m.record(Record::Outcome {
                    session: id,
                    outcome,
                    at_ms: now_ms,
                });
            }
            m.flush_records(&mut out);
            return Ok((m, out));
        }
        let Some((_, own_join)) = m.joins[m.me.as_usize()].clone() else {
            // Not joined: nothing of ours left the node.
            m.phase = Phase::Created;
            m.flush_records(&mut out);
            return Ok((m, out));
        };
        m.phase = Phase::Joined;
        let a = m.ann.announcement();
        m.phase_deadline_ms = Some(
            a.created_at_ms
                .saturating_add(a.policy.timeouts.join_ms)
                .max(now_ms.saturating_add(m.nonce_timeout_ms)),
        );
        let me = m.me.as_usize();
        out.push(Output::Event(Event::SessionResumed { session: id }));
        if let Some((_, own_psig)) = m.psigs[me].clone() {
            m.resume_signed(own_psig, own_aggnonce, now_ms, &mut out);
        } else {
            let next = m.attempt.get().saturating_add(1);
            let round_stored = m.commits[me].is_some() || m.nonces[me].is_some();
            if next < m.max_attempts {
                let attempt = Attempt::new(next).map_err(|e| unrestorable(e.to_string()))?;
                let restart = m.sign(now_ms, Body::Restart { attempt });
                m.new_attempt(attempt, now_ms);
                out.push(Output::Event(Event::AttemptStarted {
                    session: id,
                    attempt,
                    signer: m.me,
                }));
                let others: Vec<SignerIndex> = m.others().collect();
                m.send_to(&mut out, others, vec![own_join, restart]);
            } else if round_stored {
                m.abort(now_ms, AbortReason::Restarted, vec![m.me], &mut out);
            } else {
                let others: Vec<SignerIndex> = m.others().collect();
                m.send_to(&mut out, others, vec![own_join]);
            }
            m.advance(now_ms, rng, &mut out);
        }
        m.flush_records(&mut out);
        Ok((m, out))
    }

    /// Sends every other signer the envelope that ends the session (see
    /// [`SessionMachine::answer_finished`]).
    fn tell_the_end(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        if let Some(env) = self.final_word(now_ms) {
            let others: Vec<SignerIndex> = self.others().collect();
            self.send_to(out, others, vec![env]);
        }
    }

    /// The signed final signature (made once, on demand, in mesh) or the signed abort.
    fn final_word(&mut self, now_ms: u64) -> Option<SignedEnvelope> {
        match (&self.final_env, self.signature) {
            (Some(env), _) => Some(env.clone()),
            (None, Some(sig)) => {
                let env = self.sign(
                    now_ms,
                    Body::FinalSignature {
                        attempt: self.attempt,
                        signature: sig.to_byte_array(),
                    },
                );
                self.final_env = Some(env.clone());
                Some(env)
            }
            (None, None) => None,
        }
    }

    /// Puts one of our own stored envelopes back in its slot.
    fn restore_own(&mut self, env: VerifiedEnvelope) {
        let me = self.me.as_usize();
        let signed = env.signed().clone();
        match env.body().clone() {
            Body::Join { .. } => {
                if let Some(peer) = self.peers[me] {
                    self.joins[me] = Some((peer, signed));
                }
            }
            Body::NonceCommit {
                attempt,
                commitment,
            } if attempt == self.attempt => self.commits[me] = Some((commitment, signed)),
            Body::Nonce { attempt, pub_nonce } if attempt == self.attempt => {
                self.my_nonce = Some(pub_nonce);
                self.nonces[me] = Some((pub_nonce, signed));
                if self.is_star_coordinator() {
                    self.verified_nonces[me] = Some(env);
                }
            }
            Body::PartialSig {
                attempt,
                partial_sig,
            } if attempt == self.attempt => self.psigs[me] = Some((partial_sig, signed)),
            _ => {}
        }
    }

    /// After a restart with our partial signature stored: the session context is rebuilt
    /// from the stored nonces and exactly the stored signature is sent again.
    fn resume_signed(
        &mut self,
        own_psig: SignedEnvelope,
        own_aggnonce: Option<SignedEnvelope>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let pubnonces: Option<Vec<PubNonce>> = self
            .nonces
            .iter()
            .map(|s| s.as_ref().map(|(b, _)| pubnonce_of(b)))
            .collect();
        let Some(pubnonces) = pubnonces else {
            // We signed, so every nonce was here; a store that lost them cannot aggregate.
            self.abort(now_ms, AbortReason::Internal, Vec::new(), out);
            return;
        };
        self.context = Some(SessionContext::new(
            &self.key_agg,
            &AggNonce::aggregate(&pubnonces),
            &self.ann.announcement().message,
        ));
        self.nonces_announced = true;
        self.aggnonce_received = true;
        // Our join first: it asks the others for what we may have lost.
        if let Some((_, own_join)) = self.joins[self.me.as_usize()].clone() {
            let others: Vec<SignerIndex> = self.others().collect();
            self.send_to(out, others, vec![own_join]);
        }
        if self.is_star_coordinator() {
            if let Some(aggnonce) = own_aggnonce {
                let others: Vec<SignerIndex> = self.others().collect();
                self.send_to(out, others, vec![aggnonce.clone()]);
                self.aggnonce_sent = Some(aggnonce);
            }
        }
        self.send_partial_sig(own_psig, out);
        self.enter(Phase::PartialSig, now_ms, self.partial_sig_timeout_ms);
    }

    /// The store could not keep what a step produced: nothing of it was sent. The session ends
    /// here without a word to the others (their deadlines end it for them), and it is not
    /// stored any more.
    pub fn store_failed(&mut self, now_ms: u64) -> Vec<Output> {
        self.records.clear();
        self.persist = false;
        let mut out = Vec::new();
        if self.phase.is_terminal() {
            return out;
        }
        tracing::error!(session = %self.id, "the session store failed: aborting without sending");
        self.phase = Phase::Aborted;
        self.phase_deadline_ms = None;
        self.secnonce = None;
        self.aborted = Some((AbortReason::Internal, Vec::new(), AbortOrigin::Local));
        let _ = now_ms;
        out.push(Output::Event(Event::Aborted {
            session: self.id,
            reason: AbortReason::Internal,
            blamed: Vec::new(),
            origin: AbortOrigin::Local,
        }));
        out
    }

    /// Whether `header` is that of the join we hold from its signer: a signer sends its own join
    /// again only after a restart (to ask what it may have lost).
    pub fn is_join_replay(&self, header: &musig2_proto::EnvelopeHeader) -> bool {
        self.joins
            .get(header.signer.as_usize())
            .and_then(Option::as_ref)
            .is_some_and(|(_, env)| {
                env.envelope().seq() == header.seq && env.signature() == &header.signature
            })
    }

    /// Whether `envelope` is exactly the join we hold from its signer.
    pub fn is_join_copy(&self, envelope: &SignedEnvelope) -> bool {
        matches!(envelope.envelope().body(), Body::Join { .. })
            && self
                .joins
                .get(envelope.envelope().signer().as_usize())
                .and_then(Option::as_ref)
                .is_some_and(|(_, env)| env == envelope)
    }

    /// A bound signer sent us its own join again: it restarted and may have lost what we sent
    /// it. Sends it, a bounded number of times, our contributions of the current attempt (or
    /// how the session ended), exactly as first sent.
    pub fn answer_repeat(&mut self, from: PeerId, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.repeat_for(from, now_ms, &mut out);
        self.flush_records(&mut out);
        out
    }

    fn repeat_for(&mut self, from: PeerId, now_ms: u64, out: &mut Vec<Output>) {
        if self.phase.is_terminal() {
            out.extend(self.answer_finished(from, now_ms));
            return;
        }
        let Some(signer) = self.signer_of(&from) else {
            return;
        };
        if signer == self.me || self.phase == Phase::Created {
            return;
        }
        let Some(count) = self.answered.get_mut(signer.as_usize()) else {
            return;
        };
        if *count >= MAX_FINISHED_ANSWERS {
            return;
        }
        *count += 1;
        let me = self.me.as_usize();
        let mut envs: Vec<SignedEnvelope> = Vec::new();
        if self.is_star_coordinator() {
            envs.extend(self.aggnonce_sent.clone());
        } else if self.topology == Topology::Mesh || signer == self.coordinator {
            envs.extend(self.commits[me].as_ref().map(|(_, e)| e.clone()));
            envs.extend(self.nonces[me].as_ref().map(|(_, e)| e.clone()));
            envs.extend(self.psigs[me].as_ref().map(|(_, e)| e.clone()));
        }
        if !envs.is_empty() {
            out.push(Output::Send {
                to: from,
                envelopes: envs,
            });
        }
    }

    /// A bound signer still talks about a session that has finished here (it missed the end,
    /// e.g. while restarting): tells it how it ended, with a signed final signature or the
    /// signed abort, a bounded number of times.
    pub fn answer_finished(&mut self, from: PeerId, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        if !self.phase.is_terminal() {
            return out;
        }
        let Some(signer) = self.signer_of(&from) else {
            return out;
        };
        if signer == self.me {
            return out;
        }
        let Some(count) = self.answered.get_mut(signer.as_usize()) else {
            return out;
        };
        if *count >= MAX_FINISHED_ANSWERS {
            return out;
        }
        *count += 1;
        let Some(env) = self.final_word(now_ms) else {
            return out;
        };
        out.push(Output::Send {
            to: from,
            envelopes: vec![env],
        });
        self.flush_records(&mut out);
        out
    }

    // ------------------------------------------------------------------------------------------
    // Inbound

    /// Handles one envelope delivered by `from`.
    ///
    /// Returns the outputs it causes, or the reason it was rejected (see
    /// [`CoordinatorError::peer_action`] for what to do with the peer).
    pub fn handle_envelope<R: rand::CryptoRng + ?Sized>(
        &mut self,
        from: PeerId,
        envelope: SignedEnvelope,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Output>> {
        let mut out = Vec::new();
        let restarted_author = self.is_join_copy(&envelope)
            && self.signer_of(&from) == Some(envelope.envelope().signer());
        let result = self.accept(from, envelope, now_ms, &mut out);
        if result.is_ok() {
            self.advance(now_ms, rng, &mut out);
        }
        if restarted_author {
            self.repeat_for(from, now_ms, &mut out);
        }
        self.flush_records(&mut out);
        match result {
            Ok(()) => Ok(out),
            Err(e) => {
                if e.peer_action() == crate::PeerAction::Penalize {
                    self.rejected += 1;
                }
                // An abort decided while handling (e.g. equivocation) still has to go out.
                if out.is_empty() { Err(e) } else { Ok(out) }
            }
        }
    }

    fn accept(
        &mut self,
        from: PeerId,
        envelope: SignedEnvelope,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Result<()> {
        if self.phase.is_terminal() {
            return Err(CoordinatorError::SessionFinished(self.id));
        }
        // Cheap checks first: an exact copy of what we hold costs no verification.
        let (claimed, claimed_seq) = (envelope.envelope().signer(), envelope.envelope().seq());
        let exact_copy = self
            .seen
            .get(claimed.as_usize())
            .and_then(|m| m.get(&claimed_seq.get()))
            .is_some_and(|s| &s.signature == envelope.signature());
        if exact_copy || self.is_stored(&envelope) {
            return Err(CoordinatorError::Duplicate {
                signer: claimed,
                seq: claimed_seq,
            });
        }
        let verified = envelope
            .verify(&self.ann)
            .map_err(|source| CoordinatorError::InvalidMessage { peer: from, source })?;
        let signer = verified.signer();
        if signer == self.me {
            // How the session ended, told back to us after a restart that lost it (a final
            // signature verifies on its own; an abort is our own word).
            if matches!(
                verified.body(),
                Body::FinalSignature { .. } | Body::Abort { .. }
            ) {
                return self.apply(verified, now_ms, out);
            }
            // Our own envelope relayed back to us (not byte-equal: a forgery would not verify).
            return Err(CoordinatorError::Duplicate {
                signer,
                seq: verified.seq(),
            });
        }
        // A signed abort is its author's claim whoever delivers it (e.g. a signer the creator
        // misrouted, speaking from a peer the announcement does not list).
        let any_deliverer = matches!(verified.body(), Body::Abort { .. } | Body::Restart { .. });
        let direct_join = matches!(verified.body(), Body::Join { peer_id } if peer_id.as_bytes() == from.to_bytes().as_slice());
        if !direct_join && !any_deliverer && self.signer_of(&from).is_none() {
            return self.buffer_unbound(from, envelope);
        }
        // The contradiction check runs on every verified envelope, before the replay and skew
        // filters: its author signed both, so it is evidence whoever relayed it and however late.
        let hash = verified.signing_hash();
        let reused_seq = self.seen[signer.as_usize()]
            .get(&verified.seq().get())
            .is_some_and(|s| s.hash != hash);
        if reused_seq || self.contradicts(&verified) {
            self.abort(now_ms, AbortReason::Equivocation, vec![signer], out);
            return Err(CoordinatorError::Equivocation {
                signer,
                seq: verified.seq(),
            });
        }
        let relayed = self.peer_of(signer) != Some(from) && !direct_join;
        if let Err(e) = self.replay[signer.as_usize()].check(signer, verified.seq()) {
            return Err(match e {
                // Same content, re-signed: only its author can make it, and it cost a
                // verification.
                CoordinatorError::Duplicate { signer, seq } => {
                    CoordinatorError::ResignedDuplicate { signer, seq }
                }
                other => other,
            });
        }
        // Judged by its author's signature: a relayed envelope may be as old as the session, and
        // so may the end of the session told to a signer that missed it.
        let final_word = matches!(
            verified.body(),
            Body::Abort { .. } | Body::FinalSignature { .. }
        );
        if !relayed && !final_word {
            let skew_ms = verified.timestamp_ms().abs_diff(now_ms);
            if skew_ms > self.max_skew_ms {
                return Err(CoordinatorError::ClockSkew { signer, skew_ms });
            }
        }
        self.replay[signer.as_usize()].record(verified.seq());
        self.remember(signer, verified.seq(), hash, *verified.signed().signature());
        let signed = self.persist.then(|| verified.signed().clone());
        self.apply(verified, now_ms, out)?;
        if let Some(signed) = signed {
            self.record(Record::Envelope(signed));
        }
        Ok(())
    }

    /// Records a verified (or our own) envelope under its signer and sequence number, forgetting
    /// those that fell out of the replay window.
    fn remember(&mut self, signer: SignerIndex, seq: SeqNo, hash: [u8; 32], signature: [u8; 64]) {
        let Some(map) = self.seen.get_mut(signer.as_usize()) else {
            return;
        };
        map.insert(seq.get(), SeenEnvelope { hash, signature });
        let highest = map.keys().next_back().copied().unwrap_or(0);
        let floor = highest.saturating_sub(self.replay_window);
        while map.first_key_value().is_some_and(|(&k, _)| k < floor) {
            map.pop_first();
        }
    }

    fn buffer_unbound(&mut self, from: PeerId, envelope: SignedEnvelope) -> Result<()> {
        let from_peer = self.unbound.iter().filter(|(p, _)| *p == from).count();
        let total_cap = self.max_buffered_per_peer.saturating_mul(self.n);
        if from_peer >= self.max_buffered_per_peer || self.unbound.len() >= total_cap {
            return Err(CoordinatorError::UnboundPeer {
                peer: from,
                session: self.id,
            });
        }
        self.unbound.push_back((from, envelope));
        Ok(())
    }

    fn apply(&mut self, env: VerifiedEnvelope, now_ms: u64, out: &mut Vec<Output>) -> Result<()> {
        let signer = env.signer();
        let j = signer.as_usize();
        let check_attempt = |a: Attempt| {
            if a == self.attempt {
                Ok(())
            } else {
                Err(CoordinatorError::WrongAttempt {
                    signer,
                    expected: self.attempt.get(),
                    found: a.get(),
                })
            }
        };
        // A contribution of the next attempt can overtake the restart that starts it (they
        // come from different signers): it waits, bounded, until the restart arrives.
        if body_attempt(env.body()).is_some_and(|a| a.get() == self.attempt.get().saturating_add(1))
        {
            if self.next_attempt.len() >= 4 * self.n {
                return Err(CoordinatorError::WrongAttempt {
                    signer,
                    expected: self.attempt.get(),
                    found: self.attempt.get().saturating_add(1),
                });
            }
            self.next_attempt.push(env);
            return Ok(());
        }
        match env.body().clone() {
            Body::Join { peer_id } => {
                let peer = PeerId::from_bytes(peer_id.as_bytes()).map_err(|_| {
                    CoordinatorError::UnexpectedMessage {
                        signer,
                        kind: "join with an invalid peer id",
                    }
                })?;
                if self.peers[j].is_some_and(|p| p != peer) {
                    // Re-binding an index to another peer is refused (part of recovery later).
                    return Err(CoordinatorError::UnexpectedMessage {
                        signer,
                        kind: "join from a second peer id",
                    });
                }
                if self.joins[j].is_some() {
                    // The stored join itself is dropped before verification; this is a new one.
                    return Err(CoordinatorError::RedundantMessage {
                        signer,
                        kind: "join",
                    });
                }
                self.peers[j] = Some(peer);
                self.joins[j] = Some((peer, env.signed().clone()));
                // A signer whose peer we just learned could not have been sent our join yet.
                if !self.join_sent[j] && self.needs_join_of(signer, self.me) {
                    if let Some((_, own)) = self.joins[self.me.as_usize()].clone() {
                        self.join_sent[j] = true;
                        self.send_to(out, [signer], vec![own]);
                    }
                }
                out.push(Output::Event(Event::ParticipantJoined {
                    session: self.id,
                    signer,
                }));
                if self.me == self.ann.announcement().creator && !self.listed[j] {
                    let targets: Vec<SignerIndex> = self
                        .all_signers()
                        .filter(|&k| k != signer && self.needs_join_of(k, signer))
                        .filter(|&k| self.joins[k.as_usize()].is_some())
                        .collect();
                    self.send_to(out, targets, vec![env.signed().clone()]);
                    self.relay_unlisted_joins_to(out, signer);
                }
                self.replay_unbound(peer, now_ms, out);
            }
            Body::NonceCommit {
                attempt,
                commitment,
            } => {
                check_attempt(attempt)?;
                match place(&mut self.commits[j], commitment, env.signed().clone()) {
                    Slot::Conflict => {
                        self.abort(now_ms, AbortReason::Equivocation, vec![signer], out)
                    }
                    Slot::New => self.check_commitment(signer, now_ms, out),
                    Slot::Same => {
                        return Err(CoordinatorError::RedundantMessage {
                            signer,
                            kind: "nonce commitment",
                        });
                    }
                }
            }
            Body::Nonce { attempt, pub_nonce } => {
                check_attempt(attempt)?;
                let signed = env.signed().clone();
                if self.is_star_coordinator() {
                    self.verified_nonces[j].get_or_insert(env);
                }
                if let Slot::Same = self.place_nonce(signer, pub_nonce, signed, now_ms, out) {
                    return Err(CoordinatorError::RedundantMessage {
                        signer,
                        kind: "nonce",
                    });
                }
            }
            Body::AggregateNonce {
                attempt, nonces, ..
            } => {
                check_attempt(attempt)?;
                if self.topology != Topology::Star
                    || signer != self.coordinator
                    || self.me == self.coordinator
                {
                    return Err(CoordinatorError::UnexpectedMessage {
                        signer,
                        kind: "aggregate-nonce",
                    });
                }
                // The proto layer checked every relayed nonce's signature and that they sum to
                // the aggregate; each one is its author's signed statement.
                let repeat = self.aggnonce_received;
                for sn in &nonces {
                    if sn.signer == self.me {
                        if Some(sn.pub_nonce) != self.my_nonce {
                            self.abort(
                                now_ms,
                                AbortReason::InvalidAggregateNonce,
                                vec![signer],
                                out,
                            );
                            return Ok(());
                        }
                        continue;
                    }
                    let signed = sn.to_signed_envelope(self.id);
                    self.place_nonce(sn.signer, sn.pub_nonce, signed, now_ms, out);
                    if self.phase.is_terminal() {
                        return Ok(());
                    }
                }
                if repeat {
                    // Same nonces under a new envelope: it cost a verification per signer.
                    return Err(CoordinatorError::RedundantMessage {
                        signer,
                        kind: "aggregate nonce",
                    });
                }
                self.aggnonce_received = true;
                self.aggnonce_env = Some(env.signed().clone());
            }
            Body::PartialSig {
                attempt,
                partial_sig,
            } => {
                check_attempt(attempt)?;
                match place(&mut self.psigs[j], partial_sig, env.signed().clone()) {
                    Slot::Conflict => {
                        self.abort(now_ms, AbortReason::Equivocation, vec![signer], out)
                    }
                    Slot::Same => {
                        return Err(CoordinatorError::RedundantMessage {
                            signer,
                            kind: "partial signature",
                        });
                    }
                    Slot::New => {}
                }
            }
            Body::FinalSignature { signature, .. } => {
                let sig = schnorr::Signature::from_byte_array(signature);
                if musig2_core::verify_signature(
                    &sig,
                    self.ann.announcement().message.as_slice(),
                    &self.key_agg.x_only_key(),
                )
                .is_err()
                {
                    // A lying coordinator can stall the session, never end it with a bad result.
                    return Err(CoordinatorError::UnexpectedMessage {
                        signer,
                        kind: "final signature that does not verify",
                    });
                }
                self.final_env = Some(env.signed().clone());
                self.finish(sig, now_ms, out);
            }
            Body::Abort { reason, blamed } => {
                self.phase = Phase::Aborted;
                self.phase_deadline_ms = None;
                self.secnonce = None;
                let blamed: Vec<SignerIndex> = blamed.into_iter().collect();
                let origin = if signer == self.me {
                    AbortOrigin::Local
                } else {
                    AbortOrigin::Remote(signer)
                };
                self.aborted = Some((reason, blamed.clone(), origin));
                self.final_env = Some(env.signed().clone());
                self.record(Record::Outcome {
                    session: self.id,
                    outcome: Outcome::Aborted {
                        reason,
                        blamed: blamed.clone(),
                        origin,
                    },
                    at_ms: now_ms,
                });
                out.push(Output::Event(Event::Aborted {
                    session: self.id,
                    reason,
                    blamed,
                    origin,
                }));
            }
            Body::Restart { attempt } => {
                if attempt <= self.attempt {
                    // A copy, or a restart we already moved past: nothing to do.
                    return Err(CoordinatorError::WrongAttempt {
                        signer,
                        expected: self.attempt.get().saturating_add(1),
                        found: attempt.get(),
                    });
                }
                if attempt.get() >= self.max_attempts {
                    // Its author lost a nonce it had sent, and no attempt is left: the session
                    // ends, naming it for what happened (not equivocation: it never signed
                    // twice).
                    self.abort(now_ms, AbortReason::Restarted, vec![signer], out);
                    return Ok(());
                }
                tracing::info!(session = %self.id, %signer, attempt = attempt.get(), "a signer restarted: new attempt");
                // Everyone must move together, or a signer told of the restart would wait for
                // one that was not, and blame it: pass it on (copies are dropped unverified).
                let others: Vec<SignerIndex> = self.others().filter(|&k| k != signer).collect();
                self.send_to(out, others, vec![env.signed().clone()]);
                out.push(Output::Event(Event::AttemptStarted {
                    session: self.id,
                    attempt,
                    signer,
                }));
                self.new_attempt(attempt, now_ms);
                let waiting = std::mem::take(&mut self.next_attempt);
                for early in waiting {
                    if self.phase.is_terminal() {
                        break;
                    }
                    if let Err(e) = self.apply(early, now_ms, out) {
                        tracing::debug!(session = %self.id, error = %e, "early contribution dropped");
                    }
                }
            }
            Body::BroadcastConfirmed { .. } | Body::FailoverClaim { .. } => {
                // Broadcast confirmation and failover are not part of this node's protocol
                // version; refuse rather than half-handle them.
                return Err(CoordinatorError::UnexpectedMessage {
                    signer,
                    kind: env.body().kind(),
                });
            }
        }
        Ok(())
    }

    fn place_nonce(
        &mut self,
        signer: SignerIndex,
        nonce: PubNonceBytes,
        env: SignedEnvelope,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Slot {
        let slot = place(&mut self.nonces[signer.as_usize()], nonce, env);
        match slot {
            Slot::Conflict => self.abort(now_ms, AbortReason::Equivocation, vec![signer], out),
            Slot::New => self.check_commitment(signer, now_ms, out),
            Slot::Same => {}
        }
        slot
    }

    /// Whether exactly this envelope is already stored as its signer's contribution (a
    /// duplicate or relayed copy: no need to verify it again).
    fn is_stored(&self, envelope: &SignedEnvelope) -> bool {
        let j = envelope.envelope().signer().as_usize();
        let stored = match envelope.envelope().body() {
            Body::NonceCommit { .. } => self.commits.get(j).and_then(|s| s.as_ref().map(|x| &x.1)),
            Body::Nonce { .. } => self.nonces.get(j).and_then(|s| s.as_ref().map(|x| &x.1)),
            Body::PartialSig { .. } => self.psigs.get(j).and_then(|s| s.as_ref().map(|x| &x.1)),
            Body::Join { .. } => self.joins.get(j).and_then(|s| s.as_ref().map(|x| &x.1)),
            Body::AggregateNonce { .. } => self.aggnonce_env.as_ref(),
            _ => None,
        };
        stored == Some(envelope)
    }

    /// Whether a verified contribution contradicts what its signer sent before.
    fn contradicts(&self, env: &VerifiedEnvelope) -> bool {
        let j = env.signer().as_usize();
        match env.body() {
            Body::NonceCommit {
                attempt,
                commitment,
            } => {
                *attempt == self.attempt
                    && self.commits[j]
                        .as_ref()
                        .is_some_and(|(c, _)| c != commitment)
            }
            Body::Nonce { attempt, pub_nonce } => {
                *attempt == self.attempt
                    && self.nonces[j].as_ref().is_some_and(|(n, _)| n != pub_nonce)
            }
            Body::PartialSig {
                attempt,
                partial_sig,
            } => {
                *attempt == self.attempt
                    && self.psigs[j]
                        .as_ref()
                        .is_some_and(|(p, _)| p != partial_sig)
            }
            _ => false,
        }
    }

    /// With both a commitment and a reveal from `signer`, checks one against the other.
    fn check_commitment(&mut self, signer: SignerIndex, now_ms: u64, out: &mut Vec<Output>) {
        let j = signer.as_usize();
        if let (Some((commitment, _)), Some((nonce, _))) = (&self.commits[j], &self.nonces[j]) {
            if commitment
                .check_reveal(&self.id, signer, self.attempt, nonce)
                .is_err()
            {
                self.abort(now_ms, AbortReason::CommitmentMismatch, vec![signer], out);
            }
        }
    }

    fn replay_unbound(&mut self, peer: PeerId, now_ms: u64, out: &mut Vec<Output>) {
        let (ready, rest): (VecDeque<_>, VecDeque<_>) =
            self.unbound.drain(..).partition(|(p, _)| *p == peer);
        self.unbound = rest;
        for (from, env) in ready {
            if self.phase.is_terminal() {
                break;
            }
            if let Err(e) = self.accept(from, env, now_ms, out) {
                tracing::debug!(session = %self.id, %from, error = %e, "dropped buffered envelope");
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Progress

    /// Moves through as many phases as the collected contributions allow.
    fn advance<R: rand::CryptoRng + ?Sized>(
        &mut self,
        now_ms: u64,
        rng: &mut R,
        out: &mut Vec<Output>,
    ) {
        loop {
            let before = self.phase;
            match self.phase {
                Phase::Joined if self.holdouts().is_empty() => self.start_round1(now_ms, rng, out),
                Phase::NonceCommit if all_filled(&self.commits) => self.reveal(now_ms, out),
                Phase::Nonce if all_filled(&self.nonces) => self.sign_round2(now_ms, out),
                Phase::PartialSig if all_filled(&self.psigs) => self.aggregate(now_ms, out),
                _ => {}
            }
            if self.phase == before {
                break;
            }
        }
    }

    fn start_round1<R: rand::CryptoRng + ?Sized>(
        &mut self,
        now_ms: u64,
        rng: &mut R,
        out: &mut Vec<Output>,
    ) {
        let sk = self.keypair.secret_key();
        let mut extra = Vec::with_capacity(34);
        extra.extend_from_slice(self.id.as_bytes());
        extra.extend_from_slice(&self.attempt.get().to_be_bytes());
        let generated = NonceGen::new(self.keypair.public_key())
            .secret_key(&sk)
            .key_agg(&self.key_agg)
            .message(&self.ann.announcement().message)
            .extra_input(&extra)
            .generate(rng);
        let (secnonce, pubnonce) = match generated {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(session = %self.id, error = %e, "nonce generation failed");
                self.abort(now_ms, AbortReason::Internal, Vec::new(), out);
                return;
            }
        };
        let Ok(nonce_bytes) = PubNonceBytes::from_bytes(pubnonce.to_bytes()) else {
            self.abort(now_ms, AbortReason::Internal, Vec::new(), out);
            return;
        };
        self.secnonce = Some(secnonce);
        self.my_nonce = Some(nonce_bytes);
        // With announced peers round 1 can start before everyone joined; a signer's first
        // contribution is then its join, and it has the whole join window for it: the phase
        // counts as starting no earlier than `nonce_timeout` before the window ends.
        let a = self.ann.announcement();
        let join_end = a.created_at_ms.saturating_add(a.policy.timeouts.join_ms);
        let phase_start = now_ms.max(join_end.saturating_sub(self.nonce_timeout_ms));
        if self.commit_round {
            let commitment =
                NonceCommitment::compute(&self.id, self.me, self.attempt, &nonce_bytes);
            let env = self.sign(
                now_ms,
                Body::NonceCommit {
                    attempt: self.attempt,
                    commitment,
                },
            );
            self.commits[self.me.as_usize()] = Some((commitment, env.clone()));
            let targets = self.round_targets();
            self.send_to(out, targets, vec![env]);
            self.enter(Phase::NonceCommit, phase_start, self.nonce_timeout_ms);
        } else {
            self.publish_nonce(now_ms, out);
            self.enter(Phase::Nonce, phase_start, self.nonce_timeout_ms);
        }
    }

    /// All commitments are in: the star coordinator shares them; everyone reveals.
    fn reveal(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        if self.is_star_coordinator() {
            let commits: Vec<SignedEnvelope> = self
                .commits
                .iter()
                .flatten()
                .map(|(_, env)| env.clone())
                .collect();
            for k in self.others() {
                let for_k: Vec<SignedEnvelope> = commits
                    .iter()
                    .filter(|e| e.envelope().signer() != k)
                    .cloned()
                    .collect();
                self.send_to(out, [k], for_k);
            }
        }
        self.publish_nonce(now_ms, out);
        self.enter(Phase::Nonce, now_ms, self.nonce_timeout_ms);
    }

    fn publish_nonce(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let Some(nonce) = self.my_nonce else { return };
        let env = self.sign(
            now_ms,
            Body::Nonce {
                attempt: self.attempt,
                pub_nonce: nonce,
            },
        );
        if self.is_star_coordinator() {
            // The aggregate-nonce message carries our own signed nonce too.
            self.verified_nonces[self.me.as_usize()] = env.verify(&self.ann).ok();
        }
        self.nonces[self.me.as_usize()] = Some((nonce, env.clone()));
        match self.topology {
            // Each reveal travels with the commitments it was made after: a signer whose
            // commitment reached only some of us cannot leave the others stuck in round 0 (and
            // blamed by those who moved on), and two commitments from one signer are caught.
            Topology::Mesh if self.commit_round => {
                for k in self.others().collect::<Vec<_>>() {
                    let mut batch: Vec<SignedEnvelope> = self
                        .commits
                        .iter()
                        .flatten()
                        .map(|(_, e)| e)
                        .filter(|e| {
                            let author = e.envelope().signer();
                            author != k && author != self.me
                        })
                        .cloned()
                        .collect();
                    batch.push(env.clone());
                    self.send_to(out, [k], batch);
                }
            }
            _ if !self.is_star_coordinator() => {
                let targets = self.round_targets();
                self.send_to(out, targets, vec![env]);
            }
            _ => {}
        }
    }

    /// All nonces are in: fix the session context, sign, and send the partial signature.
    fn sign_round2(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        if self.is_star_coordinator() {
            let envs: Option<Vec<VerifiedEnvelope>> =
                self.verified_nonces.iter().cloned().collect();
            let body =
                envs.and_then(|envs| Body::aggregate_nonce(&self.ann, self.attempt, &envs).ok());
            let Some(body) = body else {
                self.abort(now_ms, AbortReason::Internal, Vec::new(), out);
                return;
            };
            let env = self.sign(now_ms, body);
            let others: Vec<SignerIndex> = self.others().collect();
            self.send_to(out, others, vec![env.clone()]);
            self.aggnonce_sent = Some(env);
        }
        let pubnonces: Option<Vec<PubNonce>> = self
            .nonces
            .iter()
            .map(|s| s.as_ref().map(|(b, _)| pubnonce_of(b)))
            .collect();
        let Some(pubnonces) = pubnonces else {
            self.abort(now_ms, AbortReason::InvalidNonce, Vec::new(), out);
            return;
        };
        let context = SessionContext::new(
            &self.key_agg,
            &AggNonce::aggregate(&pubnonces),
            &self.ann.announcement().message,
        );
        if !self.nonces_announced {
            self.nonces_announced = true;
            out.push(Output::Event(Event::NoncesComplete { session: self.id }));
        }
        let Some(secnonce) = self.secnonce.take() else {
            self.abort(now_ms, AbortReason::Internal, Vec::new(), out);
            return;
        };
        let psig = match context.sign(secnonce, &self.keypair) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(session = %self.id, error = %e, "signing failed");
                self.abort(now_ms, AbortReason::Internal, Vec::new(), out);
                return;
            }
        };
        self.context = Some(context);
        let Ok(psig_bytes) = PartialSigBytes::from_bytes(psig.to_bytes()) else {
            self.abort(now_ms, AbortReason::Internal, Vec::new(), out);
            return;
        };
        let env = self.sign(
            now_ms,
            Body::PartialSig {
                attempt: self.attempt,
                partial_sig: psig_bytes,
            },
        );
        self.psigs[self.me.as_usize()] = Some((psig_bytes, env.clone()));
        self.send_partial_sig(env, out);
        self.enter(Phase::PartialSig, now_ms, self.partial_sig_timeout_ms);
    }

    /// Sends our partial signature where the topology wants it.
    fn send_partial_sig(&self, env: SignedEnvelope, out: &mut Vec<Output>) {
        match self.topology {
            Topology::Mesh => {
                // Each partial signature travels with the nonces it was made under: a signer who
                // sent different nonces to different peers is caught (and blamed) before anyone
                // misattributes the resulting invalid partial signatures.
                for k in self.others() {
                    let mut batch: Vec<SignedEnvelope> = self
                        .nonces
                        .iter()
                        .flatten()
                        .map(|(_, e)| e)
                        .filter(|e| e.envelope().signer() != k)
                        .cloned()
                        .collect();
                    batch.push(env.clone());
                    self.send_to(out, [k], batch);
                }
            }
            Topology::Star if !self.is_star_coordinator() => {
                self.send_to(out, [self.coordinator], vec![env]);
            }
            Topology::Star => {}
        }
    }

    /// All partial signatures are in: aggregate with the core's fast path, blame on failure.
    fn aggregate(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let Some(context) = &self.context else { return };
        if !self.psigs_announced {
            self.psigs_announced = true;
            out.push(Output::Event(Event::PartialSignaturesComplete {
                session: self.id,
            }));
        }
        let mut blamed = Vec::new();
        let mut psigs = Vec::with_capacity(self.n);
        for (i, slot) in self.psigs.iter().enumerate() {
            let parsed = slot
                .as_ref()
                .and_then(|(b, _)| PartialSignature::from_bytes(&b.to_bytes()).ok());
            match parsed {
                Some(p) => psigs.push(p),
                None => blamed.extend(SignerIndex::try_from(i).ok()),
            }
        }
        let pubnonces: Vec<PubNonce> = self
            .nonces
            .iter()
            .filter_map(|s| s.as_ref().map(|(b, _)| pubnonce_of(b)))
            .collect();
        let result = if blamed.is_empty() {
            context.aggregate_and_verify(&psigs, &pubnonces)
        } else {
            Err(musig2_core::Error::InvalidPartialSignatures {
                signers: blamed.iter().map(|s| s.as_usize()).collect(),
            })
        };
        match result {
            Ok(sig) => {
                if self.is_star_coordinator() {
                    let env = self.sign(
                        now_ms,
                        Body::FinalSignature {
                            attempt: self.attempt,
                            signature: sig.to_byte_array(),
                        },
                    );
                    let others: Vec<SignerIndex> = self.others().collect();
                    self.send_to(out, others, vec![env.clone()]);
                    self.final_env = Some(env);
                }
                self.finish(sig, now_ms, out);
            }
            Err(e) => {
                let culprits: Vec<SignerIndex> = e
                    .culprits()
                    .into_iter()
                    .filter_map(|i| SignerIndex::try_from(i).ok())
                    .collect();
                if self.is_star_coordinator() {
                    // Hand every signer the evidence so each finds the same culprits itself.
                    let evidence: Vec<SignedEnvelope> = self
                        .psigs
                        .iter()
                        .flatten()
                        .map(|(_, env)| env.clone())
                        .collect();
                    let others: Vec<SignerIndex> = self.others().collect();
                    for k in others {
                        self.send_to(out, [k], evidence.clone());
                    }
                }
                self.abort(now_ms, AbortReason::InvalidPartialSig, culprits, out);
            }
        }
    }

    fn finish(&mut self, sig: schnorr::Signature, now_ms: u64, out: &mut Vec<Output>) {
        if self.phase.is_terminal() {
            return;
        }
        self.phase = Phase::Done;
        self.phase_deadline_ms = None;
        self.secnonce = None;
        self.signature = Some(sig);
        self.record(Record::Outcome {
            session: self.id,
            outcome: Outcome::Signed(sig),
            at_ms: now_ms,
        });
        out.push(Output::Event(Event::SignatureReady {
            session: self.id,
            signature: sig,
        }));
    }

    fn abort(
        &mut self,
        now_ms: u64,
        reason: AbortReason,
        blamed: Vec<SignerIndex>,
        out: &mut Vec<Output>,
    ) {
        if self.phase.is_terminal() {
            return;
        }
        let joined = self.phase != Phase::Created;
        // Evidence found before we joined (e.g. an equivocation we saw early) is still told to
        // the others: silently leaving would make them time out blaming us.
        let evidence = !matches!(
            reason,
            AbortReason::Timeout | AbortReason::Expired | AbortReason::Cancelled
        );
        self.phase = Phase::Aborted;
        self.phase_deadline_ms = None;
        // Dropping the secret nonce erases it; it can never be used again.
        self.secnonce = None;
        if joined || evidence {
            let env = self.sign(
                now_ms,
                Body::Abort {
                    reason,
                    blamed: blamed.first().copied(),
                },
            );
            let others: Vec<SignerIndex> = self.others().collect();
            self.send_to(out, others, vec![env.clone()]);
            self.final_env = Some(env);
        }
        tracing::info!(session = %self.id, ?reason, ?blamed, "session aborted");
        self.record(Record::Outcome {
            session: self.id,
            outcome: Outcome::Aborted {
                reason,
                blamed: blamed.clone(),
                origin: AbortOrigin::Local,
            },
            at_ms: now_ms,
        });
        self.aborted = Some((reason, blamed.clone(), AbortOrigin::Local));
        out.push(Output::Event(Event::Aborted {
            session: self.id,
            reason,
            blamed,
            origin: AbortOrigin::Local,
        }));
    }

    // ------------------------------------------------------------------------------------------
    // Helpers

    fn enter(&mut self, phase: Phase, now_ms: u64, timeout_ms: u64) {
        self.phase = phase;
        // A star member's only holdout in these phases is the coordinator, which is itself
        // waiting for the other members. The member waits half as long again, so that when a
        // member withholds, the coordinator's abort naming it arrives before the member's own
        // deadline would blame the (honest) coordinator.
        let star_member = self.topology == Topology::Star && self.me != self.coordinator;
        let grace = if star_member
            && matches!(phase, Phase::NonceCommit | Phase::Nonce | Phase::PartialSig)
        {
            timeout_ms / 2
        } else {
            0
        };
        self.phase_deadline_ms = Some(now_ms.saturating_add(timeout_ms).saturating_add(grace));
    }

    fn sign(&mut self, now_ms: u64, body: Body) -> SignedEnvelope {
        let seq = self.next_seq;
        self.next_seq = seq.next().unwrap_or(seq);
        if self.persist && seq.get() >= self.reserved_seq {
            self.reserve_seq(seq.get());
        }
        let env = Envelope::sign(self.id, self.me, seq, now_ms, body, &self.keypair);
        // Our own entries serve only to drop copies of our envelopes relayed back (by their
        // signature); no contradiction check ever runs on them, so no hash is needed.
        self.remember(self.me, seq, [0; 32], *env.signature());
        self.record(Record::Envelope(env.clone()));
        env
    }

    /// Reserves a block of sequence numbers from `from` on: the store learns of it before any
    /// envelope numbered in it leaves.
    fn reserve_seq(&mut self, from: u64) {
        self.reserved_seq = from.saturating_add(SEQ_RESERVATION_BLOCK);
        if let Ok(next) = SeqNo::new(self.reserved_seq) {
            self.record(Record::SeqReserved {
                session: self.id,
                next,
            });
        }
    }

    fn record(&mut self, record: Record) {
        if self.persist {
            self.records.push(record);
        }
    }

    /// Hands the step's records out first: the runtime commits them before it sends anything.
    fn flush_records(&mut self, out: &mut Vec<Output>) {
        if self.records.is_empty() {
            return;
        }
        let me = self.me;
        let (urgent, later): (Vec<Record>, Vec<Record>) = std::mem::take(&mut self.records)
            .into_iter()
            .partition(|r| match r {
                // A restart must know that our join, a nonce (or its commitment) or a restart
                // of ours may have left; the rest of ours (a partial signature, an aggregate
                // nonce) only spares a restart an attempt (ADR 0007).
                Record::Envelope(env) => {
                    env.envelope().signer() == me
                        && matches!(
                            env.envelope().body(),
                            Body::Join { .. }
                                | Body::NonceCommit { .. }
                                | Body::Nonce { .. }
                                | Body::Restart { .. }
                        )
                }
                Record::Outcome { .. } => false,
                _ => true,
            });
        if !later.is_empty() {
            out.insert(0, Output::PersistLater(later));
        }
        if !urgent.is_empty() {
            out.insert(0, Output::Persist(urgent));
        }
    }

    /// From our join on, the session is stored: the announcement, what we hold already, and a
    /// first block of sequence numbers.
    fn start_persisting(&mut self) {
        if self.persist {
            return;
        }
        self.persist = true;
        self.record(Record::Session {
            announcement: self.ann.signed().clone(),
            learned_ms: self.started_ms,
        });
        let held: Vec<SignedEnvelope> = self
            .joins
            .iter()
            .flatten()
            .map(|(_, e)| e.clone())
            .chain(self.commits.iter().flatten().map(|(_, e)| e.clone()))
            .chain(self.nonces.iter().flatten().map(|(_, e)| e.clone()))
            .chain(self.psigs.iter().flatten().map(|(_, e)| e.clone()))
            .chain(self.aggnonce_env.clone())
            .collect();
        for env in held {
            self.record(Record::Envelope(env));
        }
        self.reserve_seq(self.next_seq.get());
    }

    /// Moves the session to `attempt`: every contribution of the attempt we leave is dropped
    /// (never mixed into the new one), our secret nonce with it; everyone makes fresh nonces.
    fn new_attempt(&mut self, attempt: Attempt, now_ms: u64) {
        self.attempt = attempt;
        self.record(Record::Attempt {
            session: self.id,
            attempt,
        });
        for slot in &mut self.commits {
            *slot = None;
        }
        for slot in &mut self.nonces {
            *slot = None;
        }
        for slot in &mut self.verified_nonces {
            *slot = None;
        }
        for slot in &mut self.psigs {
            *slot = None;
        }
        self.aggnonce_received = false;
        self.aggnonce_env = None;
        self.aggnonce_sent = None;
        self.nonces_announced = false;
        self.psigs_announced = false;
        self.secnonce = None;
        self.my_nonce = None;
        self.context = None;
        if !matches!(self.phase, Phase::Created) && !self.phase.is_terminal() {
            self.phase = Phase::Joined;
            let a = self.ann.announcement();
            let join_end = a.created_at_ms.saturating_add(a.policy.timeouts.join_ms);
            self.phase_deadline_ms =
                Some(join_end.max(now_ms.saturating_add(self.nonce_timeout_ms)));
        }
    }

    fn is_star_coordinator(&self) -> bool {
        self.topology == Topology::Star && self.me == self.coordinator
    }

    fn all_signers(&self) -> impl Iterator<Item = SignerIndex> + use<> {
        (0..self.n).filter_map(|i| SignerIndex::try_from(i).ok())
    }

    fn others(&self) -> impl Iterator<Item = SignerIndex> + use<> {
        let me = self.me;
        self.all_signers().filter(move |&i| i != me)
    }

    /// Who receives our round messages: everyone in mesh, the coordinator in star.
    fn round_targets(&self) -> Vec<SignerIndex> {
        match self.topology {
            Topology::Mesh => self.others().collect(),
            Topology::Star => vec![self.coordinator],
        }
    }

    /// Whether `receiver` needs to learn `joiner`'s binding: everyone in mesh; in star only the
    /// coordinator, and everyone the coordinator's.
    fn needs_join_of(&self, receiver: SignerIndex, joiner: SignerIndex) -> bool {
        receiver != joiner
            && (self.topology == Topology::Mesh
                || receiver == self.coordinator
                || joiner == self.coordinator)
    }

    /// (Creator only.) Sends `to` the joins of signers whose peer ids were not announced.
    fn relay_unlisted_joins_to(&mut self, out: &mut Vec<Output>, to: SignerIndex) {
        let envs: Vec<SignedEnvelope> = (0..self.n)
            .filter(|&k| !self.listed[k] && k != to.as_usize() && k != self.me.as_usize())
            .filter(|&k| SignerIndex::try_from(k).is_ok_and(|ks| self.needs_join_of(to, ks)))
            .filter_map(|k| self.joins[k].as_ref().map(|(_, e)| e.clone()))
            .collect();
        if !envs.is_empty() {
            self.send_to(out, [to], envs);
        }
    }

    fn send_to(
        &self,
        out: &mut Vec<Output>,
        targets: impl IntoIterator<Item = SignerIndex>,
        envelopes: Vec<SignedEnvelope>,
    ) {
        for t in targets {
            if t == self.me {
                continue;
            }
            if let Some(peer) = self.peer_of(t) {
                out.push(Output::Send {
                    to: peer,
                    envelopes: envelopes.clone(),
                });
            }
        }
    }
}

/// How many signers' slots hold a contribution.
fn filled<T>(slots: &[Option<T>]) -> usize {
    slots.iter().filter(|s| s.is_some()).count()
}

/// Whether every signer's slot holds a contribution.
fn all_filled<T>(slots: &[Option<T>]) -> bool {
    slots.iter().all(Option::is_some)
}

/// The attempt a contribution belongs to.
fn body_attempt(body: &Body) -> Option<Attempt> {
    match body {
        Body::NonceCommit { attempt, .. }
        | Body::Nonce { attempt, .. }
        | Body::PartialSig { attempt, .. }
        | Body::AggregateNonce { attempt, .. } => Some(*attempt),
        _ => None,
    }
}

/// The core's view of a wire nonce, reusing the points the proto layer already parsed.
fn pubnonce_of(bytes: &PubNonceBytes) -> PubNonce {
    let [r1, r2] = bytes.points();
    PubNonce::from_points(r1, r2)
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
