//! A signer that takes a slot in a session but runs its own message logic on a bare transport.
//!
//! The [`Adversary`] speaks the wire protocol directly: it decodes frames with `musig2-proto`,
//! makes its nonces and partial signature with `musig2-core`, and signs its envelopes with its
//! own key. Its [`Behaviour`] decides where it deviates from the honest protocol.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use musig2_core::{AggNonce, KeyAggContext, NonceGen, PubNonce, SecNonce, SessionContext};
use musig2_proto::{
    AbortReason, AggNonceBytes, AggregateRef, Attempt, Body, Envelope, Frame, Limits,
    NonceCommitment, PartialSigBytes, PeerIdBytes, PubNonceBytes, SeqNo, SessionId,
    SignedAnnouncement, SignedEnvelope, SignerIndex, Topology, VerifiedAnnouncement, decode_frame,
};
use musig2_transport::{MemoryTransport, PeerId, Transport, TransportError};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use secp256k1::Keypair;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clock::WallClock;

/// The transport an adversary runs on: any [`Transport`] (memory or libp2p).
pub type SharedTransport = Arc<dyn Transport>;

mod announce;
mod attacks;
mod late;
mod random;
mod star;

/// How an [`Adversary`] deviates from the honest protocol.
///
/// Unless stated otherwise the adversary follows the protocol (join, nonce commitment when the
/// policy asks for one, nonce, partial signature) for everything its behaviour does not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Behaviour {
    /// Follows the protocol exactly (a control: the harness itself must let honest runs sign).
    Honest,
    /// Commits (if commitments are on) but never reveals its public nonce.
    WithholdNonce,
    /// Joins, then sends neither a nonce commitment nor a nonce.
    WithholdCommitment,
    /// Sends its nonce but never its partial signature.
    WithholdPartialSig,
    /// Sends a well-formed partial signature that does not verify.
    InvalidPartialSig,
    /// Sends a Nonce frame whose nonce bytes are not a valid point (so it cannot decode) instead
    /// of its nonce.
    InvalidNonce,
    /// Commits to one nonce and reveals another (needs commitments on).
    CommitmentMismatch,
    /// Sends one nonce to the first half of the other signers and a different one, with the
    /// same sequence number, to the rest (a star member sends both to the coordinator). Sends
    /// no partial signature.
    Equivocate,
    /// Honest, and also re-sends every envelope it has seen or sent (its own and the honest
    /// signers') to every honest signer, again and again.
    Replay,
    /// Honest, and also sends envelopes signed with its own key that claim to come from
    /// `victim`: a join rebinding the victim's index to the adversary's peer, a nonce, an abort
    /// blaming the victim, and a partial signature.
    Impersonate {
        /// The signer index the forged envelopes claim.
        victim: SignerIndex,
    },
    /// Honest, and also sends malformed frames: empty, random bytes, truncated, trailing bytes,
    /// unknown version, over the frame-size limit, an over-long batch, a bad signature, and one
    /// frame over the transport's own limit.
    MalformedFrames,
    /// Sends `frames` random junk frames to every honest signer (see [`flood_junk`]) before
    /// following the protocol.
    Flood {
        /// Junk frames (and duplicate joins) per honest signer.
        frames: usize,
    },
    /// Follows the protocol up to its nonce, then sends a validly signed Abort that blames
    /// `accuse` (an honest signer).
    FalseAbort {
        /// The signer the adversary accuses.
        accuse: SignerIndex,
    },
    /// Tampers with the creator's signed announcement, keeping the creator's signature: once with
    /// its own message of the same length (a session announced in the creator's name), once with
    /// another signer's peer id replaced by the adversary's (a route hijack). Sends both to every
    /// honest signer and stores both in the DHT, under their own session ids and under the real
    /// one; then follows the protocol of the real session.
    ForgeAnnouncement,
    /// Star coordinator: collects the members' nonce commitments and never relays them.
    WithholdCommitments,
    /// Star coordinator: collects every nonce and never sends the aggregate nonce.
    WithholdAggregateNonce,
    /// Star coordinator: sends an aggregate nonce that is not the sum of the relayed nonces
    /// (one signer's nonce left out of the sum).
    BadAggregateNonce,
    /// Star coordinator: relays a member's nonce with its bytes swapped for a fresh nonce, under
    /// the member's original envelope signature (the aggregate is the sum of what it relays).
    ForgedRelayedNonce,
    /// Star coordinator: runs the session honestly up to the partial signatures, then, instead
    /// of the final signature, sends a second aggregate nonce with a fresh nonce of its own
    /// (trying to get a second partial signature from each member).
    SecondAggregateNonce,
    /// Star coordinator: its aggregate nonce envelope carries a signature that does not verify
    /// (made with a throwaway key), sent from its own peer. The aggregate inside is the honest
    /// one (`valid: true`), or one that is not the sum of the relayed nonces (`valid: false`,
    /// as [`Behaviour::BadAggregateNonce`], after which it reveals its set with an abort
    /// blaming a member). ADR 0026: members sign under it before checking it.
    BadlySignedAggregateNonce {
        /// Whether the aggregate inside is the sum of the relayed nonces.
        valid: bool,
    },
    /// Star coordinator: collects every partial signature and never sends the final signature.
    WithholdFinalSig,
    /// Star coordinator: sends a final signature that does not verify (one bit flipped).
    InvalidFinalSig,
    /// Follows the protocol (as member, creator or star coordinator), but every frame it sends
    /// goes through a seeded strategy (ChaCha20 from `seed`) that, per message, passes it on or
    /// drops it for some peers, duplicates it, delays it (also to just before and after the
    /// phase deadlines), reorders it behind the next one, re-dates it (inside and at the edge
    /// of the clock-skew bound), re-signs it under an earlier sequence number, equivocates (a
    /// different nonce, commitment, partial signature, aggregate nonce or final signature to a
    /// subset, with the same or a new sequence number), relays stale contributions (other
    /// signers' earlier envelopes, its own earlier ones, its own for another attempt), or sends
    /// a subset its envelope under another key's signature (then, or not, the genuine one). What it
    /// did is listed in [`AdversaryLog::mutations`]. See `src/adversary/random.rs`.
    Randomized {
        /// Seed of the strategy's decisions.
        seed: u64,
    },
    /// Mesh, commitments on: sends `victim` one nonce and the others another, under two
    /// sequence numbers and dated just inside the clock-skew bound in the past; waits a second
    /// and then sends the matching commitments (`victim`'s to it, the other to the rest), and a
    /// partial signature valid under the others' nonce. The honest nodes' relayed copies of its
    /// nonces arrive outside the skew bound.
    SkewEdgeEquivocation {
        /// The honest signer shown the second nonce.
        victim: SignerIndex,
    },
    /// Star member, commitments on: signs a second, harmless Join with the sequence number of
    /// its nonce commitment and sends it to `victim` before the commitment goes to the
    /// coordinator, so the relayed commitment reaches `victim` under a sequence number it has
    /// already seen. Otherwise honest.
    ReuseSeqForCommitment {
        /// The member that gets the duplicate Join.
        victim: SignerIndex,
    },
    /// Mesh, commitments on: sends its nonce commitment to every honest signer but `skip`, then
    /// follows the protocol (nonce to everyone, partial signature).
    CommitmentToAllBut {
        /// The honest signer that never gets the commitment.
        skip: SignerIndex,
    },
    /// Mesh: sends its commitment (when the session has them) to everyone and its nonce to
    /// every honest signer but `skip`, then its partial signature to everyone. `skip` asks
    /// a signer whose partial signature reached it for the nonces (ADR 0023) and signs.
    NonceToAllBut {
        /// The honest signer that never gets the nonce from the adversary.
        skip: SignerIndex,
    },
    /// Mesh: follows the protocol, but its partial signature names an aggregate nonce that is
    /// not the one it was made under. Nobody judges it; each honest node sends the adversary
    /// its nonce set once (ADR 0023), and the session ends at the deadline naming the
    /// adversary, the one signer whose partial signature under the session's aggregate is
    /// missing.
    PartialSigUnderOtherAggregate,
    /// Right after joining, sends `victim` two different nonces under one sequence number (and
    /// the others the first), then follows the protocol. Run as the first signer to act, the
    /// victim sees the equivocation before its own node has joined.
    EquivocateBeforeJoin {
        /// The honest signer shown both nonces.
        victim: SignerIndex,
    },
    /// Sends nothing at all in the session: no join, no nonce. As creator it announces and
    /// then withholds everything.
    Silent,
    /// Follows the protocol, but its partial signature's envelope carries a signature that does
    /// not verify (made with a throwaway key), sent from its own peer; the partial signature
    /// itself is its valid one (`valid: true`) or the scalar 1 (ADR 0022: a node that
    /// aggregates takes it before checking the envelope, and checks it only if it becomes
    /// evidence).
    BadlySignedPartialSig {
        /// Whether the partial signature inside is the valid one.
        valid: bool,
    },
    /// Follows the protocol up to its partial signature, then sends its valid partial
    /// signature to the first half of its targets and a different, invalid one under the same
    /// sequence number to the rest (in star, whose only target is the coordinator, just the
    /// invalid one).
    EquivocatePartialSig,
    /// Star coordinator: shows each member a different aggregate nonce. For each member it
    /// makes a fresh nonce of its own, signs it under one sequence number (the same for every
    /// member) and sends that member the aggregate of the members' nonces and that one, with
    /// every relayed nonce correctly signed: no member alone can see anything wrong.
    AggregateNoncePerMember,
    /// Star coordinator: shows member `victim` a different set of relayed nonces than the other
    /// members: another member's nonce swapped for a fresh one under that member's original
    /// signature (`omit: false`), or left out (`omit: true`), the aggregate recomputed to
    /// match. The other members get the honest aggregate nonce; the two versions share one
    /// sequence number.
    RelayedNoncesPerMember {
        /// The member shown the different set.
        victim: SignerIndex,
        /// Leave the other member's nonce out instead of swapping it.
        omit: bool,
    },
    /// Follows the protocol, but times `message` to reach the honest nodes `offset_ms` from
    /// their deadline for the phase it completes, and bends it or what follows as `twist`
    /// says (see `src/adversary/late.rs`). The deadline of round 1 (the commitment, or the
    /// nonce without commitments) is the end of the join window (the announcement's creation
    /// time plus its join timeout, by the adversary's clock: node clocks differ by the real
    /// milliseconds between their starts); the later deadlines start when the phase does, which
    /// on an undisturbed memory network is the instant the adversary itself is ready to send.
    NearDeadline {
        /// The message held back.
        message: LateMessage,
        /// When it arrives, relative to the deadline (negative: before).
        offset_ms: i32,
        /// What else the adversary does.
        twist: Twist,
    },
}

