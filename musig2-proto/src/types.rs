//! Validated newtypes for every value that crosses the wire.
//!
//! Each type checks its invariant when constructed and when deserialized, so a value of one of
//! these types is always valid.

use std::fmt;

use secp256k1::{PublicKey, Scalar};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use crate::error::{ProtoError, de_error};

/// Fixed-size byte arrays as postcard tuples: exactly `N` raw bytes, no length prefix.
pub(crate) mod byte_array {
    use super::*;

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut tup = serializer.serialize_tuple(N)?;
        for b in bytes {
            tup.serialize_element(b)?;
        }
        tup.end()
    }

    struct ArrayVisitor<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for ArrayVisitor<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{N} bytes")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
            let mut out = [0u8; N];
            for (i, slot) in out.iter_mut().enumerate() {
                *slot = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(i, &self))?;
            }
            Ok(out)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        deserializer.deserialize_tuple(N, ArrayVisitor::<N>)
    }
}

/// Variable-length byte strings: varint length, then the raw bytes.
pub(crate) mod byte_vec {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_bytes(BytesVisitor)
    }
}

/// secp256k1 public keys as 33-byte compressed points; decoding rejects invalid points.
pub(crate) mod pubkey33 {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        key: &PublicKey,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        byte_array::serialize(&key.serialize(), serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<PublicKey, D::Error> {
        let bytes: [u8; 33] = byte_array::deserialize(deserializer)?;
        decompress_signer_key(bytes).ok_or_else(|| {
            de_error(ProtoError::InvalidPoint {
                field: "signer key",
            })
        })
    }
}

/// Compressed points decompressed lately, per thread, one cache for signer keys and one for
/// public nonce points. A decompression is a field square root (~4.5 µs):
/// - the same signer sets announce session after session, and one per key was a sixth of a
///   50-signer session's CPU on each node;
/// - in mesh every partial signature travels with the nonces it was made under (ADR 0003), so a
///   node decodes each signer's nonce once from its author and again in every other signer's
///   batch: at n = 10 the nonce square roots were a fifth of a session's CPU, nine in ten of
///   them for points already seen.
///
/// Bounded: the oldest entry goes first, so frames full of fresh points cost what they did
/// without the cache, and churning it costs an attacker the square roots it costs us. Only
/// valid points are kept.
const POINT_CACHE: usize = 4096;

struct PointCache {
    points: std::collections::HashMap<[u8; 33], PublicKey>,
    order: std::collections::VecDeque<[u8; 33]>,
}

impl PointCache {
    fn new() -> Self {
        PointCache {
            points: std::collections::HashMap::new(),
            order: std::collections::VecDeque::new(),
        }
    }

    /// `PublicKey::from_byte_array_compressed`, remembering valid points.
    fn decompress(&mut self, bytes: [u8; 33]) -> Option<PublicKey> {
        if let Some(point) = self.points.get(&bytes) {
            return Some(*point);
        }
        let point = PublicKey::from_byte_array_compressed(bytes).ok()?;
        if self.order.len() >= POINT_CACHE {
            if let Some(old) = self.order.pop_front() {
                self.points.remove(&old);
            }
        }
        self.order.push_back(bytes);
        self.points.insert(bytes, point);
        Some(point)
    }
}

thread_local! {
    static SIGNER_KEYS: std::cell::RefCell<PointCache> = std::cell::RefCell::new(PointCache::new());
    static NONCE_POINTS: std::cell::RefCell<PointCache> = std::cell::RefCell::new(PointCache::new());
}

/// A signer key, decompressed through this thread's signer-key cache.
fn decompress_signer_key(bytes: [u8; 33]) -> Option<PublicKey> {
    SIGNER_KEYS.with(|cache| cache.borrow_mut().decompress(bytes))
}

/// A public nonce point, decompressed through this thread's nonce-point cache.
fn decompress_nonce_point(bytes: [u8; 33]) -> Option<PublicKey> {
    NONCE_POINTS.with(|cache| cache.borrow_mut().decompress(bytes))
}

#[cfg(test)]
mod signer_key_cache_tests {
    use super::*;

