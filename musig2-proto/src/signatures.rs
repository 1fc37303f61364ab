//! The final signatures of a session, as a star coordinator hands them to its members.

use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;
use crate::types::{Attempt, SessionId, Signature64};

/// A session's final BIP340 signatures, one per message, **unsigned** (ADR 0015).
///
/// Each signature verifies on its own under its message's aggregate key, which nobody can
/// make without every signer's partial signature, so an envelope signature around them would
/// prove nothing more. A receiver checks every one with
/// `musig2_core::verify_signature` before acting on them. A star coordinator sends this frame to
/// its members instead of a signed `FinalSignature` envelope: 100 bytes instead of 174 for one
/// message, and no envelope signature to make or check. The signed envelope still exists for
/// everything that needs an author (a session's record, catching up a signer that missed the
/// end).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalSignatures {
    version: u8,
    session_id: SessionId,
    attempt: Attempt,
    signatures: Vec<Signature64>,
}

impl FinalSignatures {
    /// The final signatures of `session`, made in `attempt`, in the announcement's message order.
    pub fn new(session: SessionId, attempt: Attempt, signatures: Vec<Signature64>) -> Self {
        FinalSignatures {
            version: PROTOCOL_VERSION,
            session_id: session,
            attempt,
            signatures,
        }
    }

    /// Protocol version.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The session signed.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// The signing attempt that produced the signatures (informational: valid signatures end
    /// the session whichever attempt made them).
    pub fn attempt(&self) -> Attempt {
        self.attempt
    }

    /// The signatures, one per message (unchecked until the receiver verifies them).
    pub fn signatures(&self) -> &[Signature64] {
        &self.signatures
    }

    /// Encodes as a complete frame.
    pub fn to_frame_bytes(&self) -> Vec<u8> {
        crate::frame::encode_frame(crate::announcement::FrameRef::Signatures(self))
    }
}
