//! Events a node emits about its sessions.

use musig2_proto::{AbortReason, SessionId, SignerIndex};
use musig2_transport::PeerId;
use secp256k1::schnorr;

/// Who ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortOrigin {
    /// This node decided (timeout, invalid contribution, cancellation).
    Local,
    /// A participant sent a signed Abort; its blame is its claim, not our finding.
    Remote(SignerIndex),
}

impl std::fmt::Display for AbortOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AbortOrigin::Local => f.write_str("finding of this node"),
            AbortOrigin::Remote(signer) => write!(f, "claim of signer {signer}"),
        }
    }
}

/// Something that happened to a session, broadcast to every subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// This node created a session.
    SessionCreated {
        /// The session.
        session: SessionId,
    },
    /// A session this node created was announced: stored in the DHT, or, with every signer's
    /// peer listed and [`DhtAnnounce::IfNotJoinedWithin`](crate::DhtAnnounce::IfNotJoinedWithin),
    /// handed to its signers directly (ADR 0013).
    SessionAnnounced {
        /// The session.
        session: SessionId,
    },
    /// A verified announcement naming this node reached it (directly or through the DHT).
    SessionDiscovered {
        /// The session.
        session: SessionId,
    },
    /// This node joined a session.
    SessionJoined {
        /// The session.
        session: SessionId,
        /// Our signer index.
        signer: SignerIndex,
    },
    /// Another signer joined.
    ParticipantJoined {
        /// The session.
        session: SessionId,
        /// The signer.
        signer: SignerIndex,
    },
    /// Every public nonce is in; the session context is fixed.
    NoncesComplete {
        /// The session.
        session: SessionId,
    },
    /// Every partial signature is in.
    PartialSignaturesComplete {
        /// The session.
        session: SessionId,
    },
    /// The final signature verified under the aggregate key.
    SignatureReady {
        /// The session.
        session: SessionId,
        /// The BIP340 signatures, one per message of the announcement, in its order.
        signatures: Vec<schnorr::Signature>,
    },
    /// The session ended without a signature.
    Aborted {
        /// The session.
        session: SessionId,
        /// Why.
        reason: AbortReason,
        /// Signers blamed: culprits of invalid contributions, or who did not answer in time.
        blamed: Vec<SignerIndex>,
        /// Who decided.
        origin: AbortOrigin,
    },
    /// An announcement naming this node's key was refused because it lists, at our index, a
    /// peer id that is not ours (the creator would have others route our traffic elsewhere).
    /// The session is aborted with reason `Misrouted`, blaming the creator, and the other
    /// signers are told.
    SessionRefused {
        /// The session.
        session: SessionId,
        /// The peer id the announcement lists for this node's key.
        listed_peer: PeerId,
    },
    /// A session announced to us and not joined was dropped to respect a bound (see
    /// [`Config`](crate::Config)): it can still be joined by id if its announcement is in the DHT.
    SessionEvicted {
        /// The session.
        session: SessionId,
        /// Which limit: `max_unjoined_per_creator`, `max_unjoined_sessions` or
        /// `unjoined_session_lifetime`.
        limit: &'static str,
    },
    /// A peer bound to one of our active sessions disconnected.
    ParticipantDisconnected {
        /// The session.
        session: SessionId,
        /// The signer whose peer it was.
        signer: SignerIndex,
        /// The peer.
        peer: PeerId,
    },
    /// The session moved to a new attempt with fresh nonces on every node, because `signer`
    /// restarted after losing a nonce it had sent (this node, when `signer` is ours). Not
    /// blame: a restart is honest, and bounded by the announcement's `max_attempts`.
    AttemptStarted {
        /// The session.
        session: SessionId,
        /// The attempt now current.
        attempt: musig2_proto::Attempt,
        /// The signer that restarted.
        signer: SignerIndex,
    },
    /// A stored session was resumed after this node restarted.
    SessionResumed {
        /// The session.
        session: SessionId,
    },
    /// Star topology: the aggregator missed its deadline and the next signer in election order
    /// took over with a signed claim; the session goes on at a new attempt with fresh nonces
    /// (not blame: the aggregator may only be slow or cut off).
    CoordinatorFailover {
        /// The session.
        session: SessionId,
        /// The attempt now current.
        attempt: musig2_proto::Attempt,
        /// The aggregator replaced.
        replaced: SignerIndex,
        /// The new aggregator.
        coordinator: SignerIndex,
    },
    /// The session has its signature and it is this node's turn to act on it (e.g. publish the
    /// transaction): call [`Node::confirm_finalized`](crate::Node::confirm_finalized) once done.
    /// If no confirmation reaches the signers by the broadcast deadline, the next signer in
    /// election order is asked.
    FinalizeDue {
        /// The session.
        session: SessionId,
        /// The final signatures, one per message.
        signatures: Vec<schnorr::Signature>,
        /// This node's position in the election order (0: the first coordinator).
        position: u16,
    },
    /// A coordinator confirmed the broadcast (this node, or another signer's signed
    /// confirmation).
    BroadcastConfirmed {
        /// The session.
        session: SessionId,
        /// Who confirmed.
        by: SignerIndex,
        /// The application's receipt (e.g. a txid), at most 256 bytes.
        receipt: Vec<u8>,
    },
    /// The coordinator whose turn it was did not confirm the broadcast by its deadline; the
    /// next in election order is asked.
    BroadcastFailover {
        /// The session.
        session: SessionId,
        /// Whose turn it was.
        failed: SignerIndex,
        /// Whose turn it is now.
        next: SignerIndex,
    },
    /// No coordinator the failover order allows confirmed the broadcast in time.
    BroadcastExhausted {
        /// The session.
        session: SessionId,
    },
}

impl Event {
    /// The session the event is about.
    pub fn session(&self) -> SessionId {
        match self {
            Event::SessionCreated { session }
            | Event::SessionAnnounced { session }
            | Event::SessionDiscovered { session }
            | Event::SessionJoined { session, .. }
            | Event::ParticipantJoined { session, .. }
            | Event::NoncesComplete { session }
            | Event::PartialSignaturesComplete { session }
            | Event::SignatureReady { session, .. }
            | Event::Aborted { session, .. }
            | Event::SessionRefused { session, .. }
            | Event::SessionEvicted { session, .. }
            | Event::ParticipantDisconnected { session, .. }
            | Event::AttemptStarted { session, .. }
            | Event::SessionResumed { session }
            | Event::CoordinatorFailover { session, .. }
            | Event::FinalizeDue { session, .. }
            | Event::BroadcastConfirmed { session, .. }
            | Event::BroadcastFailover { session, .. }
            | Event::BroadcastExhausted { session } => *session,
        }
    }
}
