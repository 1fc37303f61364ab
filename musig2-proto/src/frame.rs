//! Frames: the unit that crosses the wire, and the single decoding entry point.

use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;
use crate::announcement::{FrameRef, SignedAnnouncement};
use crate::envelope::{Body, SignedEnvelope};
use crate::error::{ProtoError, clear_decode_error, from_postcard};
use crate::signatures::FinalSignatures;

/// Size and count limits applied when decoding and verifying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Frames longer than this are rejected before parsing (default 64 KiB).
    pub max_frame_bytes: usize,
    /// Maximum signers in an announcement (default 128; at most 4096).
    pub max_signers: usize,
    /// Maximum length of each message to sign (default 4 KiB).
    pub max_message_bytes: usize,
    /// Maximum messages one session signs (default 64). Each costs every signer a nonce pair
    /// and a partial signature per attempt, and 66 bytes per signer in the round frames, which
    /// must also fit `max_frame_bytes` (checked per announcement).
    pub max_messages: usize,
    /// Maximum number of tweaks per message (default 16).
    pub max_tweaks: usize,
    /// Maximum envelopes in a batch frame (default 64).
    pub max_batch_entries: usize,
    /// How far in the future an announcement's creation time may be (default 5 minutes).
    pub max_clock_skew_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_signers: 128,
            max_message_bytes: 4 * 1024,
            max_messages: 64,
            max_tweaks: 16,
            max_batch_entries: 64,
            max_clock_skew_ms: 5 * 60 * 1000,
        }
    }
}

/// Frame bytes per signer that [`Limits::for_signers`] allows: a star round frame needs
/// `66·k + 128` per signer (so k = 1 message at this budget), an announcement at most
/// `33 + 2 + 64` (key, option tag, length, peer id), and the `NonceSet` a failed star session
/// reveals about `74 + 66·k`. See ADR 0012.
pub const FRAME_BYTES_PER_SIGNER: usize = 256;

impl Limits {
    /// Limits for sessions of up to `max_signers` signers (at most 4096): the defaults, with
    /// `max_signers` set and `max_frame_bytes` raised to
    /// `max(64 KiB, max_signers · FRAME_BYTES_PER_SIGNER)` so the announcement, the round
    /// frames and the failure evidence of a single-message session of that size fit
    /// (256 000 bytes at 1,000 signers). Every other limit keeps its default.
    ///
    /// The defaults stay at 128 signers and 64 KiB: a node on the open network reads, parses and
    /// may hold frames up to `max_frame_bytes` from anyone, so a node opts in to big sessions
    /// (ADR 0012).
    pub fn for_signers(max_signers: usize) -> Limits {
        let max_signers = max_signers.clamp(1, usize::from(crate::SignerIndex::MAX) + 1);
        let defaults = Limits::default();
        Limits {
            max_signers: max_signers.max(defaults.max_signers),
            max_frame_bytes: defaults
                .max_frame_bytes
                .max(max_signers.saturating_mul(FRAME_BYTES_PER_SIGNER)),
            ..defaults
        }
    }
}

/// Anything that arrives on the wire.
///
/// A batch is a frame kind rather than an envelope body: each envelope in it carries its own
/// signature (possibly from different senders, when relaying), so an outer signature would add
/// nothing, and batches cannot nest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// A signed session announcement.
    Announcement(SignedAnnouncement),
    /// One signed envelope.
    Envelope(SignedEnvelope),
    /// Several signed envelopes for one peer (1 to [`Limits::max_batch_entries`]).
    Batch(Vec<SignedEnvelope>),
    /// A session's final signatures, unsigned: they verify on their own (1 to
    /// [`Limits::max_messages`]; ADR 0015).
    Signatures(FinalSignatures),
}

impl Frame {
    /// A short name for the frame kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Announcement(_) => "announcement",
            Frame::Envelope(_) => "envelope",
            Frame::Batch(_) => "batch",
            Frame::Signatures(_) => "signatures",
        }
    }

    /// The canonical encoding of this frame.
    pub fn encode(&self) -> Vec<u8> {
        encode_frame(self.as_frame_ref())
    }

    fn as_frame_ref(&self) -> FrameRef<'_> {
        match self {
            Frame::Announcement(a) => FrameRef::Announcement(a),
            Frame::Envelope(e) => FrameRef::Envelope(e),
            Frame::Batch(b) => FrameRef::Batch(b),
            Frame::Signatures(f) => FrameRef::Signatures(f),
        }
    }

    /// Whether `bytes` are exactly this frame's canonical encoding: the encoding is compared as
    /// it is produced, stopping at the first difference, and never stored.
    fn encodes_to(&self, bytes: &[u8]) -> bool {
        postcard::serialize_with_flavor(&self.as_frame_ref(), SameBytes { rest: bytes })
            .unwrap_or(false)
    }

    /// Encodes several envelopes as one batch frame.
    pub fn encode_batch(envelopes: &[SignedEnvelope]) -> Vec<u8> {
        encode_frame(FrameRef::Batch(envelopes))
    }
}