    #[test]
    fn cached_keys_equal_fresh_decompressions_invalid_ones_stay_invalid_and_the_cache_is_bounded() {
        let secp_keys: Vec<PublicKey> = (1u8..=40)
            .map(|i| {
                let mut sk = [0u8; 32];
                sk[31] = i;
                PublicKey::from_secret_key(&secp256k1::SecretKey::from_secret_bytes(sk).unwrap())
            })
            .collect();
        for _ in 0..2 {
            for key in &secp_keys {
                assert_eq!(decompress_signer_key(key.serialize()), Some(*key));
            }
        }
        // x = 5 is not on the curve; and a bad prefix.
        let mut not_on_curve = [0u8; 33];
        not_on_curve[0] = 2;
        not_on_curve[32] = 5;
        let mut bad_prefix = secp_keys[0].serialize();
        bad_prefix[0] = 4;
        for _ in 0..2 {
            assert_eq!(decompress_signer_key(not_on_curve), None);
            assert_eq!(decompress_signer_key(bad_prefix), None);
        }
        // Fill past the bound with valid keys (multiples of G): the cache never grows past it.
        let mut point = secp_keys[0];
        for _ in 0..POINT_CACHE + 10 {
            point = point.combine(&secp_keys[1]).unwrap();
            assert_eq!(decompress_signer_key(point.serialize()), Some(point));
        }
        SIGNER_KEYS.with(|c| {
            let c = c.borrow();
            assert_eq!(c.points.len(), POINT_CACHE);
            assert_eq!(c.order.len(), POINT_CACHE);
        });
        // Evicted keys still decompress.
        assert_eq!(
            decompress_signer_key(secp_keys[0].serialize()),
            Some(secp_keys[0])
        );
    }

    #[test]
    fn public_nonces_decode_the_same_through_the_cache_and_invalid_halves_stay_refused() {
        let point = |i: u8| {
            let mut sk = [0u8; 32];
            sk[31] = i;
            PublicKey::from_secret_key(&secp256k1::SecretKey::from_secret_bytes(sk).unwrap())
        };
        let mut bytes = [0u8; 66];
        bytes[..33].copy_from_slice(&point(7).serialize());
        bytes[33..].copy_from_slice(&point(8).serialize());
        for _ in 0..3 {
            let nonce = PubNonceBytes::from_bytes(bytes).expect("valid nonce");
            assert_eq!(nonce.points(), [point(7), point(8)]);
        }
        // R1 is cached now; an R2 that is not on the curve is still refused, by name.
        let mut bad = bytes;
        bad[33..].copy_from_slice(&[2; 33]);
        bad[34..].copy_from_slice(&[0; 32]);
        bad[65] = 5;
        for _ in 0..2 {
            assert!(matches!(
                PubNonceBytes::from_bytes(bad),
                Err(ProtoError::InvalidPoint {
                    field: "public nonce R2"
                })
            ));
        }
        // The two caches are apart: a nonce point does not make a signer key's entry.
        SIGNER_KEYS.with(|c| assert!(!c.borrow().points.contains_key(&point(8).serialize())));
    }
}

fn hex_fmt(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// Generates the serde impls for a newtype over a fixed-size array, validating on decode.
macro_rules! array_newtype_serde {
    ($ty:ident, $n:expr, $validate:path) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                byte_array::serialize(&self.0, serializer)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let bytes: [u8; $n] = byte_array::deserialize(deserializer)?;
                $validate(bytes).map_err(de_error)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($ty), "("))?;
                hex_fmt(f, &self.0)?;
                write!(f, ")")
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                hex_fmt(f, &self.0)
            }
        }
    };
}

/// A session id: the tagged hash of an announcement's canonical encoding.
///
/// Every 32-byte string is a syntactically valid id; whether it belongs to a given announcement is
/// checked by recomputing it ([`crate::SignedAnnouncement::verify`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 32]);

impl SessionId {
    /// Wraps raw bytes. Any 32 bytes are a syntactically valid id, so this cannot fail; whether
    /// an id belongs to an announcement is checked by recomputing it.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SessionId(bytes)
    }

    /// The raw id bytes.
    pub fn to_bytes(self) -> [u8; 32] {
        self.0
    }

    /// The raw id bytes by reference.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn from_hash(bytes: [u8; 32]) -> Self {
        SessionId(bytes)
    }

    fn validated(bytes: [u8; 32]) -> Result<Self, ProtoError> {
        Ok(SessionId(bytes))
    }
}
array_newtype_serde!(SessionId, 32, SessionId::validated);

