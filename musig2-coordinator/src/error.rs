//! The crate's error type.

use musig2_proto::{ProtoError, SeqNo, SessionId, SignerIndex};
use musig2_transport::{PeerId, TransportError};

use crate::event::AbortOrigin;

/// What a node should do about the peer that delivered a rejected message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAction {
    /// Harmless (a duplicate, a late message): drop it quietly.
    Ignore,
    /// The message was invalid or unauthenticated: drop it and count it against the peer.
    Penalize,
}

/// Everything that can go wrong in the coordinator: rejected messages (which name the peer or
/// signer responsible), session failures, and local errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinatorError {
    /// A frame or envelope failed decoding or verification.
    #[error("invalid message from peer {peer}: {source}")]
    InvalidMessage {
        /// The peer that delivered it.
        peer: PeerId,
        /// What was wrong.
        #[source]
        source: ProtoError,
    },
    /// A message arrived from a peer that is not bound to any signer of the session.
    #[error("peer {peer} is not bound to session {session}")]
    UnboundPeer {
        /// The peer.
        peer: PeerId,
        /// The session.
        session: SessionId,
    },
    /// The same sequence number was seen before from this signer.
    #[error("duplicate sequence number {seq} from signer {signer}")]
    Duplicate {
        /// The sender.
        signer: SignerIndex,
        /// Its sequence number.
        seq: SeqNo,
    },
    /// A signer signed two different envelopes under one sequence number, or two different
    /// values for one contribution: equivocation by that signer (its signatures prove it).
    #[error("signer {signer} equivocated (sequence number {seq})")]
    Equivocation {
        /// The equivocating signer.
        signer: SignerIndex,
        /// The sequence number of the contradicting envelope.
        seq: SeqNo,
    },
    /// The same content under a sequence number already seen, with a new signature: only its
    /// author can make one, and it cost a verification.
    #[error("signer {signer} re-signed sequence number {seq}")]
    ResignedDuplicate {
        /// The sender.
        signer: SignerIndex,
        /// Its sequence number.
        seq: SeqNo,
    },
    /// A contribution we already hold, in a new envelope (re-signed): only its author can make
    /// one, honest signers never do, and it cost a verification.
    #[error("signer {signer} re-sent its {kind} in a new envelope")]
    RedundantMessage {
        /// The sender.
        signer: SignerIndex,
        /// The body kind.
        kind: &'static str,
    },
    /// The sequence number is older than the replay window.
    #[error("sequence number {seq} from signer {signer} is older than the replay window")]
    StaleSequence {
        /// The sender.
        signer: SignerIndex,
        /// Its sequence number.
        seq: SeqNo,
    },
    /// The sequence number jumps too far ahead.
    #[error("sequence number {seq} from signer {signer} jumps more than {max_gap} ahead")]
    SequenceGap {
        /// The sender.
        signer: SignerIndex,
        /// Its sequence number.
        seq: SeqNo,
        /// The configured maximum gap.
        max_gap: u64,
    },
    /// The envelope's timestamp is too far from our clock.
    #[error("timestamp of signer {signer} is {skew_ms} ms away from our clock")]
    ClockSkew {
        /// The sender.
        signer: SignerIndex,
        /// The difference in milliseconds.
        skew_ms: u64,
    },
    /// The message is for another signing attempt.
    #[error("signer {signer} sent a message for attempt {found}, current is {expected}")]
    WrongAttempt {
        /// The sender.
        signer: SignerIndex,
        /// Our attempt.
        expected: u16,
        /// Theirs.
        found: u16,
    },
    /// The message is not one this node accepts in its role and topology.
    #[error("unexpected {kind} from signer {signer}")]
    UnexpectedMessage {
        /// The sender.
        signer: SignerIndex,
        /// The body kind.
        kind: &'static str,
    },
    /// A failover claim its author had no right to make (a position in the election order
    /// that is not its own, past the announcement's bound, or earlier than any honest claim):
    /// an offence of its author.
    #[error("signer {signer} sent an invalid failover claim: {why}")]
    InvalidClaim {
        /// The claim's author.
        signer: SignerIndex,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A failover claim or confirmation that changes nothing here (a copy, one this node has
    /// moved past, or a competing claim that loses): honest signers send them when their views
    /// of a deadline differ.
    #[error("signer {signer}'s {kind} changes nothing here")]
    Superseded {
        /// The author.
        signer: SignerIndex,
        /// What it was.
        kind: &'static str,
    },
    /// A broadcast confirmation this node cannot make (not its turn, no signature yet, a
    /// receipt too long, already confirmed).
    #[error("session {session}: cannot confirm the broadcast: {why}")]
    Broadcast {
        /// The session.
        session: SessionId,
        /// Why not.
        why: &'static str,
    },
    /// The session has already finished; the message was ignored.
    #[error("session {0} has finished")]
    SessionFinished(SessionId),
    /// No session with this id is known to this node.
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    /// The session exists already.
    #[error("session {0} already exists")]
    SessionExists(SessionId),
    /// This node's key is not among the session's signers.
    #[error("this node's key is not a signer of session {0}")]
    NotASigner(SessionId),
    /// The session was aborted. `origin` says whose word the blame is: this node's own finding
    /// ([`AbortOrigin::Local`]) or another signer's claim ([`AbortOrigin::Remote`]).
    #[error("session {session} aborted: {reason:?}, blamed {blamed:?} ({origin})")]
    Aborted {
        /// The session.
        session: SessionId,
        /// Why.
        reason: musig2_proto::AbortReason,
        /// The signers blamed (empty if none).
        blamed: Vec<SignerIndex>,
        /// Who decided: this node, or the signer whose signed Abort we received.
        origin: AbortOrigin,
    },
    /// Too many concurrent sessions.
    #[error("at most {0} concurrent sessions")]
    TooManySessions(usize),
    /// This node already takes part in `max` unfinished sessions announced by this creator key.
    #[error("session {session}: at most {max} unfinished sessions of one creator")]
    TooManySessionsFromCreator {
        /// The session refused.
        session: SessionId,
        /// The limit ([`Config::max_active_per_creator`](crate::Config::max_active_per_creator)).
        max: usize,
    },
    /// The announcement's timeouts or lifetime exceed what this node accepts.
    #[error(
        "session {session}: {what} of {requested_ms} ms exceeds this node's limit of {max_ms} ms"
    )]
    PolicyOutOfBounds {
        /// The session.
        session: SessionId,
        /// Which bound.
        what: &'static str,
        /// What the announcement asks for.
        requested_ms: u64,
        /// This node's limit (see [`Config`](crate::Config)).
        max_ms: u64,
    },
    /// The announcement lists, at this node's index, a peer id that is not this node's: the
    /// session is refused (the others would route our traffic elsewhere).
    #[error("session {session} lists peer {listed} for this node's key, which is not this node")]
    Misrouted {
        /// The session.
        session: SessionId,
        /// The peer id the announcement lists for us.
        listed: PeerId,
    },
    /// A request was invalid (e.g. bad signer list).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A protocol-level error in our own request.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// A MuSig2 error in our own request.
    #[error(transparent)]
    Core(#[from] musig2_core::Error),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The node task has stopped.
    #[error("the node has shut down")]
    Shutdown,
    /// The session store failed (nothing that depended on the failed write was sent).
    #[error("session store: {0}")]
    Store(String),
    /// A stored session could not be restored (its records do not verify or contradict each
    /// other); it is not resumed.
    #[error("stored session {session} cannot be restored: {why}")]
    Unrestorable {
        /// The session.
        session: SessionId,
        /// What was wrong.
        why: String,
    },
    /// A session transcript is malformed or does not verify (see
    /// [`Transcript`](crate::Transcript)).
    #[error("invalid transcript: {what}")]
    Transcript {
        /// The position of the envelope at fault in the transcript, if one is.
        envelope: Option<usize>,
        /// The signer that envelope claims to be from, if known.
        signer: Option<SignerIndex>,
        /// What is wrong.
        what: String,
    },
}

impl CoordinatorError {
    /// What to do with the peer that caused a rejection.
    pub fn peer_action(&self) -> PeerAction {
        match self {
            // Exact copies and messages for finished sessions are dropped before any
            // verification: harmless.
            CoordinatorError::Duplicate { .. }
            | CoordinatorError::SessionFinished(_)
            | CoordinatorError::Superseded { .. }
            // Its author is blamed by the session (which ends); the relay that showed us did
            // right.
            | CoordinatorError::Equivocation { .. } => PeerAction::Ignore,
            // A message of an attempt we left: honest peers send them while a restart is on its
            // way to them.
            CoordinatorError::WrongAttempt {
                expected, found, ..
            } if found < expected => PeerAction::Ignore,
            // Everything else was refused after a signature check an honest author never makes
            // us waste (a stale or skewed number, another attempt, a repeat): an offence of the
            // peer that delivered it, when that peer is its author (see `Node`; relays are not
            // answerable for what an author signed).
            _ => PeerAction::Penalize,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;