/// Frame tag bytes (the postcard variant index of [`Frame`]).
const TAG_ANNOUNCEMENT: u8 = 0;
const TAG_ENVELOPE: u8 = 1;
const TAG_BATCH: u8 = 2;
const TAG_SIGNATURES: u8 = 3;

/// Decodes one frame, strictly.
///
/// In order: rejects frames over `limits.max_frame_bytes` without parsing; rejects an unknown
/// protocol version (read before anything else); parses, rejecting invalid points, scalars and
/// out-of-range values with typed errors; rejects trailing bytes; rejects encodings that are not
/// canonical (re-encoding must give the same bytes); checks an announcement's structure against
/// `limits` and a batch's entry count. Signatures are not checked here: see
/// [`SignedAnnouncement::verify`] and [`SignedEnvelope::verify`].
pub fn decode_frame(bytes: &[u8], limits: &Limits) -> Result<Frame, ProtoError> {
    if bytes.len() > limits.max_frame_bytes {
        return Err(ProtoError::FrameTooLarge {
            len: bytes.len(),
            max: limits.max_frame_bytes,
        });
    }
    if let [
        TAG_ANNOUNCEMENT | TAG_ENVELOPE | TAG_SIGNATURES,
        version,
        ..,
    ] = bytes
    {
        if *version != PROTOCOL_VERSION {
            return Err(ProtoError::UnsupportedVersion {
                version: *version,
                supported: PROTOCOL_VERSION,
            });
        }
    }
    clear_decode_error();
    let (frame, rest): (Frame, &[u8]) = postcard::take_from_bytes(bytes).map_err(from_postcard)?;
    if !rest.is_empty() {
        return Err(ProtoError::TrailingBytes { count: rest.len() });
    }
    if !frame.encodes_to(bytes) {
        return Err(ProtoError::NonCanonical);
    }
    match &frame {
        Frame::Announcement(a) => {
            check_version(a.version())?;
            a.auth().check_shape()?;
            a.announcement().validate(limits)?;
        }
        Frame::Envelope(e) => check_envelope(e)?,
        Frame::Batch(entries) => {
            if entries.is_empty() {
                return Err(ProtoError::OutOfRange {
                    field: "batch",
                    reason: "must hold at least one envelope",
                });
            }
            if entries.len() > limits.max_batch_entries {
                return Err(ProtoError::LimitExceeded {
                    what: "batch entries",
                    actual: entries.len(),
                    max: limits.max_batch_entries,
                });
            }
            for e in entries {
                check_envelope(e)?;
            }
        }
        Frame::Signatures(f) => {
            check_version(f.version())?;
            if f.signatures().is_empty() {
                return Err(ProtoError::OutOfRange {
                    field: "final signatures",
                    reason: "must hold at least one signature",
                });
            }
            if f.signatures().len() > limits.max_messages {
                return Err(ProtoError::LimitExceeded {
                    what: "final signatures",
                    actual: f.signatures().len(),
                    max: limits.max_messages,
                });
            }
        }
    }
    Ok(frame)
}

fn check_version(version: u8) -> Result<(), ProtoError> {
    if version != PROTOCOL_VERSION {
        return Err(ProtoError::UnsupportedVersion {
            version,
            supported: PROTOCOL_VERSION,
        });
    }
    Ok(())
}

fn check_envelope(e: &SignedEnvelope) -> Result<(), ProtoError> {
    let env = e.envelope();
    check_version(env.version())?;
    e.auth().check_shape()?;
    if let Body::NonceSet { nonces, .. } = env.body() {
        if nonces.is_empty() || nonces.len() > usize::from(crate::SignerIndex::MAX) + 1 {
            return Err(ProtoError::OutOfRange {
                field: "nonce set entries",
                reason: "1 to 4096 relayed nonces",
            });
        }
        for sn in nonces {
            sn.auth.check_shape()?;
        }
    }
    Ok(())
}

/// A postcard output that compares the encoding with the bytes it should equal instead of
/// storing it (the canonical-encoding check of every decoded frame, without an allocation).
struct SameBytes<'a> {
    /// What the encoding must still produce.
    rest: &'a [u8],
}

impl postcard::ser_flavors::Flavor for SameBytes<'_> {
    type Output = bool;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.try_extend(&[byte])
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // A difference ends the encoding early; `encodes_to` reads any error as "not equal".
        let rest = self
            .rest
            .strip_prefix(data)
            .ok_or(postcard::Error::SerializeBufferFull)?;
        self.rest = rest;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<bool> {
        Ok(self.rest.is_empty())
    }
}

/// The buffer an encoding starts with.
const ENCODE_CAPACITY: usize = 384;

/// Canonical encoding of any protocol value (postcard).
pub(crate) fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing into a Vec cannot fail for this crate's types: they contain no maps of unknown
    // length and no types postcard rejects.
    // Most frames and signed fields are 100-400 bytes: start with room for them rather than
    // growing the buffer a few bytes at a time.
    postcard::to_extend(value, Vec::with_capacity(ENCODE_CAPACITY)).unwrap_or_default()
}