/// Index of a signer in the announcement's signer list (0-based).
///
/// At most [`SignerIndex::MAX`]; whether it exists in a given session is checked against the
/// announcement during verification. Encoded as a varint.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SignerIndex(u16);

impl SignerIndex {
    /// The largest index the protocol allows (so at most 4096 signers).
    pub const MAX: u16 = 4095;

    /// Validates an index.
    pub fn new(index: u16) -> Result<Self, ProtoError> {
        if index > Self::MAX {
            return Err(ProtoError::OutOfRange {
                field: "signer index",
                reason: "must be at most 4095",
            });
        }
        Ok(SignerIndex(index))
    }

    /// The index as a number.
    pub fn get(self) -> u16 {
        self.0
    }

    /// The index as a `usize`, for indexing the signer list.
    pub fn as_usize(self) -> usize {
        usize::from(self.0)
    }
}

impl TryFrom<usize> for SignerIndex {
    type Error = ProtoError;
    fn try_from(value: usize) -> Result<Self, ProtoError> {
        let v = u16::try_from(value).map_err(|_| ProtoError::OutOfRange {
            field: "signer index",
            reason: "must be at most 4095",
        })?;
        SignerIndex::new(v)
    }
}

impl fmt::Display for SignerIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for SignerIndex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for SignerIndex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        SignerIndex::new(u16::deserialize(deserializer)?).map_err(de_error)
    }
}

/// A sender's sequence number. Starts at 1 (0 is reserved to mean "nothing seen yet").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SeqNo(u64);

impl SeqNo {
    /// The first sequence number.
    pub const FIRST: SeqNo = SeqNo(1);

    /// Validates a sequence number (must be at least 1).
    pub fn new(seq: u64) -> Result<Self, ProtoError> {
        if seq == 0 {
            return Err(ProtoError::OutOfRange {
                field: "sequence number",
                reason: "must be at least 1",
            });
        }
        Ok(SeqNo(seq))
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The following sequence number, or `None` at `u64::MAX`.
    pub fn next(self) -> Option<SeqNo> {
        self.0.checked_add(1).map(SeqNo)
    }
}

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for SeqNo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for SeqNo {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        SeqNo::new(u64::deserialize(deserializer)?).map_err(de_error)
    }
}

/// Signing attempt number within a session: 0 for the first attempt, incremented by each
/// Restart (fresh nonces after a crash) or failover. At most [`Attempt::MAX`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Attempt(u16);

impl Attempt {
    /// The largest attempt number the protocol allows.
    pub const MAX: u16 = 1024;

    /// The first attempt.
    pub const FIRST: Attempt = Attempt(0);

    /// Validates an attempt number.
    pub fn new(attempt: u16) -> Result<Self, ProtoError> {
        if attempt > Self::MAX {
            return Err(ProtoError::OutOfRange {
                field: "attempt",
                reason: "must be at most 1024",
            });
        }
        Ok(Attempt(attempt))
    }

    /// The number.
    pub fn get(self) -> u16 {
        self.0
    }

    /// The following attempt, or `None` past [`Attempt::MAX`].
    pub fn next(self) -> Option<Attempt> {
        Attempt::new(self.0.checked_add(1)?).ok()
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Attempt {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for Attempt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Attempt::new(u16::deserialize(deserializer)?).map_err(de_error)
    }
}

/// Opaque peer id bytes (libp2p `PeerId::to_bytes()`), 1 to 64 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerIdBytes(Vec<u8>);

impl PeerIdBytes {
    /// Maximum length in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validates the length (1..=64 bytes).
    pub fn new(bytes: Vec<u8>) -> Result<Self, ProtoError> {
        if bytes.is_empty() || bytes.len() > Self::MAX_LEN {
            return Err(ProtoError::OutOfRange {
                field: "peer id",
                reason: "must be 1 to 64 bytes",
            });
        }
        Ok(PeerIdBytes(bytes))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PeerIdBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerIdBytes(")?;
        hex_fmt(f, &self.0)?;
        write!(f, ")")
    }
}

impl Serialize for PeerIdBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        byte_vec::serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for PeerIdBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        PeerIdBytes::new(byte_vec::deserialize(deserializer)?).map_err(de_error)
    }
}

