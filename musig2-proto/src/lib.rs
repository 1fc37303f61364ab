//! # musig2-proto — the signed, versioned wire protocol of musig2-p2p
//!
//! Every message MuSig2 signers exchange, its canonical encoding, and how it is authenticated.
//! No I/O, no clock: times are arguments (milliseconds since the UNIX epoch).
//!
//! - A [`SignedAnnouncement`] describes a session (signer keys, messages with their tweaks, [`Policy`],
//!   salt, validity window, optional peer ids). Its [`SessionId`] is a tagged hash of its
//!   canonical encoding; the creator signs the id with BIP340, alone or in a [`Batch`] with its
//!   other pending announcements and envelopes (ADR 0017).
//!   [`SignedAnnouncement::verify`] yields a [`VerifiedAnnouncement`].
//! - Every other message is a [`SignedEnvelope`] (version, session id, sender index, sequence
//!   number, timestamp, [`Body`]) signed by the sender's key from the announcement.
//!   [`SignedEnvelope::verify`] yields a [`VerifiedEnvelope`]: it needs only the announcement,
//!   so envelopes can be relayed by anyone and remain trustworthy.
//! - [`FinalSignatures`] carries a session's final BIP340 signatures with no envelope
//!   signature: they verify on their own (a star coordinator's last message to its members,
//!   ADR 0015).
//! - [`decode_frame`] is the one entry point for bytes from the network: a [`Frame`] is an
//!   announcement, an envelope, a batch of envelopes or final signatures. Decoding is strict (size cap first,
//!   version, no trailing bytes, canonical encoding only, valid points and scalars) and returns a
//!   typed [`ProtoError`], never panics.
//!
//! MuSig2 values travel as validated byte newtypes ([`PubNonceBytes`], [`AggNonceBytes`],
//! [`PartialSigBytes`], [`Tweak`]); the coordinator converts them into `musig2-core` types.
//! The byte layout is specified in `docs/wire-format.md`.
//!
//! ## Example
//!
//! ```
//! use musig2_proto::{
//!     decode_frame, Announcement, Body, Frame, Limits, PeerIdBytes, SeqNo, SignerIndex,
//!     SignedAnnouncement, SignedEnvelope,
//! };
//! use secp256k1::Keypair;
//!
//! # fn main() -> Result<(), musig2_proto::ProtoError> {
//! let limits = Limits::default();
//! let keys: Vec<Keypair> = (0..3).map(|_| Keypair::new(&mut rand::rng())).collect();
//! let now = 1_700_000_000_000u64;
//!
//! // The creator (signer 0) builds, signs and encodes an announcement.
//! let announcement = Announcement::new(
//!     keys.iter().map(|k| k.public_key()).collect(),
//!     b"pay 1 BTC to Carol".to_vec(),
//!     SignerIndex::new(0)?,
//!     now,
//!     now + 600_000,
//! );
//! let bytes = announcement.sign(&keys[0], &limits)?.to_frame_bytes();
//!
//! // A signer decodes and verifies it.
//! let verified = SignedAnnouncement::decode(&bytes, &limits)?.verify(now + 1_000, &limits)?;
//! assert_eq!(verified.signer_count(), 3);
//! let me = verified.index_of(&keys[2].public_key()).expect("I am a signer");
//!
//! // It joins with a signed envelope...
//! let join = verified.sign_envelope(
//!     me,
//!     SeqNo::FIRST,
//!     now + 2_000,
//!     Body::Join { peer_id: PeerIdBytes::new(vec![0x00, 0x24, 0x08, 0x01])? },
//!     &keys[2],
//! )?;
//! let wire = join.to_frame_bytes();
//!
//! // ...which anyone holding the announcement can decode and authenticate.
//! let Frame::Envelope(received) = decode_frame(&wire, &limits)? else { unreachable!() };
//! let checked = received.verify(&verified)?;
//! assert_eq!(checked.signer(), me);
//!
//! // A forged sender index fails.
//! let forged = verified.sign_envelope(me, SeqNo::FIRST, now, checked.body().clone(), &keys[1]);
//! assert!(forged.is_err());
//! let bad = SignedEnvelope::decode(&wire[..wire.len() - 1], &limits);
//! assert!(bad.is_err());
//! # Ok(())
//! # }
//! ```

mod announcement;
mod auth;
mod envelope;
mod error;
mod frame;
mod hash;
mod signatures;
mod types;

pub use announcement::{
    Announcement, ElectionMethod, MessageToSign, Policy, ROUND_ENVELOPE_OVERHEAD,
    SignedAnnouncement, SignerInfo, Timeouts, Topology, VerifiedAnnouncement,
};
pub use auth::{
    Auth, AuthCounts, Batch, MAX_AUTH_DEPTH, MAX_AUTH_PATH_BYTES, MAX_BATCH_LEAVES, Sealed,
    auth_counts, with_verified_roots_scope,
};
pub use envelope::{
    AbortReason, AggregateRef, Body, Envelope, MAX_RECEIPT_BYTES, NonceSetDigest, RequestedSet,
    SignedEnvelope, SignedNonce, VerifiedEnvelope,
};
pub use error::ProtoError;
pub use frame::{
    EnvelopeHeader, FRAME_BYTES_PER_SIGNER, Frame, Limits, decode_frame, peek_envelope_header,
    peek_frame_session,
};
pub use hash::{
    TAG_AGGREGATE_NONCE, TAG_ANNOUNCEMENT, TAG_BATCH_NODE, TAG_BATCH_ROOT, TAG_ENVELOPE,
    TAG_NONCE_COMMITMENT, TAG_NONCE_SET, TAG_SESSION_ID, tagged_hash,
};
pub use signatures::FinalSignatures;
pub use types::{
    AggNonceBytes, Attempt, NonceCommitment, PartialSigBytes, PeerIdBytes, PubNonceBytes, SeqNo,
    SessionId, Signature64, SignerIndex, Tweak,
};

/// The protocol version this crate speaks (first byte of every announcement and envelope).
pub const PROTOCOL_VERSION: u8 = 7;
