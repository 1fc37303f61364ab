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
use std::sync::Arc;

use musig2_core::{
    AggNonce, KeyAggContext, NonceGen, PartialSignature, PubNonce, SecNonce, SessionContext,
};
use musig2_proto::{
    AbortReason, AggNonceBytes, AggregateRef, Attempt, Body, Envelope, FinalSignatures,
    NonceCommitment, NonceSetDigest, PartialSigBytes, PeerIdBytes, PubNonceBytes, SeqNo, SessionId,
    Signature64, SignedEnvelope, SignerIndex, Topology, VerifiedAnnouncement, VerifiedEnvelope,
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

/// Oldest a nonce envelope made with our commitment may be and still be the reveal (ADR 0020):
/// its timestamp is the commitment's, and this is about what a network delay adds anyway. An
/// older one (e.g. after a long join window) is signed again.
const NONCE_AHEAD_MAX_AGE_MS: u64 = 1_000;

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
    /// Sign these envelopes with the step's others (ADR 0016), and neither send nor store them:
    /// the machine made them ahead of the step that sends them (ADR 0020). A runtime that does
    /// not batch can ignore this: an envelope still unsigned when it is sent is signed alone.
    Seal(Vec<SignedEnvelope>),
    /// Send a session's final signatures to `to`, unsigned, in a frame of their own (ADR 0015).
    SendFinalSignatures {
        /// Destination peer.
        to: PeerId,
        /// The signatures, which verify on their own.
        signatures: FinalSignatures,
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
    /// Joins received (ours included). A star member holds only its own and, at times, the
    /// coordinator's; a star creator also those of signers it did not list (ADR 0019).
    pub joined: usize,
    /// Whether every signer has surely joined: this node holds every join, or the session
    /// signed.
    pub all_joined: bool,
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

/// What a machine holds of one signer's contribution: the value and the envelope that carried
/// it. Boxed: an empty slot is 8 bytes where an envelope inline is 216, and a star member fills
/// two slots of n, so a machine does not allocate and clear n-sized arrays of envelopes (64 KB
/// at n = 50).
pub(super) type Held<T> = Option<Box<(T, SignedEnvelope)>>;

fn place<T: PartialEq>(slot: &mut Held<T>, value: T, extra: SignedEnvelope) -> Slot {
    match slot {
        None => {
            *slot = Some(Box::new((value, extra)));
            Slot::New
        }
        Some(old) if old.0 == value => Slot::Same,
        Some(_) => Slot::Conflict,
    }
}

/// One signer's state machine for one session.
pub struct SessionMachine {
    ann: VerifiedAnnouncement,
    id: SessionId,
    me: SignerIndex,
    keypair: Arc<Keypair>,
    /// Whether our envelopes may be signed in batches (ADR 0016; see
    /// [`VerifiedAnnouncement::fits_batch_auth`]).
    batch_auth: bool,
    /// One key-aggregation context per message (each with that message's tweaks); dropped
    /// when a finished session is shed.
    key_aggs: Vec<KeyAggContext>,
    n: usize,
    topology: Topology,
    commit_round: bool,
    coordinator: SignerIndex,
    /// The election order: position 0 coordinates first, the rest take over in turn.
    order: Vec<SignerIndex>,
    /// The current coordinator's position in `order`.
    rank: u16,
    /// The last position the coordinator role may reach (the announcement's `max_failovers`).
    max_rank: u16,
    /// Whether a failover claim set the current attempt's coordinator (else it carried over
    /// from the attempt before, e.g. through a restart).
    rank_claimed: bool,
    /// Star: when the current aggregator's deadline for what we wait for passes on our clock.
    aggregator_deadline_ms: Option<u64>,
    /// Star: when the aggregator gives up waiting (for claims, then for members).
    aggregator_gives_up_ms: u64,
    /// The earliest time (our clock) an honest signer can claim the next attempt.
    earliest_claim_ms: u64,
    /// The lowest-ranked valid claim of the next attempt, waiting for our own deadline.
    pending_claim: Option<Box<PendingClaim>>,
    /// Rebuilt from the store and still in the attempt it was restored in.
    restored: bool,
    /// Whether a failover claim has been made or seen (signers may then be an attempt apart).
    claim_seen: bool,
    /// The signed restart and claims that made the current attempt and its coordinator, shown
    /// to a signer still in an earlier attempt so it can catch up.
    attempt_start: Vec<SignedEnvelope>,
    broadcast_ms: u64,
    /// After the signature: whose turn it is to act on it, and whether someone confirmed.
    broadcast: Option<Broadcast>,
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
    joins: Vec<Held<PeerId>>,
    /// Signers we have sent our own join to.
    join_sent: Vec<bool>,
    commits: Vec<Held<NonceCommitment>>,
    /// Per signer, its public nonces (one per message).
    nonces: Vec<Held<Vec<PubNonceBytes>>>,
    /// Verified nonce envelopes, kept by the star coordinator to build the aggregate message.
    verified_nonces: Vec<Option<Box<VerifiedEnvelope>>>,
    /// Per signer, its partial signatures (one per message).
    psigs: Vec<Held<Vec<PartialSigBytes>>>,
    aggnonce_received: bool,
    nonces_announced: bool,
    psigs_announced: bool,

    /// Our secret nonces of the current attempt, one per message (empty once used or dropped;
    /// dropping erases them).
    secnonces: Vec<SecNonce>,
    my_nonces: Option<Vec<PubNonceBytes>>,
    /// Our nonce envelope of the current attempt, made with our commitment so that both share a
    /// batch signature (ADR 0020); held back, neither sent nor stored, until the reveal.
    nonce_ahead: Option<SignedEnvelope>,
    /// The signing contexts of the current attempt, one per message.
    contexts: Option<Vec<SessionContext>>,
    /// The final signatures, one per message.
    signatures: Option<Vec<schnorr::Signature>>,
    /// Why the session aborted, whom it blamed and who decided, once it has.
    aborted: Option<(AbortReason, Vec<SignerIndex>, AbortOrigin)>,

    replay: Vec<ReplayWindow>,
    /// Per signer, the envelopes verified (or, for us, sent) in the replay window: sequence
    /// number → (signing hash, signature). The same number under another hash is equivocation;
    /// under the same signature it is an exact replay, dropped before any verification.
    seen: Vec<SeenWindow>,
    // The envelopes below are held in some roles or on failure only: boxed, an unset one is 8
    // bytes where inline it is 216, in every machine (an idle session holds two).
    /// The star coordinator's verified AggregateNonce envelope (members): once checked, which
    /// ADR 0026 defers until it is evidence (`aggnonce_unchecked` until then).
    aggnonce_env: Option<Box<SignedEnvelope>>,
    /// Star: the aggregate nonces we sign under in this attempt (received as a member, computed
    /// as the coordinator), with the nonce set they commit to (ADR 0011).
    star_aggregate: Option<StarAggregate>,
    /// Star member: the coordinator's revealed nonce set of this attempt (evidence, on failure).
    nonce_set_env: Option<Box<SignedEnvelope>>,
    /// The AggregateNonce envelope we sent (star coordinator), to send again when asked.
    aggnonce_sent: Option<Box<SignedEnvelope>>,
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
    final_env: Option<Box<SignedEnvelope>>,
    /// Per signer, answers sent about the finished session.
    answered: Vec<u8>,
    /// Verified contributions of the next attempt that arrived before its restart.
    next_attempt: Vec<VerifiedEnvelope>,
    /// Once shed, in place of `peers` when the announcement lists most of them: the bound peers
    /// it does not list (ours, or an unlisted signer's from its join), by signer index; the
    /// others are read from the announcement.
    peers_off_list: Option<Vec<(SignerIndex, PeerId)>>,
    /// Star member: the coordinator's commitment taken as the reveal signal before its
    /// signature was checked (ADR 0021), with the peer that delivered it and when.
    reveal_signal: Option<Box<(PeerId, SignedEnvelope, u64)>>,
    /// Star member: the coordinator's aggregate nonce taken from its peer and signed under
    /// before its signature was checked (ADR 0026), with the peer that delivered it and when.
    /// Checked once it becomes evidence; then it is `aggnonce_env`.
    aggnonce_unchecked: Option<Box<(PeerId, SignedEnvelope, u64)>>,
    /// Per signer, in the current attempt: whether its partial signature in `psigs` came from
    /// its own peer and was placed before its signature was checked, which is done once it
    /// becomes evidence (ADR 0022), or whether one already failed that check.
    psig_unchecked: Vec<DeferredCheck>,
    /// Mesh: the aggregate nonces we sign under in this attempt, as our partial signatures
    /// name them (ADR 0023).
    mesh_aggregate: Option<AggregateRef>,
    /// Mesh, per signer, in the current attempt: which of our sets we sent it, which of its
    /// we asked for (each at most once) and which it showed it holds (`sets::flag`; ADR 0023).
    set_flags: Vec<u8>,
    /// Mesh: when a set some signer showed it holds, and we lack, is asked for (ADR 0023).
    asks: Asks,
    /// Set once a finished session dropped what only a running one needs ([`Self::shed`]):
    /// its contribution counts, for [`Self::health`].
    shed: Option<ShedCounts>,
}

/// A contribution's signature check, when it was put off until the contribution is evidence
/// (ADR 0022).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeferredCheck {
    /// Nothing put off: the slot is empty or was checked.
    None,
    /// The slot holds a contribution whose signature is not checked yet.
    Pending,
    /// One failed its check in this attempt: the signer's next is checked on arrival, so a
    /// signer cannot make us aggregate and search for culprits again and again.
    Failed,
}

/// The contribution counts of a finished session, kept when its slots are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ShedCounts {
    commitments: usize,
    nonces: usize,
    partial_signatures: usize,
}

