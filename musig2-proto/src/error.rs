//! The crate's single error type.

use std::cell::RefCell;

use crate::types::SignerIndex;

/// Everything that can go wrong while building, encoding, decoding or verifying a message.
///
/// Errors caused by another party's message name that party's signer index where it is known
/// (see [`ProtoError::culprit`]); errors about the bytes themselves say which field was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The frame is larger than the configured cap; it was not parsed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Length of the received frame.
        len: usize,
        /// Configured maximum ([`crate::Limits::max_frame_bytes`]).
        max: usize,
    },
    /// The frame ended before a complete message was read, or had an unknown tag or layout.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// What the decoder could not read.
        reason: String,
    },
    /// A complete message was read but bytes were left over.
    #[error("{count} trailing bytes after the message")]
    TrailingBytes {
        /// Number of unread bytes.
        count: usize,
    },
    /// The bytes parse, but are not the canonical encoding of the value they decode to
    /// (for example a varint with redundant continuation bytes).
    #[error("non-canonical encoding")]
    NonCanonical,
    /// The message carries a protocol version this implementation does not speak.
    #[error("unsupported protocol version {version} (this implementation speaks {supported})")]
    UnsupportedVersion {
        /// The version found in the message.
        version: u8,
        /// The version this crate implements ([`crate::PROTOCOL_VERSION`]).
        supported: u8,
    },
    /// A field that must hold a valid compressed secp256k1 point does not.
    #[error("invalid point in field `{field}`")]
    InvalidPoint {
        /// Name of the field.
        field: &'static str,
    },
    /// A field that must hold a scalar below the curve order does not.
    #[error("scalar in field `{field}` is not below the curve order")]
    InvalidScalar {
        /// Name of the field.
        field: &'static str,
    },
    /// A numeric or length field is outside its allowed range.
    #[error("field `{field}` out of range: {reason}")]
    OutOfRange {
        /// Name of the field.
        field: &'static str,
        /// What the allowed range is.
        reason: &'static str,
    },
    /// A configured limit ([`crate::Limits`]) was exceeded.
    #[error("limit exceeded for {what}: {actual} > {max}")]
    LimitExceeded {
        /// Which limit.
        what: &'static str,
        /// The value found.
        actual: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The same public key appears twice in the signer set.
    #[error("signer {second} repeats the key of signer {first}")]
    DuplicateSignerKey {
        /// The first index holding the key.
        first: SignerIndex,
        /// The later index repeating it.
        second: SignerIndex,
    },
    /// A signer index does not exist in the announcement's signer set.
    #[error("signer index {index} out of range for {signers} signers")]
    UnknownSigner {
        /// The index found.
        index: u16,
        /// Number of signers in the announcement.
        signers: usize,
    },
    /// The announcement's validity window is inconsistent (expiry not after creation).
    #[error(
        "announcement expires at {expires_at_ms} ms, not after its creation at {created_at_ms} ms"
    )]
    InvalidValidity {
        /// Creation time.
        created_at_ms: u64,
        /// Expiry time.
        expires_at_ms: u64,
    },
    /// The announcement has expired.
    #[error("announcement expired at {expires_at_ms} ms (now {now_ms} ms)")]
    Expired {
        /// Expiry time.
        expires_at_ms: u64,
        /// The time passed to verification.
        now_ms: u64,
    },
    /// The announcement claims to be created further in the future than the allowed clock skew.
    #[error("announcement created at {created_at_ms} ms, too far after now ({now_ms} ms)")]
    NotYetValid {
        /// Creation time.
        created_at_ms: u64,
        /// The time passed to verification.
        now_ms: u64,
    },
    /// The recomputed session id differs from the expected one.
    #[error("session id mismatch")]
    SessionIdMismatch,
    /// The announcement signature does not verify under the creator's key.
    #[error("bad announcement signature by creator {creator}")]
    BadAnnouncementSignature {
        /// The creator index named in the announcement.
        creator: SignerIndex,
    },
    /// The keypair used to sign is not the key at the claimed signer index.
    #[error("signing key does not match the key of signer {signer}")]
    KeyMismatch {
        /// The index the caller tried to sign as.
        signer: SignerIndex,
    },
    /// An envelope belongs to a different session than the announcement it was checked against.
    #[error("envelope from signer {signer} is for another session")]
    WrongSession {
        /// The claimed sender.
        signer: SignerIndex,
    },
    /// An envelope signature does not verify under the key at its claimed signer index.
    #[error("bad envelope signature for signer {signer}")]
    BadEnvelopeSignature {
        /// The claimed sender.
        signer: SignerIndex,
    },
    /// A Join names a peer id other than the one the announcement fixed for that signer.
    #[error("signer {signer} joined from a peer id other than the announced one")]
    PeerIdMismatch {
        /// The joining signer.
        signer: SignerIndex,
    },
    /// An Abort blames a signer index that does not exist.
    #[error("abort from signer {signer} blames non-existent index {blamed}")]
    BlamedOutOfRange {
        /// The aborting signer.
        signer: SignerIndex,
        /// The blamed index.
        blamed: u16,
    },
    /// An AggregateNonce or NonceSet was sent in a session that does not use the star topology.
    #[error("signer {signer} sent an aggregate nonce in a mesh session")]
    UnexpectedAggregateNonce {
        /// The sender.
        signer: SignerIndex,
    },
    /// A Request was sent in a session that does not use the mesh topology.
    #[error("signer {signer} sent a request in a star session")]
    UnexpectedRequest {
        /// The sender.
        signer: SignerIndex,
    },
    /// A NonceSet does not carry exactly one nonce per signer in index order.
    #[error(
        "aggregate nonce from signer {signer} does not carry exactly one nonce per signer in order"
    )]
    AggregateNonceIncomplete {
        /// The sender of the AggregateNonce.
        signer: SignerIndex,
    },
    /// A nonce relayed inside a NonceSet is for another attempt.
    #[error(
        "signer {signer} relayed signer {relayed}'s nonce for attempt {found}, expected {expected}"
    )]
    AttemptMismatch {
        /// The sender of the AggregateNonce (who relayed a stale nonce).
        signer: SignerIndex,
        /// The signer whose relayed nonce is for the wrong attempt.
        relayed: SignerIndex,
        /// Attempt of the AggregateNonce.
        expected: u16,
        /// Attempt in the relayed nonce.
        found: u16,
    },
    /// A nonce relayed inside a NonceSet does not carry a valid signature by its signer.
    #[error("signer {signer} relayed a nonce for signer {relayed} that signer did not sign")]
    RelayedNonceForged {
        /// The sender of the AggregateNonce.
        signer: SignerIndex,
        /// The signer the relayed nonce claims to be from.
        relayed: SignerIndex,
    },
    /// A list that holds one entry per message of the session (nonces, partial signatures,
    /// final signatures) has another length.
    #[error("signer {signer} sent {found} {what}, the session signs {expected} messages")]
    WrongCount {
        /// The signer whose list it is.
        signer: SignerIndex,
        /// What the list holds.
        what: &'static str,
        /// The session's message count.
        expected: usize,
        /// The list's length.
        found: usize,
    },
    /// A star partial signature names no aggregate nonce (ADR 0011).
    #[error(
        "star partial signature from signer {signer} does not name the aggregate nonce it was made under"
    )]
    AggregateBinding {
        /// The signer of the partial signature.
        signer: SignerIndex,
    },
    /// The aggregate nonce is not the sum of the relayed public nonces.
    #[error("aggregate nonce from signer {signer} is not the sum of the relayed nonces")]
    AggregateNonceMismatch {
        /// The sender of the AggregateNonce.
        signer: SignerIndex,
    },
    /// A nonce reveal does not match the signer's earlier commitment.
    #[error("nonce reveal of signer {signer} does not match its commitment")]
    CommitmentMismatch {
        /// The revealing signer.
        signer: SignerIndex,
    },
    /// The frame holds a different kind of message than the caller asked for.
    #[error("expected a {expected} frame, found a {found} frame")]
    UnexpectedFrame {
        /// What was asked for.
        expected: &'static str,
        /// What was found.
        found: &'static str,
    },
}