/// The message a [`Behaviour::NearDeadline`] adversary holds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateMessage {
    /// Its nonce commitment (round 1 with commitments on).
    Commitment,
    /// Its public nonce (round 1 without commitments; the reveal with them).
    Nonce,
    /// Its partial signature.
    PartialSig,
    /// As star coordinator: the aggregate nonce (its deadline is the members', half as long
    /// again as the coordinator's own).
    AggregateNonce,
    /// As star coordinator: the final signature (the members' deadline).
    FinalSignature,
}

/// What a [`Behaviour::NearDeadline`] adversary does besides being late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Twist {
    /// Nothing: the late message is honest, and so is the rest.
    None,
    /// The late message comes in two versions under one sequence number: the first half of
    /// its targets gets the honest one, the rest another (a second commitment or nonce, an
    /// invalid partial signature, an aggregate nonce with a second nonce of the coordinator's,
    /// a final signature with a bit flipped); a single target gets both.
    Equivocate,
    /// Nothing after the late message (it withholds the rest).
    WithholdRest,
}

/// What an adversary did and saw, returned by [`Adversary::stop`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdversaryLog {
    /// The session it took part in, once it received the announcement.
    pub session: Option<SessionId>,
    /// Frames it tried to send.
    pub frames_sent: usize,
    /// Frames the transport delivered into a peer's inbound queue.
    pub frames_delivered: usize,
    /// Envelopes it sent claiming another signer's index.
    pub forged: usize,
    /// Valid envelopes it received (batches counted per envelope).
    pub envelopes_received: usize,
    /// Nonce envelopes among them (relayed ones included), copies counted.
    pub nonce_envelopes_received: usize,
    /// Distinct public nonces seen from each signer index (its own excluded).
    pub nonces_seen: BTreeMap<usize, BTreeSet<[u8; 66]>>,
    /// Distinct partial signatures seen from each signer index (its own excluded).
    pub partial_sigs_seen: BTreeMap<usize, BTreeSet<[u8; 32]>>,
    /// Distinct public nonces seen from each signer index, per attempt (signer, attempt).
    pub nonces_by_attempt: BTreeMap<(usize, u16), BTreeSet<[u8; 66]>>,
    /// Distinct partial signatures seen from each signer index, per attempt (signer, attempt).
    pub partial_sigs_by_attempt: BTreeMap<(usize, u16), BTreeSet<[u8; 32]>>,
    /// Sends that failed for good, by error kind (`"backpressure"` means the peer's queue stayed
    /// full through every retry).
    pub send_errors: BTreeMap<&'static str, usize>,
    /// Whether it sent a partial signature (valid or not).
    pub sent_partial_sig: bool,
    /// Session ids of the forged announcements it sent (see [`Behaviour::ForgeAnnouncement`]).
    pub forged_sessions: Vec<SessionId>,
    /// Sends the network dropped (they timed out) and that were tried again.
    pub dropped_sends: usize,
    /// As star coordinator: aggregate-nonce envelopes sent (one per member and message).
    pub aggregate_nonces_sent: usize,
    /// Nonce sets (evidence of a failed star session) sent, one per member.
    pub nonce_sets_sent: usize,
    /// As star coordinator: final-signature envelopes sent (one per member).
    pub final_signatures_sent: usize,
    /// What a [`Behaviour::Randomized`] adversary did to each message, in order (time since
    /// it started, the message, the mutation and its targets).
    pub mutations: Vec<String>,
}