/// A star attempt's aggregate nonces and what they commit to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StarAggregate {
    agg_nonces: Vec<AggNonceBytes>,
    nonce_set: NonceSetDigest,
    /// What our partial signature names ([`Body::aggregate_ref`]).
    reference: AggregateRef,
}

#[derive(Debug, Clone, Copy)]
struct SeenEnvelope {
    hash: [u8; 32],
    /// The signature that authenticated it; `None` for our own (signed later, ADR 0016: a copy
    /// of ours is known by its hash).
    signature: Option<[u8; 64]>,
    /// Whether that signature covers this envelope alone; a batch signature covers several, so
    /// an exact copy must also have the same hash.
    direct: bool,
}

/// One signer's envelopes in the replay window by sequence number, ascending. A sorted vector:
/// a window holds a few entries (at most `replay_window` + 1), and a `BTreeMap` allocates a
/// 1.2 KB node for its first one, in every machine for every signer heard from.
#[derive(Debug, Clone, Default)]
struct SeenWindow(Vec<(u64, SeenEnvelope)>);

impl SeenWindow {
    fn get(&self, seq: u64) -> Option<&SeenEnvelope> {
        let i = self.0.binary_search_by_key(&seq, |(k, _)| *k).ok()?;
        Some(&self.0[i].1)
    }