pub(crate) fn encode_frame(frame: FrameRef<'_>) -> Vec<u8> {
    to_vec(&frame)
}

/// The fields of a single-envelope frame that a receiver can check before paying for a full
/// decode (which parses every curve point in the body) or a signature verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// The session the envelope claims.
    pub session_id: crate::SessionId,
    /// The signer index it claims.
    pub signer: crate::SignerIndex,
    /// Its sequence number.
    pub seq: crate::SeqNo,
    /// Its timestamp (milliseconds since the UNIX epoch).
    pub timestamp_ms: u64,
    /// The signature that authenticates the envelope (the frame's last 64 bytes): over the
    /// envelope alone, or over the root of the batch it belongs to (ADR 0016), which several
    /// envelopes share. A direct signature identifies one envelope; a batch signature does
    /// together with the signer and sequence number, for any signer that does not equivocate.
    pub signature: [u8; 64],
}

/// The session a single-envelope, batch or final-signatures frame is for (a batch's first
/// entry), read without decoding any body. Unauthenticated, like [`peek_envelope_header`]: only for dropping or
/// buffering a frame early.
pub fn peek_frame_session(bytes: &[u8], limits: &Limits) -> Option<crate::SessionId> {
    #[derive(Deserialize)]
    struct Head {
        tag: u32,
        version: u8,
        session_id: crate::SessionId,
    }
    #[derive(Deserialize)]
    struct BatchHead {
        tag: u32,
        entries: u32,
        version: u8,
        session_id: crate::SessionId,
    }
    if bytes.len() > limits.max_frame_bytes {
        return None;
    }
    match bytes.first() {
        Some(&tag @ (TAG_ENVELOPE | TAG_SIGNATURES)) => {
            let (head, _): (Head, _) = postcard::take_from_bytes(bytes).ok()?;
            (head.tag == u32::from(tag) && head.version == PROTOCOL_VERSION)
                .then_some(head.session_id)
        }
        Some(&TAG_BATCH) => {
            let (head, _): (BatchHead, _) = postcard::take_from_bytes(bytes).ok()?;
            (head.tag == u32::from(TAG_BATCH)
                && head.entries > 0
                && head.version == PROTOCOL_VERSION)
                .then_some(head.session_id)
        }
        _ => None,
    }
}

/// Reads the header and signature of a frame that holds one envelope, without decoding its body.
///
/// Returns `None` for any other frame (announcement, batch) or bytes that do not start like an
/// envelope frame of this protocol version. The result is unauthenticated: use it only to
/// *drop* a frame early (unknown session, exact replay of an envelope already verified), never
/// to accept one; [`decode_frame`] and [`crate::SignedEnvelope::verify`] still decide.
pub fn peek_envelope_header(bytes: &[u8], limits: &Limits) -> Option<EnvelopeHeader> {
    #[derive(Deserialize)]
    struct Head {
        tag: u32,
        version: u8,
        session_id: crate::SessionId,
        signer: crate::SignerIndex,
        seq: crate::SeqNo,
        timestamp_ms: u64,
    }
    if bytes.len() > limits.max_frame_bytes || bytes.len() < 64 {
        return None;
    }
    // The kind and version first: other frames (batches, announcements) are not parsed as an
    // envelope's header, where a field out of range costs a formatted decode error.
    let ((tag, version), _): ((u32, u8), &[u8]) = postcard::take_from_bytes(bytes).ok()?;
    if tag != u32::from(TAG_ENVELOPE) || version != PROTOCOL_VERSION {
        return None;
    }
    let (head, rest): (Head, &[u8]) = postcard::take_from_bytes(bytes).ok()?;
    if head.tag != u32::from(TAG_ENVELOPE) || head.version != PROTOCOL_VERSION || rest.len() < 64 {
        return None;
    }
    let signature: [u8; 64] = bytes[bytes.len() - 64..].try_into().ok()?;
    Some(EnvelopeHeader {
        session_id: head.session_id,
        signer: head.signer,
        seq: head.seq,
        timestamp_ms: head.timestamp_ms,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_check_accepts_exactly_the_encoding() {
        let frame = Frame::Signatures(FinalSignatures::new(
            crate::SessionId::from_bytes([3; 32]),
            crate::Attempt::FIRST,
            vec![crate::Signature64([7; 64])],
        ));
        let bytes = frame.encode();
        assert!(frame.encodes_to(&bytes));
        // Shorter, longer, or any one byte different: not this frame's encoding.
        assert!(!frame.encodes_to(&bytes[..bytes.len() - 1]));
        assert!(!frame.encodes_to(&[bytes.as_slice(), &[0]].concat()));
        assert!(!frame.encodes_to(&[]));
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 1;
            assert!(!frame.encodes_to(&changed), "byte {i} changed");
        }
    }
}