/// Everything an [`Adversary`] needs besides its transport, key and behaviour.
#[derive(Debug, Clone)]
pub struct AdversarySetup {
    /// Wire limits for decoding.
    pub limits: Limits,
    /// Seed of its nonces and junk.
    pub seed: u64,
    /// The honest nodes' clock-skew bound (what [`Behaviour::Randomized`] re-dates around).
    pub max_clock_skew: Duration,
    /// An announcement it created and signed: it sends it to every listed peer and takes part
    /// in that session (the adversary as creator).
    pub announcement: Option<SignedAnnouncement>,
    /// The peers it sends its announcement to, if not every listed one (a creator that shows
    /// the session to some signers only).
    pub announce_to: Option<Vec<PeerId>>,
}

/// A running adversarial signer. Stop it with [`Adversary::stop`] to get its [`AdversaryLog`].
#[derive(Debug)]
pub struct Adversary {
    peer_id: PeerId,
    keypair: Keypair,
    stop: oneshot::Sender<()>,
    task: JoinHandle<AdversaryLog>,
}

impl Adversary {
    /// Starts the adversary on `transport` with signing key `keypair`. It waits for a session
    /// announcement that names its key and then plays `behaviour`. `seed` drives its nonces and
    /// junk. Must be called inside a tokio runtime.
    pub fn spawn(
        transport: MemoryTransport,
        keypair: Keypair,
        behaviour: Behaviour,
        limits: Limits,
        seed: u64,
    ) -> Adversary {
        let setup = AdversarySetup {
            limits,
            seed,
            max_clock_skew: musig2_coordinator::Config::default().max_clock_skew,
            announcement: None,
            announce_to: None,
        };
        Self::spawn_with(transport, keypair, behaviour, setup)
    }

    /// Like [`Adversary::spawn_on`], on a memory transport.
    pub fn spawn_with(
        transport: MemoryTransport,
        keypair: Keypair,
        behaviour: Behaviour,
        setup: AdversarySetup,
    ) -> Adversary {
        Self::spawn_on(Arc::new(transport), keypair, behaviour, setup)
    }

    /// Like [`Adversary::spawn`], on any transport (memory or libp2p) and with the full
    /// [`AdversarySetup`] (the skew bound the honest nodes use, and optionally an announcement
    /// the adversary created).
    pub fn spawn_on(
        transport: SharedTransport,
        keypair: Keypair,
        behaviour: Behaviour,
        setup: AdversarySetup,
    ) -> Adversary {
        let peer_id = transport.local_peer_id();
        let (stop, stop_rx) = oneshot::channel();
        let clock = WallClock::new();
        let random = match behaviour {
            Behaviour::Randomized { seed } => Some(random::Strategy::new(
                seed,
                setup.max_clock_skew,
                transport.clone(),
                clock,
            )),
            _ => None,
        };
        let actor = Actor {
            transport,
            keypair,
            behaviour,
            limits: setup.limits,
            clock,
            rng: ChaCha20Rng::seed_from_u64(setup.seed),
            session: None,
            early: Vec::new(),
            pool: Vec::new(),
            log: AdversaryLog::default(),
            announcement: None,
            random,
            max_skew_ms: u64::try_from(setup.max_clock_skew.as_millis()).unwrap_or(u64::MAX),
        };
        let task = tokio::spawn(actor.run(stop_rx, setup.announcement, setup.announce_to));
        Adversary {
            peer_id,
            keypair,
            stop,
            task,
        }
    }