    /// Records `seen` under `seq` (in place of what was there), then forgets the entries more
    /// than `window` below the highest.
    fn insert(&mut self, seq: u64, seen: SeenEnvelope, window: u64) {
        match self.0.binary_search_by_key(&seq, |(k, _)| *k) {
            Ok(i) => self.0[i].1 = seen,
            Err(i) => self.0.insert(i, (seq, seen)),
        }
        let highest = self.0.last().map_or(0, |(k, _)| *k);
        let floor = highest.saturating_sub(window);
        let below = self.0.partition_point(|(k, _)| *k < floor);
        self.0.drain(..below);
    }
}

impl SeenEnvelope {
    /// Whether `envelope` is exactly this one (same content and authentication, or our own
    /// content), checked without verifying anything.
    fn is_copy(&self, envelope: &SignedEnvelope) -> bool {
        match self.signature {
            None => self.hash == envelope.signing_hash(),
            Some(signature) => {
                let auth = envelope.auth();
                *auth.signature() == signature
                    && (self.direct && auth.is_direct() || self.hash == envelope.signing_hash())
            }
        }
    }
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
        let base = match untweaked {
            Some(ctx)
                if ctx.pubkeys() == keys.as_slice()
                    && ctx.aggregate_key() == ctx.untweaked_key() =>
            {
                ctx.clone()
            }
            _ => KeyAggContext::new(&keys)?,
        };
        let key_aggs = a
            .messages
            .iter()
            .map(|m| Ok(base.clone().with_tweaks(&message_tweaks(m)?)?))
            .collect::<Result<Vec<_>>>()?;
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
        let max_rank = a
            .policy
            .max_failovers
            .min(u16::try_from(n.saturating_sub(1)).unwrap_or(u16::MAX));
        let join_end = a.created_at_ms.saturating_add(a.policy.timeouts.join_ms);
        let max_skew_ms = u64::try_from(config.max_clock_skew.as_millis()).unwrap_or(u64::MAX);
        let session_deadline_ms = a.expires_at_ms.min(
            a.created_at_ms
                .saturating_add(a.policy.timeouts.join_ms)
                .saturating_add(a.policy.timeouts.session_ms),
        );
        let batch_auth = ann.fits_batch_auth(config.limits.max_frame_bytes);
        Ok(SessionMachine {
            id,
            me,
            keypair: Arc::new(keypair),
            batch_auth,
            key_aggs,
            n,
            topology: a.policy.topology,
            commit_round: a.policy.nonce_commitment,
            coordinator,
            order,
            rank: 0,
            max_rank,
            rank_claimed: false,
            aggregator_deadline_ms: None,
            aggregator_gives_up_ms: 0,
            // The first round starts no earlier than `nonce_ms` before the join window ends, so
            // an honest claim (one round timeout later) comes no earlier than the window's end.
            earliest_claim_ms: join_end.saturating_sub(max_skew_ms),
            pending_claim: None,
            restored: false,
            claim_seen: false,
            attempt_start: Vec::new(),
            broadcast_ms: a.policy.timeouts.broadcast_ms,
            broadcast: None,
            nonce_timeout_ms: a.policy.timeouts.nonce_ms,
            partial_sig_timeout_ms: a.policy.timeouts.partial_sig_ms,
            max_skew_ms,
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
            secnonces: Vec::new(),
            my_nonces: None,
            nonce_ahead: None,
            contexts: None,
            signatures: None,
            aborted: None,
            replay: vec![ReplayWindow::new(config.replay_window, config.max_seq_gap); n],
            seen: vec![SeenWindow::default(); n],
            aggnonce_env: None,
            star_aggregate: None,
            nonce_set_env: None,
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
            reveal_signal: None,
            aggnonce_unchecked: None,
            psig_unchecked: vec![DeferredCheck::None; n],
            mesh_aggregate: None,
            set_flags: if a.policy.topology == Topology::Mesh {
                vec![0; n]
            } else {
                Vec::new()
            },
            asks: Asks::Idle,
            peers_off_list: None,
            shed: None,
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

    /// The key-aggregation contexts, one per message (aggregate key after its tweaks).
    ///
    /// Empty once the session is finished and shed ([`Self::shed`]).
    pub fn key_aggs(&self) -> &[KeyAggContext] {
        &self.key_aggs
    }

    /// The final signatures, one per message, once the session is done.
    pub fn signatures(&self) -> Option<&[schnorr::Signature]> {
        self.signatures.as_deref()
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
        self.secnonces.clear();
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
        self.window_of(header.signer)
            .and_then(|w| self.seen.get(w))
            .and_then(|m| m.get(header.seq.get()))
            .is_some_and(|s| s.direct && s.signature == Some(header.signature))
            || self
                .aggnonce_unchecked
                .as_deref()
                .is_some_and(|(_, held, _)| {
                    let (e, auth) = (held.envelope(), held.auth());
                    e.signer() == header.signer
                        && e.seq() == header.seq
                        && auth.is_direct()
                        && *auth.signature() == header.signature
                })
    }

    /// Where `signer`'s replay and contradiction windows are: at its index while the session
    /// runs; once it is shed (`shed`), only the signers whose broadcast turn can come keep
    /// one, at their position in the election order.
    pub(super) fn window_of(&self, signer: SignerIndex) -> Option<usize> {
        if self.shed.is_none() {
            return Some(signer.as_usize());
        }
        self.position_of(signer)
            .filter(|&p| p <= self.max_rank)
            .map(usize::from)
    }

    /// Our own signed join, once we have joined.
    fn own_join(&self) -> Option<&SignedEnvelope> {
        self.joins[self.me.as_usize()].as_deref().map(|(_, e)| e)
    }

    /// The peer bound to signer `index`, if known.
    pub fn peer_of(&self, index: SignerIndex) -> Option<PeerId> {
        match &self.peers_off_list {
            None => self.peers.get(index.as_usize()).copied().flatten(),
            Some(off) => match off.binary_search_by_key(&index, |(s, _)| *s) {
                Ok(k) => Some(off[k].1),
                Err(_) => self.listed_peer(index),
            },
        }
    }

    /// The signer bound to `peer`, if any.
    pub fn signer_of(&self, peer: &PeerId) -> Option<SignerIndex> {
        let found = match &self.peers_off_list {
            None => self.peers.iter().position(|p| p.as_ref() == Some(peer)),
            Some(off) => {
                let encoded = peer.to_bytes();
                let signers = &self.ann.announcement().signers;
                (0..self.n).find(|&i| {
                    let index = SignerIndex::try_from(i).ok();
                    match off.binary_search_by_key(&index, |(s, _)| Some(*s)) {
                        Ok(k) => off[k].1 == *peer,
                        Err(_) => signers
                            .get(i)
                            .and_then(|s| s.peer_id.as_ref())
                            .is_some_and(|b| b.as_bytes() == encoded.as_slice()),
                    }
                })
            }
        };
        found.and_then(|i| SignerIndex::try_from(i).ok())
    }

    /// When [`SessionMachine::tick`] must next be called.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.phase.is_terminal() {
            return self.broadcast_deadline();
        }
        let round = match self.phase_deadline_ms {
            Some(d) => d.min(self.session_deadline_ms),
            None => self.session_deadline_ms,
        };
        let round = match self.asks {
            Asks::Armed(at_ms) => round.min(at_ms),
            _ => round,
        };
        Some(match &self.pending_claim {
            Some(claim) => round.min(claim.accept_at_ms),
            None => round,
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
            // A star member is told to reveal by the coordinator's own commitment, sent once all
            // are in (ADR 0011): if it does not come, the coordinator is who it waits for.
            Phase::NonceCommit if star_member => {
                if self.commits[self.coordinator.as_usize()].is_some()
                    || self.reveal_signal.is_some()
                {
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

    /// Whether every signer has surely joined: this node holds every join, or the session
    /// signed (a valid signature needs every signer's partial signature). A star member holds
    /// few joins (ADR 0019), and takes no one's word for the others': a lying coordinator could
    /// claim all are in to keep the creator from storing the announcement in the DHT for a
    /// signer that missed it.
    fn all_joined(&self) -> bool {
        all_filled(&self.joins) || self.phase == Phase::Done
    }

    /// A snapshot of progress.
    pub fn health(&self, now_ms: u64) -> SessionHealth {
        let counts = self.shed.unwrap_or_else(|| ShedCounts {
            commitments: filled(&self.commits),
            nonces: filled(&self.nonces),
            partial_signatures: filled(&self.psigs),
        });
        SessionHealth {
            session: self.id,
            phase: self.phase,
            signer: self.me,
            signers: self.n,
            age_ms: now_ms.saturating_sub(self.started_ms),
            holdouts: self.holdouts(),
            joined: filled(&self.joins),
            all_joined: self.all_joined(),
            commitments: counts.commitments,
            nonces: counts.nonces,
            partial_signatures: counts.partial_signatures,
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
        self.joins[self.me.as_usize()] = Some(Box::new((local_peer, join.clone())));
        self.enter(Phase::Joined, now_ms, self.nonce_timeout_ms);
        // Everyone has the same join window: it ends `join_ms` after the session's creation.
        let a = self.ann.announcement();
        self.schedule_join_wait(a.created_at_ms.saturating_add(a.policy.timeouts.join_ms));
        out.push(Output::Event(Event::SessionJoined {
            session: self.id,
            signer: self.me,
        }));
        // The creator needs the join of a signer it did not list, to hand it on; a listed
        // signer's join tells it nothing it would act on (ADR 0019).
        let creator = self.ann.announcement().creator;
        let listed = self.listed[self.me.as_usize()];
        let targets: Vec<SignerIndex> = self
            .all_signers()
            .filter(|&j| self.sends_own_join_to(j, now_ms) || (j == creator && !listed))
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

    /// Checks deadlines: when the phase or the session has timed out, aborts naming the
    /// holdouts, or (star) hands the aggregator role to the next signer in election order;
    /// after the signature, passes the broadcast turn on.
    pub fn tick<R: rand::CryptoRng + ?Sized>(&mut self, now_ms: u64, rng: &mut R) -> Vec<Output> {
        let mut out = Vec::new();
        if matches!(self.asks, Asks::Armed(at_ms) if now_ms >= at_ms) && !self.phase.is_terminal() {
            self.asks = Asks::Open;
            self.ask_shown(now_ms, &mut out);
        }
        if self.phase.is_terminal() {
            self.broadcast_tick(now_ms, &mut out);
        } else if now_ms >= self.session_deadline_ms {
            let holdouts = self.holdouts();
            self.abort(now_ms, AbortReason::Expired, holdouts, &mut out);
        } else if self
            .pending_claim
            .as_ref()
            .is_some_and(|c| now_ms >= c.accept_at_ms)
        {
            self.accept_pending_claim(now_ms, rng, &mut out);
        } else if self.phase_deadline_ms.is_some_and(|d| now_ms >= d) {
            self.phase_timed_out(now_ms, rng, &mut out);
        }
        self.flush_records(&mut out);
        out
    }

    // ------------------------------------------------------------------------------------------
    // Helpers

    fn enter(&mut self, phase: Phase, now_ms: u64, timeout_ms: u64) {
        self.phase = phase;
        let star_round = self.topology == Topology::Star
            && matches!(phase, Phase::NonceCommit | Phase::Nonce | Phase::PartialSig);
        if star_round {
            self.schedule_star_wait(now_ms.saturating_add(timeout_ms), timeout_ms);
        } else {
            self.aggregator_deadline_ms = None;
            self.phase_deadline_ms = Some(now_ms.saturating_add(timeout_ms));
        }
    }

    /// The deadline of the Joined phase: a star member then waits only for the aggregator's
    /// route, which failover can replace; everyone else waits for the joins it needs.
    fn schedule_join_wait(&mut self, deadline_ms: u64) {
        if self.topology == Topology::Star && self.me != self.coordinator {
            self.schedule_star_wait(deadline_ms, self.nonce_timeout_ms);
        } else {
            self.aggregator_deadline_ms = None;
            self.phase_deadline_ms = Some(deadline_ms);
        }
    }

    fn sign(&mut self, now_ms: u64, body: Body) -> SignedEnvelope {
        let env = self.sign_unrecorded(now_ms, body);
        self.record(Record::Envelope(env.clone()));
        env
    }

    /// [`SessionMachine::sign`] without storing the envelope: for one made ahead of the step
    /// that sends it, stored then.
    fn sign_unrecorded(&mut self, now_ms: u64, body: Body) -> SignedEnvelope {
        let seq = self.next_seq;
        self.next_seq = seq.next().unwrap_or(seq);
        if self.persist && seq.get() >= self.reserved_seq {
            self.reserve_seq(seq.get());
        }
        // Signed when the node sends or stores it, with whatever else it signs then (ADR 0016).
        let batchable = self.batches_own_envelopes();
        let env = Envelope::sign_batchable(
            self.id,
            self.me,
            seq,
            now_ms,
            body,
            self.keypair.clone(),
            batchable,
        );
        // Our own entries serve only to drop copies of our envelopes relayed back, known by
        // their hash: their signature is not made yet.
        self.remember(self.me, seq, env.signing_hash(), None, false);
        env
    }

    /// Whether what we sign in this session is signed in batches (ADR 0016). What a star
    /// coordinator signs may go to every member, later: each copy would carry the path, so it
    /// is signed alone.
    fn batches_own_envelopes(&self) -> bool {
        self.batch_auth && !(self.is_star_coordinator() && self.n > 2)
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

    /// Whether `receiver` gets our join when we join, or when we learn its peer at `now_ms`:
    /// whoever [`needs_join_of`](Self::needs_join_of) us, except that the elected star
    /// coordinator, if the announcement lists its peer and no claim can have replaced it yet
    /// (before the earliest honest claim), sends its members none (ADR 0012): they route to it
    /// by the announcement and wait for its signed commitment signal or aggregate nonce, so its
    /// join would tell them nothing (147 of the 670 bytes per member it sent at n = 1,000).
    /// Later its join goes to everyone, as before: it asks what happened while it was away, and
    /// so does the join it sends after a restart or a missed deadline; a member answers such a
    /// first join as it answers a copy (see
    /// [`is_unheard_coordinator_join`](Self::is_unheard_coordinator_join)).
    fn sends_own_join_to(&self, receiver: SignerIndex, now_ms: u64) -> bool {
        let quiet_coordinator = self.is_star_coordinator()
            && self.listed[self.me.as_usize()]
            && self.rank == 0
            && !self.claim_seen
            && now_ms < self.earliest_claim_ms;
        self.needs_join_of(receiver, self.me) && !quiet_coordinator
    }

    /// Whether `envelope`, delivered by `from`, is the listed star coordinator's join reaching a
    /// member (the creator included, ADR 0019) that holds none and has joined: the coordinator sends its members its join only to ask what it may have lost
    /// (a restart, a missed deadline), so the member answers it like a copy of a join it holds.
    /// Unverified: the caller acts on it only once the envelope is accepted, or (finished
    /// session) only with what it tells any signer.
    pub fn is_unheard_coordinator_join(&self, envelope: &SignedEnvelope, from: PeerId) -> bool {
        let c = self.coordinator;
        matches!(envelope.envelope().body(), Body::Join { .. })
            && envelope.envelope().signer() == c
            && self.topology == Topology::Star
            && self.me != c
            && self.listed[c.as_usize()]
            && self.peer_of(c) == Some(from)
            && self.joins[c.as_usize()].is_none()
            && self.phase != Phase::Created
    }

    /// (Creator only.) Sends `to` the joins of signers whose peer ids were not announced.
    fn relay_unlisted_joins_to(&mut self, out: &mut Vec<Output>, to: SignerIndex) {
        let envs: Vec<SignedEnvelope> = (0..self.n)
            .filter(|&k| !self.listed[k] && k != to.as_usize() && k != self.me.as_usize())
            .filter(|&k| SignerIndex::try_from(k).is_ok_and(|ks| self.needs_join_of(to, ks)))
            .filter_map(|k| self.joins[k].as_deref().map(|(_, e)| e.clone()))
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

/// The core's view of a message's wire tweaks, in order.
pub fn message_tweaks(
    message: &musig2_proto::MessageToSign,
) -> std::result::Result<Vec<musig2_core::Tweak>, musig2_core::Error> {
    message
        .tweaks
        .iter()
        .map(|t| musig2_core::Tweak::new(t.value(), t.is_x_only()))
        .collect()
}

/// How many signers' slots hold a contribution.
fn filled<T>(slots: &[Option<T>]) -> usize {
    slots.iter().filter(|s| s.is_some()).count()
}

/// Whether every signer's slot holds a contribution.
fn all_filled<T>(slots: &[Option<T>]) -> bool {
    slots.iter().all(Option::is_some)
}

/// Whether `body` is a join that binds its author to `from`, the peer that delivered it: the
/// one envelope a peer not yet bound to a signer may send on its own behalf.
pub(crate) fn is_join_from(body: &Body, from: PeerId) -> bool {
    matches!(body, Body::Join { peer_id } if from.is_encoded_as(peer_id.as_bytes()))
}

/// The attempt a contribution belongs to.
fn body_attempt(body: &Body) -> Option<Attempt> {
    match body {
        Body::NonceCommit { attempt, .. }
        | Body::Nonce { attempt, .. }
        | Body::PartialSig { attempt, .. }
        | Body::AggregateNonce { attempt, .. }
        | Body::NonceSet { attempt, .. } => Some(*attempt),
        _ => None,
    }
}

/// The core's view of a wire nonce, reusing the points the proto layer already parsed.
fn pubnonce_of(bytes: &PubNonceBytes) -> PubNonce {
    let [r1, r2] = bytes.points();
    PubNonce::from_points(r1, r2)
}

mod failover;
mod inbound;
mod records;
mod rounds;
mod sets;

use sets::Asks;

use failover::{Broadcast, PendingClaim};

#[cfg(test)]
mod tests;