fn check_point(bytes: [u8; 33], field: &'static str) -> Result<PublicKey, ProtoError> {
    PublicKey::from_byte_array_compressed(bytes).map_err(|_| ProtoError::InvalidPoint { field })
}

fn split66(bytes: &[u8; 66]) -> ([u8; 33], [u8; 33]) {
    let mut a = [0u8; 33];
    let mut b = [0u8; 33];
    a.copy_from_slice(&bytes[..33]);
    b.copy_from_slice(&bytes[33..]);
    (a, b)
}

/// A BIP327 public nonce: two valid compressed points, 66 bytes.
///
/// The parsed points are kept alongside the bytes, so converting into core types or aggregating
/// does not parse (and take square roots) again.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PubNonceBytes {
    bytes: [u8; 66],
    points: [PublicKey; 2],
}

impl PubNonceBytes {
    /// Validates that both halves are valid compressed points.
    pub fn from_bytes(bytes: [u8; 66]) -> Result<Self, ProtoError> {
        let (a, b) = split66(&bytes);
        let invalid = |field| ProtoError::InvalidPoint { field };
        let points = [
            decompress_nonce_point(a).ok_or(invalid("public nonce R1"))?,
            decompress_nonce_point(b).ok_or(invalid("public nonce R2"))?,
        ];
        Ok(PubNonceBytes { bytes, points })
    }

    /// The 66 bytes.
    pub fn to_bytes(self) -> [u8; 66] {
        self.bytes
    }

    /// The 66 bytes by reference.
    pub fn as_bytes(&self) -> &[u8; 66] {
        &self.bytes
    }

    /// The two points `R1`, `R2` (parsed once, at construction).
    pub fn points(&self) -> [PublicKey; 2] {
        self.points
    }
}

impl From<&musig2_core::PubNonce> for PubNonceBytes {
    /// A nonce this process made: its points are known, nothing to decompress.
    fn from(nonce: &musig2_core::PubNonce) -> Self {
        let (r1, r2) = nonce.points();
        PubNonceBytes {
            bytes: nonce.to_bytes(),
            points: [r1, r2],
        }
    }
}

impl Serialize for PubNonceBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        byte_array::serialize(&self.bytes, serializer)
    }
}

impl<'de> Deserialize<'de> for PubNonceBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: [u8; 66] = byte_array::deserialize(deserializer)?;
        PubNonceBytes::from_bytes(bytes).map_err(de_error)
    }
}

impl fmt::Debug for PubNonceBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PubNonceBytes(")?;
        hex_fmt(f, &self.bytes)?;
        write!(f, ")")
    }
}

impl fmt::Display for PubNonceBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex_fmt(f, &self.bytes)
    }
}

/// A BIP327 aggregate nonce: two compressed points, 66 bytes, where either may be the point at
/// infinity encoded as 33 zero bytes.
///
/// The parsed points are kept alongside the bytes (as in [`PubNonceBytes`]), so a signer that
/// signs under a received aggregate does not take its two square roots a second time.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AggNonceBytes([u8; 66], [Option<PublicKey>; 2]);

impl AggNonceBytes {
    /// Validates that each half is a valid compressed point or 33 zero bytes.
    pub fn from_bytes(bytes: [u8; 66]) -> Result<Self, ProtoError> {
        let (a, b) = split66(&bytes);
        let half = |h: [u8; 33], field| {
            if h == [0u8; 33] {
                Ok(None)
            } else {
                check_point(h, field).map(Some)
            }
        };
        let points = [
            half(a, "aggregate nonce R1")?,
            half(b, "aggregate nonce R2")?,
        ];
        Ok(AggNonceBytes(bytes, points))
    }

    /// Sums public nonces (BIP327 NonceAgg). Returns `None` for an empty list.
    pub fn aggregate(nonces: &[PubNonceBytes]) -> Option<AggNonceBytes> {
        if nonces.is_empty() {
            return None;
        }
        let parsed: Vec<musig2_core::PubNonce> = nonces
            .iter()
            .map(|n| musig2_core::PubNonce::from_points(n.points[0], n.points[1]))
            .collect();
        Some(AggNonceBytes::from(musig2_core::AggNonce::aggregate(
            &parsed,
        )))
    }