    /// The adversary's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The adversary's signing key.
    pub fn public_key(&self) -> secp256k1::PublicKey {
        self.keypair.public_key()
    }

    /// Stops the adversary and returns what it did.
    pub async fn stop(self) -> AdversaryLog {
        // The task may have ended already (transport closed); its log is still returned.
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// Most envelopes kept before the announcement arrives, and in the replay pool.
const MAX_KEPT: usize = 256;

/// Tries per frame while the receiver's queue is full.
const SEND_ATTEMPTS: usize = 100;

/// Tries again after an unreachable peer ([`Behaviour::Honest`] only), the first after
/// [`UNREACHABLE_BACKOFF`], each wait twice the one before (about 2.5 s in all).
const UNREACHABLE_RETRIES: usize = 8;

/// The first wait before sending again to an unreachable peer.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(10);

/// How often (in frames) a flooding adversary yields, so the flood is sustained, not one burst.
const FLOOD_YIELD_EVERY: usize = 32;

/// The adversary's view of its session.
struct Session {
    ann: VerifiedAnnouncement,
    id: SessionId,
    me: SignerIndex,
    key_agg: KeyAggContext,
    peers: Vec<Option<PeerId>>,
    coordinator: SignerIndex,
    next_seq: SeqNo,
    secnonce: Option<SecNonce>,
    nonces: Vec<Option<PubNonceBytes>>,
    round2_done: bool,
    /// The current attempt (moved on by an honest signer's `Restart`, which only a
    /// [`Behaviour::Honest`] member follows).
    attempt: Attempt,
    /// Set when the adversary is the star coordinator.
    hub: Option<star::Hub>,
    /// A star member's aggregate nonce of the current attempt, as the coordinator sent it.
    star_agg: Option<AggNonceBytes>,
}

impl Session {
    fn others(&self) -> Vec<SignerIndex> {
        (0..self.peers.len())
            .filter_map(|i| SignerIndex::try_from(i).ok())
            .filter(|&i| i != self.me)
            .collect()
    }

    fn peers_of(&self, indices: &[SignerIndex]) -> Vec<PeerId> {
        indices
            .iter()
            .filter_map(|i| self.peers.get(i.as_usize()).copied().flatten())
            .collect()
    }

    /// Everyone in mesh, the coordinator in star.
    fn round_targets(&self) -> Vec<PeerId> {
        match self.ann.announcement().policy.topology {
            Topology::Mesh => self.peers_of(&self.others()),
            Topology::Star => self.peers_of(&[self.coordinator]),
        }
    }

    fn is_star(&self) -> bool {
        self.ann.announcement().policy.topology == Topology::Star
    }

    /// What a partial signature of ours names: the aggregate we were given, in star (ADR
    /// 0011); in mesh the sum of the nonces we hold, once we hold one of every signer (ADR
    /// 0023).
    fn aggregate_ref(&self) -> Option<AggregateRef> {
        let agg = if self.is_star() {
            self.star_agg?
        } else {
            let pubnonces: Option<Vec<PubNonce>> = self
                .nonces
                .iter()
                .map(|b| b.and_then(|b| PubNonce::from_bytes(&b.to_bytes()).ok()))
                .collect();
            AggNonceBytes::from(AggNonce::aggregate(&pubnonces?))
        };
        Some(Body::aggregate_ref(&self.id, self.attempt, &[agg]))
    }

    fn take_seq(&mut self) -> SeqNo {
        let seq = self.next_seq;
        self.next_seq = seq.next().unwrap_or(seq);
        seq
    }
}

struct Actor {
    transport: SharedTransport,
    keypair: Keypair,
    behaviour: Behaviour,
    limits: Limits,
    clock: WallClock,
    rng: ChaCha20Rng,
    session: Option<Session>,
    early: Vec<SignedEnvelope>,
    pool: Vec<SignedEnvelope>,
    log: AdversaryLog,
    /// The creator's signed announcement as received (what [`Behaviour::ForgeAnnouncement`]
    /// tampers with).
    announcement: Option<SignedAnnouncement>,
    /// The strategy of [`Behaviour::Randomized`].
    random: Option<random::Strategy>,
    /// The honest nodes' clock-skew bound, in milliseconds.
    max_skew_ms: u64,
}

impl Actor {
    async fn run(
        mut self,
        mut stop: oneshot::Receiver<()>,
        created: Option<SignedAnnouncement>,
        announce_to: Option<Vec<PeerId>>,
    ) -> AdversaryLog {
        if let Some(signed) = created {
            self.announce(signed, announce_to).await;
        }
        loop {
            tokio::select! {
                _ = &mut stop => break,
                inbound = self.transport.recv() => match inbound {
                    Ok(inbound) => self.on_frame(&inbound.frame).await,
                    Err(_) => break,
                },
            }
        }
        if let Some(random) = self.random.take() {
            self.log.mutations = random.finish();
        }
        self.log
    }

    /// As creator: sends our signed announcement to every other listed peer and takes part in
    /// the session.
    async fn announce(&mut self, signed: SignedAnnouncement, only: Option<Vec<PeerId>>) {
        let Ok(ann) = signed.verify(self.clock.now_ms(), &self.limits) else {
            return;
        };
        let me = self.transport.local_peer_id();
        let peers: Vec<PeerId> = signed
            .announcement()
            .signers
            .iter()
            .filter_map(|s| s.peer_id.as_ref())
            .filter_map(|p| PeerId::from_bytes(p.as_bytes()).ok())
            .filter(|p| *p != me)
            .filter(|p| only.as_ref().is_none_or(|only| only.contains(p)))
            .collect();
        let frame = signed.to_frame_bytes();
        self.announcement = Some(signed);
        self.send_all(&peers, &frame).await;
        self.start(ann).await;
    }

    async fn on_frame(&mut self, bytes: &[u8]) {
        let Ok(frame) = decode_frame(bytes, &self.limits) else {
            return;
        };
        match frame {
            Frame::Announcement(signed) => {
                if self.session.is_some() {
                    return;
                }
                let Ok(ann) = signed.verify(self.clock.now_ms(), &self.limits) else {
                    return;
                };
                if ann.index_of(&self.keypair.public_key()).is_some() {
                    self.announcement = Some(signed);
                    self.start(ann).await;
                }
            }
            Frame::Envelope(env) => self.on_envelope(env).await,
            Frame::Batch(envs) => {
                for env in envs {
                    self.on_envelope(env).await;
                }
            }
            // The end of a star session (ADR 0015): adversaries act on rounds, not on outcomes.
            Frame::Signatures(_) => {}
        }
    }

    async fn on_envelope(&mut self, env: SignedEnvelope) {
        let Some(s) = &self.session else {
            if self.early.len() < MAX_KEPT {
                self.early.push(env);
            }
            return;
        };
        let Ok(verified) = env.verify(&s.ann) else {
            return;
        };
        if verified.signer() == s.me {
            return;
        }
        self.log.envelopes_received += 1;
        if let Some(random) = &mut self.random {
            random.saw(&env);
        }
        let j = verified.signer().as_usize();
        match verified.body() {
            Body::Nonce {
                pub_nonces,
                attempt,
            } => {
                self.log.nonce_envelopes_received += 1;
                for n in pub_nonces {
                    self.record_nonce(j, *attempt, *n);
                }
            }
            Body::AggregateNonce {
                agg_nonces,
                attempt,
                ..
            } => {
                if let Some(s) = self.session.as_mut() {
                    if *attempt == s.attempt && s.hub.is_none() && s.star_agg.is_none() {
                        s.star_agg = agg_nonces.first().copied();
                    }
                }
            }
            Body::NonceSet { nonces, attempt } => {
                for sn in nonces {
                    for n in &sn.pub_nonces {
                        self.record_nonce(sn.signer.as_usize(), *attempt, *n);
                    }
                }
            }
            Body::PartialSig {
                partial_sigs,
                attempt,
                ..
            } => {
                for p in partial_sigs {
                    let bytes = p.to_bytes();
                    self.log
                        .partial_sigs_seen
                        .entry(j)
                        .or_default()
                        .insert(bytes);
                    self.log
                        .partial_sigs_by_attempt
                        .entry((j, attempt.get()))
                        .or_default()
                        .insert(bytes);
                }
            }
            Body::Restart { attempt } if self.behaviour == Behaviour::Honest && !self.is_hub() => {
                self.follow_restart(*attempt).await;
            }
            _ => {}
        }
        if self.is_hub() {
            self.hub_on(verified).await;
            return;
        }
        if self.behaviour == Behaviour::Replay {
            if self.pool.len() < MAX_KEPT {
                self.pool.push(env.clone());
            }
            let everyone = self.honest_peers();
            for _ in 0..2 {
                self.send_all(&everyone, &Frame::Envelope(env.clone()).encode())
                    .await;
            }
        }
        self.maybe_round2().await;
    }

    fn record_nonce(&mut self, j: usize, attempt: Attempt, nonce: PubNonceBytes) {
        let Some(s) = &mut self.session else { return };
        if j == s.me.as_usize() {
            return;
        }
        self.log
            .nonces_seen
            .entry(j)
            .or_default()
            .insert(nonce.to_bytes());
        self.log
            .nonces_by_attempt
            .entry((j, attempt.get()))
            .or_default()
            .insert(nonce.to_bytes());
        if attempt != s.attempt {
            return;
        }
        if let Some(slot @ None) = s.nonces.get_mut(j) {
            *slot = Some(nonce);
        }
    }

    /// An honest signer restarted into `attempt`: like the honest machine, drop everything of
    /// the old attempt (our secret nonce too) and run round 1 again with a fresh nonce.
    async fn follow_restart(&mut self, attempt: Attempt) {
        let Some(s) = &mut self.session else { return };
        if attempt <= s.attempt {
            return;
        }
        s.attempt = attempt;
        s.secnonce = None;
        s.nonces = vec![None; s.nonces.len()];
        s.star_agg = None;
        s.round2_done = false;
        let me = s.me.as_usize();
        let Some(nonce) = self.make_nonce(true) else {
            return;
        };
        let Some(s) = &mut self.session else { return };
        s.nonces[me] = Some(nonce);
        let (id, me, targets) = (s.id, s.me, s.round_targets());
        if s.ann.announcement().policy.nonce_commitment {
            let commitment = NonceCommitment::compute(&id, me, attempt, &[nonce]);
            if let Some(env) = self.own(Body::NonceCommit {
                attempt,
                commitment,
            }) {
                self.send_all(&targets, &env.to_frame_bytes()).await;
            }
        }
        let body = Body::Nonce {
            attempt,
            pub_nonces: vec![nonce],
        };
        if let Some(env) = self.own(body) {
            self.send_all(&targets, &env.to_frame_bytes()).await;
        }
    }

    fn honest_peers(&self) -> Vec<PeerId> {
        let me = self.transport.local_peer_id();
        self.session
            .as_ref()
            .map(|s| s.peers_of(&s.others()))
            .unwrap_or_default()
            .into_iter()
            .filter(|p| *p != me)
            .collect()
    }

    async fn start(&mut self, ann: VerifiedAnnouncement) {
        let Some(me) = ann.index_of(&self.keypair.public_key()) else {
            return;
        };
        // The honest machine derives the session's values (aggregate key with tweaks, peers,
        // elected coordinator); the adversary sends nothing through it.
        let Ok(view) = musig2_coordinator::SessionMachine::new(
            ann.clone(),
            self.keypair,
            self.transport.local_peer_id(),
            &musig2_coordinator::Config::default(),
            self.clock.now_ms(),
        ) else {
            return;
        };
        let keys = ann.signer_keys();
        let peers: Vec<Option<PeerId>> = (0..keys.len())
            .map(|i| SignerIndex::try_from(i).ok().and_then(|i| view.peer_of(i)))
            .collect();
        // The adversary signs the first message only (scenarios are single-message).
        let key_agg = view.key_aggs()[0].clone();
        let coordinator = view.coordinator();
        let n = keys.len();
        let is_hub = ann.announcement().policy.topology == Topology::Star && coordinator == me;
        let id = ann.session_id();
        self.log.session = Some(id);
        self.session = Some(Session {
            coordinator,
            id,
            me,
            key_agg,
            peers,
            next_seq: SeqNo::FIRST,
            secnonce: None,
            nonces: vec![None; n],
            round2_done: false,
            attempt: Attempt::FIRST,
            hub: is_hub.then(|| star::Hub::new(n)),
            star_agg: None,
            ann,
        });
        self.pre_join().await;
        self.join_and_round1().await;
        for env in std::mem::take(&mut self.early) {
            self.on_envelope(env).await;
        }
        self.maybe_round2().await;
    }

    /// Signs an envelope as ourselves, with the next sequence number.
    fn own(&mut self, body: Body) -> Option<SignedEnvelope> {
        let now = self.clock.now_ms();
        let s = self.session.as_mut()?;
        let seq = s.take_seq();
        let env = Envelope::sign(s.id, s.me, seq, now, body, &self.keypair);
        if self.behaviour == Behaviour::Replay && self.pool.len() < MAX_KEPT {
            self.pool.push(env.clone());
        }
        Some(env)
    }

    /// Our next envelope, under a signature that does not verify: made with a throwaway key.
    fn badly_signed(&mut self, body: Body) -> Option<SignedEnvelope> {
        let now = self.clock.now_ms();
        let s = self.session.as_mut()?;
        let (id, me, seq) = (s.id, s.me, s.take_seq());
        let throwaway = Keypair::new(&mut ChaCha20Rng::seed_from_u64(
            0xBAD5_1600 ^ u64::from(me.get()),
        ));
        Some(Envelope::sign(id, me, seq, now, body, &throwaway))
    }

    /// Signs an envelope with our key that claims to come from `claimed`.
    fn forge(&mut self, claimed: SignerIndex, seq: u64, body: Body) -> Option<SignedEnvelope> {
        let s = self.session.as_ref()?;
        let seq = SeqNo::new(seq).ok()?;
        Some(Envelope::sign(
            s.id,
            claimed,
            seq,
            self.clock.now_ms(),
            body,
            &self.keypair,
        ))
    }

    fn join_body(&self) -> Option<Body> {
        let peer_id = PeerIdBytes::new(self.transport.local_peer_id().to_bytes()).ok()?;
        Some(Body::Join { peer_id })
    }

    /// Whatever the behaviour sends before the protocol proper.
    async fn pre_join(&mut self) {
        let everyone = self.honest_peers();
        match self.behaviour {
            Behaviour::MalformedFrames => {
                for frame in self.malformed_frames() {
                    self.send_all(&everyone, &frame).await;
                }
            }
            Behaviour::Flood { frames } => self.flood(&everyone, frames).await,
            Behaviour::ForgeAnnouncement => self.forge_announcements(&everyone).await,
            Behaviour::Impersonate { victim } => {
                let me = self.transport.local_peer_id().to_bytes();
                let forged = [
                    PeerIdBytes::new(me)
                        .ok()
                        .map(|peer_id| Body::Join { peer_id }),
                    Some(Body::Abort {
                        reason: AbortReason::InvalidPartialSig,
                        blamed: Some(victim),
                    }),
                ];
                for (seq, body) in (1..).zip(forged.into_iter().flatten()) {
                    self.send_forged(victim, seq, body).await;
                }
            }
            _ => {}
        }
    }

    async fn send_forged(&mut self, victim: SignerIndex, seq: u64, body: Body) {
        let Some(env) = self.forge(victim, seq, body) else {
            return;
        };
        let everyone = self.honest_peers();
        self.log.forged += everyone.len();
        self.send_all(&everyone, &env.to_frame_bytes()).await;
    }

    async fn join_and_round1(&mut self) {
        if self.behaviour == Behaviour::Silent {
            return;
        }
        let everyone = self.honest_peers();
        if let Some(join) = self.join_body().and_then(|b| self.own(b)) {
            self.send_all(&everyone, &join.to_frame_bytes()).await;
        }
        let Some(nonce_a) = self.make_nonce(true) else {
            return;
        };
        let Some(s) = &self.session else { return };
        let (id, me, attempt) = (s.id, s.me, s.attempt);
        let targets = s.round_targets();
        let commit_round = s.ann.announcement().policy.nonce_commitment;
        if let Some(slot) = self
            .session
            .as_mut()
            .and_then(|s| s.nonces.get_mut(me.as_usize()))
        {
            *slot = Some(nonce_a);
        }
        if self.is_hub() {
            self.hub_round1(nonce_a).await;
            return;
        }
        if self.behaviour == Behaviour::WithholdCommitment {
            return;
        }
        if self.scripted_round1(nonce_a).await {
            return;
        }
        if commit_round {
            let commitment = NonceCommitment::compute(&id, me, attempt, &[nonce_a]);
            let body = Body::NonceCommit {
                attempt,
                commitment,
            };
            if let Some(env) = self.own(body) {
                self.send_all(&targets, &env.to_frame_bytes()).await;
            }
        }
        let nonce_body = |pub_nonce| Body::Nonce {
            attempt,
            pub_nonces: vec![pub_nonce],
        };
        match self.behaviour {
            Behaviour::WithholdNonce => {}
            Behaviour::InvalidNonce => {
                if let Some(env) = self.own(nonce_body(nonce_a)) {
                    let frame = corrupt_nonce(&env.to_frame_bytes(), &nonce_a);
                    self.send_all(&targets, &frame).await;
                }
            }
            Behaviour::CommitmentMismatch => {
                if let Some(b) = self.make_nonce(false) {
                    if let Some(env) = self.own(nonce_body(b)) {
                        self.send_all(&targets, &env.to_frame_bytes()).await;
                    }
                }
            }
            Behaviour::Equivocate => {
                let Some(b) = self.make_nonce(false) else {
                    return;
                };
                let Some(s) = self.session.as_mut() else {
                    return;
                };
                let seq = s.take_seq();
                let now = self.clock.now_ms();
                // A star member's only target (the coordinator) gets both.
                let (first, second) = match targets.len() {
                    1 => (&targets[..], &targets[..]),
                    len => targets.split_at(len / 2),
                };
                for (nonce, peers) in [(nonce_a, first), (b, second)] {
                    let env = Envelope::sign(id, me, seq, now, nonce_body(nonce), &self.keypair);
                    self.send_all(peers, &env.to_frame_bytes()).await;
                }
            }
            _ => {
                if let Some(env) = self.own(nonce_body(nonce_a)) {
                    self.send_all(&targets, &env.to_frame_bytes()).await;
                }
            }
        }
        if let Behaviour::FalseAbort { accuse } = self.behaviour {
            let body = Body::Abort {
                reason: AbortReason::InvalidPartialSig,
                blamed: Some(accuse),
            };
            if let Some(env) = self.own(body) {
                self.send_all(&everyone, &env.to_frame_bytes()).await;
            }
        }
        if let Behaviour::Impersonate { victim } = self.behaviour {
            if let Some(forged) = self.make_nonce(false) {
                self.send_forged(victim, 3, nonce_body(forged)).await;
            }
        }
    }

    /// Makes a fresh nonce pair; keeps the secret nonce when `keep` (the nonce we sign with).
    fn make_nonce(&mut self, keep: bool) -> Option<PubNonceBytes> {
        let s = self.session.as_mut()?;
        let sk = self.keypair.secret_key();
        let (sec, public) = NonceGen::new(self.keypair.public_key())
            .secret_key(&sk)
            .key_agg(&s.key_agg)
            .message(&s.ann.announcement().messages[0].message)
            .generate(&mut self.rng)
            .ok()?;
        if keep {
            s.secnonce = Some(sec);
        }
        PubNonceBytes::from_bytes(public.to_bytes()).ok()
    }

    /// Round 2, once every nonce is known.
    async fn maybe_round2(&mut self) {
        let withhold = self.withholds_partial_sig();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        // A star member signs under the aggregate it is given; it never sees the others'
        // nonces unless the session fails (ADR 0011).
        let ready = if s.is_star() {
            s.star_agg.is_some() && s.nonces[s.me.as_usize()].is_some()
        } else {
            s.nonces.iter().all(Option::is_some)
        };
        if s.round2_done || s.hub.is_some() || !ready {
            return;
        }
        s.round2_done = true;
        let honest_psig = matches!(
            self.behaviour,
            Behaviour::Honest
                | Behaviour::Replay
                | Behaviour::Impersonate { .. }
                | Behaviour::MalformedFrames
                | Behaviour::Flood { .. }
                | Behaviour::ForgeAnnouncement
                | Behaviour::Randomized { .. }
                | Behaviour::SkewEdgeEquivocation { .. }
                | Behaviour::ReuseSeqForCommitment { .. }
                | Behaviour::CommitmentToAllBut { .. }
                | Behaviour::NonceToAllBut { .. }
                | Behaviour::PartialSigUnderOtherAggregate
                | Behaviour::EquivocateBeforeJoin { .. }
                | Behaviour::EquivocatePartialSig
                | Behaviour::NearDeadline { .. }
                | Behaviour::BadlySignedPartialSig { valid: true }
        ) && !withhold;
        let psig = if honest_psig {
            let pubnonces: Option<Vec<PubNonce>> = s
                .nonces
                .iter()
                .flatten()
                .map(|b| PubNonce::from_bytes(&b.to_bytes()).ok())
                .collect();
            let agg = match s.star_agg.filter(|_| s.is_star()) {
                Some(agg) => Some(agg.to_core()),
                None => Some(AggNonce::aggregate(&pubnonces.unwrap_or_default())),
            };
            let Some(agg) = agg else { return };
            let context =
                SessionContext::new(&s.key_agg, &agg, &s.ann.announcement().messages[0].message);
            let Some(sec) = s.secnonce.take() else { return };
            context
                .sign(sec, &self.keypair)
                .ok()
                .and_then(|p| PartialSigBytes::from_bytes(p.to_bytes()).ok())
        } else if matches!(
            self.behaviour,
            Behaviour::InvalidPartialSig | Behaviour::BadlySignedPartialSig { valid: false }
        ) {
            // The scalar 1: well-formed, and (overwhelmingly likely) not our partial signature.
            let mut one = [0u8; 32];
            one[31] = 1;
            PartialSigBytes::from_bytes(one).ok()
        } else {
            None
        };
        let Some(partial_sig) = psig else { return };
        let targets = s.round_targets();
        let attempt = s.attempt;
        let aggregate = if self.behaviour == Behaviour::PartialSigUnderOtherAggregate {
            Some(AggregateRef([0xAB; 32]))
        } else {
            s.aggregate_ref()
        };
        if let Behaviour::Impersonate { victim } = self.behaviour {
            let mut junk = [0u8; 32];
            junk[31] = 7;
            if let Ok(forged) = PartialSigBytes::from_bytes(junk) {
                let body = Body::PartialSig {
                    attempt,
                    partial_sigs: vec![forged],
                    aggregate,
                };
                self.send_forged(victim, 4, body).await;
            }
        }
        if self.bent_partial_sig(partial_sig, &targets, attempt).await {
            return;
        }
        let body = Body::PartialSig {
            attempt,
            partial_sigs: vec![partial_sig],
            aggregate,
        };
        let env = if let Behaviour::BadlySignedPartialSig { .. } = self.behaviour {
            self.badly_signed(body)
        } else {
            self.own(body)
        };
        if let Some(env) = env {
            self.log.sent_partial_sig = true;
            self.send_all(&targets, &env.to_frame_bytes()).await;
        }
        if self.behaviour == Behaviour::Replay {
            let everyone = self.honest_peers();
            for env in self.pool.clone() {
                self.send_all(&everyone, &env.to_frame_bytes()).await;
            }
        }
    }

    /// Sends `frame` to every peer, retrying while the peer's queue is full or the network
    /// dropped the frame (the adversary wants its protocol messages to arrive even when it
    /// floods or links are lossy).
    async fn send_all(&mut self, peers: &[PeerId], frame: &[u8]) {
        if self.random.is_some() {
            self.random_send(peers, frame).await;
        } else {
            self.send_now(peers, frame).await;
        }
    }

    /// [`Actor::send_all`] without the randomized strategy.
    async fn send_now(&mut self, peers: &[PeerId], frame: &[u8]) {
        let frame = Bytes::copy_from_slice(frame);
        for peer in peers {
            self.log.frames_sent += 1;
            for attempt in 0..SEND_ATTEMPTS {
                match self.transport.send(*peer, frame.clone()).await {
                    Ok(()) => {
                        self.log.frames_delivered += 1;
                        break;
                    }
                    Err(TransportError::Timeout { .. }) if attempt + 1 < SEND_ATTEMPTS => {
                        self.log.dropped_sends += 1;
                    }
                    Err(TransportError::Backpressure(_)) if attempt + 1 < SEND_ATTEMPTS => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    // A peer that crashed (or whose frame was lost in flight when it did) comes
                    // back on the same peer id: an honest signer tries again for a while, as
                    // the honest nodes' retries do.
                    Err(TransportError::Unreachable { .. })
                        if self.behaviour == Behaviour::Honest && attempt < UNREACHABLE_RETRIES =>
                    {
                        tokio::time::sleep(UNREACHABLE_BACKOFF * (1 << attempt)).await;
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "adversary send failed");
                        *self.log.send_errors.entry(error_kind(&e)).or_default() += 1;
                        break;
                    }
                }
            }
        }
    }

    async fn flood(&mut self, peers: &[PeerId], frames: usize) {
        let stats = flood_junk(self.transport.as_ref(), peers, frames, self.rng.next_u64()).await;
        self.log.frames_sent += stats.sent;
        self.log.frames_delivered += stats.delivered;
    }

    /// Frames every decoder must reject without harm.
    fn malformed_frames(&mut self) -> Vec<Vec<u8>> {
        let Some(valid) = self.join_body().and_then(|b| self.forge_own_without_seq(b)) else {
            return Vec::new();
        };
        let bytes = valid.to_frame_bytes();
        let mut random = vec![0u8; 200];
        self.rng.fill_bytes(&mut random);
        let mut trailing = bytes.clone();
        trailing.push(0);
        let mut version = bytes.clone();
        if let Some(v) = version.get_mut(1) {
            *v = v.wrapping_add(1);
        }
        let mut oversized = vec![1u8; self.limits.max_frame_bytes + 1];
        oversized[1] = musig2_proto::PROTOCOL_VERSION;
        let long_batch =
            Frame::encode_batch(&vec![valid.clone(); self.limits.max_batch_entries + 1]);
        let mut bad_sig = bytes.clone();
        if let Some(last) = bad_sig.last_mut() {
            *last ^= 1;
        }
        let beyond_transport = vec![0u8; self.transport.max_frame_size() + 1];
        vec![
            Vec::new(),
            random,
            bytes[..bytes.len() - 1].to_vec(),
            trailing,
            version,
            oversized,
            long_batch,
            bad_sig,
            beyond_transport,
        ]
    }

    /// A valid envelope of ours that does not consume a sequence number (sequence number 1,
    /// which the real join reuses: the copies here never verify or never decode).
    fn forge_own_without_seq(&mut self, body: Body) -> Option<SignedEnvelope> {
        let me = self.session.as_ref()?.me;
        self.forge(me, 1, body)
    }
}

/// A copy of `frame` with the first byte of `nonce` (a point's parity byte) set to an invalid
/// value, so the frame no longer decodes.
fn corrupt_nonce(frame: &[u8], nonce: &PubNonceBytes) -> Vec<u8> {
    let needle = nonce.as_bytes();
    let mut out = frame.to_vec();
    if let Some(pos) = out.windows(needle.len()).position(|w| w == needle) {
        out[pos] = 0x05;
    }
    out
}

fn error_kind(e: &TransportError) -> &'static str {
    match e {
        TransportError::Backpressure(_) => "backpressure",
        TransportError::FrameTooLarge { .. } => "frame too large",
        TransportError::Unreachable { .. } => "unreachable",
        TransportError::Closed => "closed",
        _ => "other",
    }
}

/// What a flood achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FloodStats {
    /// Frames sent.
    pub sent: usize,
    /// Frames the transport delivered into a peer's inbound queue.
    pub delivered: usize,
}

/// Sends `frames` random junk frames (1 to 512 bytes, drawn from `seed`) to each of `peers`,
/// without retries, yielding now and then so the flood is sustained rather than one burst.
pub async fn flood_junk(
    transport: &dyn Transport,
    peers: &[PeerId],
    frames: usize,
    seed: u64,
) -> FloodStats {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut stats = FloodStats::default();
    for i in 0..frames {
        let mut junk = vec![0u8; 1 + (rng.next_u32() % 512) as usize];
        rng.fill_bytes(&mut junk);
        let junk = Bytes::from(junk);
        for peer in peers {
            stats.sent += 1;
            if transport.send(*peer, junk.clone()).await.is_ok() {
                stats.delivered += 1;
            }
        }
        if i % FLOOD_YIELD_EVERY == 0 {
            tokio::task::yield_now().await;
        }
    }
    stats
}