impl ProtoError {
    /// The signer to blame for this error, when the protocol can prove who it is.
    ///
    /// Only errors found in content whose envelope signature already verified name a culprit
    /// (that signer provably sent it). A bad signature, a wrong session or an unknown index name
    /// nobody: the signer index in an unauthenticated message is only a claim, so blame belongs to
    /// the peer that delivered the bytes, which is the transport's business. Decoding errors
    /// likewise name nobody.
    pub fn culprit(&self) -> Option<SignerIndex> {
        match self {
            ProtoError::PeerIdMismatch { signer }
            | ProtoError::BlamedOutOfRange { signer, .. }
            | ProtoError::UnexpectedAggregateNonce { signer }
            | ProtoError::UnexpectedRequest { signer }
            | ProtoError::AggregateNonceIncomplete { signer }
            | ProtoError::AttemptMismatch { signer, .. }
            | ProtoError::RelayedNonceForged { signer, .. }
            | ProtoError::AggregateNonceMismatch { signer }
            | ProtoError::AggregateBinding { signer }
            | ProtoError::WrongCount { signer, .. }
            | ProtoError::CommitmentMismatch { signer } => Some(*signer),
            _ => None,
        }
    }
}

thread_local! {
    /// The typed error behind the last `serde::de::Error::custom` raised by this crate's
    /// validating `Deserialize` impls. postcard drops custom error messages, so the decoder
    /// picks the typed error up from here.
    static LAST_DECODE_ERROR: RefCell<Option<ProtoError>> = const { RefCell::new(None) };
}

/// Records `err` for the decoder and returns a serde error carrying its message.
pub(crate) fn de_error<E: serde::de::Error>(err: ProtoError) -> E {
    let msg = err.to_string();
    LAST_DECODE_ERROR.with(|slot| *slot.borrow_mut() = Some(err));
    E::custom(msg)
}

/// Clears the recorded decode error (called before each decode).
pub(crate) fn clear_decode_error() {
    LAST_DECODE_ERROR.with(|slot| *slot.borrow_mut() = None);
}

/// Maps a postcard error to a typed error, preferring the recorded validation error.
pub(crate) fn from_postcard(err: postcard::Error) -> ProtoError {
    if let postcard::Error::SerdeDeCustom = err {
        if let Some(typed) = LAST_DECODE_ERROR.with(|slot| slot.borrow_mut().take()) {
            return typed;
        }
    }
    ProtoError::Malformed {
        reason: err.to_string(),
    }
}