    /// The 66 bytes.
    pub fn to_bytes(self) -> [u8; 66] {
        self.0
    }

    /// The 66 bytes by reference.
    pub fn as_bytes(&self) -> &[u8; 66] {
        &self.0
    }

    /// The aggregate nonce as the core signs under it (parsed once, at construction).
    pub fn to_core(&self) -> musig2_core::AggNonce {
        musig2_core::AggNonce::from_points(self.1[0], self.1[1])
    }
}
array_newtype_serde!(AggNonceBytes, 66, AggNonceBytes::from_bytes);

impl From<musig2_core::AggNonce> for AggNonceBytes {
    /// The encoding of an aggregate the core computed (valid by construction: no check).
    fn from(aggregate: musig2_core::AggNonce) -> AggNonceBytes {
        let (r1, r2) = aggregate.points();
        AggNonceBytes(aggregate.to_bytes(), [r1, r2])
    }
}

/// A BIP327 partial signature: a 32-byte big-endian scalar below the curve order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartialSigBytes([u8; 32]);

impl PartialSigBytes {
    /// Validates that the value is below the curve order.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, ProtoError> {
        Scalar::from_be_bytes(bytes).map_err(|_| ProtoError::InvalidScalar {
            field: "partial signature",
        })?;
        Ok(PartialSigBytes(bytes))
    }

    /// The 32 bytes.
    pub fn to_bytes(self) -> [u8; 32] {
        self.0
    }
}
array_newtype_serde!(PartialSigBytes, 32, PartialSigBytes::from_bytes);

/// A BIP327 tweak: a scalar below the curve order, applied as a plain or x-only tweak.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Tweak {
    value: [u8; 32],
    x_only: bool,
}

impl Tweak {
    /// Validates the tweak value (must be below the curve order).
    pub fn new(value: [u8; 32], x_only: bool) -> Result<Self, ProtoError> {
        Scalar::from_be_bytes(value).map_err(|_| ProtoError::InvalidScalar { field: "tweak" })?;
        Ok(Tweak { value, x_only })
    }

    /// The 32-byte big-endian tweak value.
    pub fn value(&self) -> [u8; 32] {
        self.value
    }

    /// Whether this is an x-only tweak (as for Taproot) rather than a plain one.
    pub fn is_x_only(&self) -> bool {
        self.x_only
    }
}

impl Serialize for Tweak {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tup = serializer.serialize_tuple(2)?;
        tup.serialize_element(&TweakValue(self.value))?;
        tup.serialize_element(&self.x_only)?;
        tup.end()
    }
}

/// Helper so the tweak value serializes as 32 raw bytes.
struct TweakValue([u8; 32]);

impl Serialize for TweakValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        byte_array::serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Tweak {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw(#[serde(with = "byte_array")] [u8; 32], bool);
        let raw = Raw::deserialize(deserializer)?;
        Tweak::new(raw.0, raw.1).map_err(de_error)
    }
}

/// A nonce commitment: `tagged_hash("musig2-p2p/nonce-commitment", session id, signer, attempt,
/// public nonce)`. See [`NonceCommitment::compute`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NonceCommitment([u8; 32]);

impl NonceCommitment {
    /// Wraps raw commitment bytes (any 32 bytes are syntactically valid, so this cannot fail).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        NonceCommitment(bytes)
    }

    /// The 32 bytes.
    pub fn to_bytes(self) -> [u8; 32] {
        self.0
    }

    pub(crate) fn from_hash(bytes: [u8; 32]) -> Self {
        NonceCommitment(bytes)
    }

    fn validated(bytes: [u8; 32]) -> Result<Self, ProtoError> {
        Ok(NonceCommitment(bytes))
    }
}
array_newtype_serde!(NonceCommitment, 32, NonceCommitment::validated);

/// A 64-byte BIP340 signature as carried on the wire (checked by whoever relies on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signature64(#[serde(with = "byte_array")] pub [u8; 64]);

impl Signature64 {
    /// The signature bytes.
    pub fn to_bytes(self) -> [u8; 64] {
        self.0
    }
}

impl From<[u8; 64]> for Signature64 {
    fn from(bytes: [u8; 64]) -> Self {
        Signature64(bytes)
    }
}
