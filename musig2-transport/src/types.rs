//! Small value types shared by every implementation.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::TransportError;

/// A peer's identity: a copyable wrapper around a libp2p peer id, used by both implementations
/// (the memory network mints ids from seeded ed25519 keys).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(libp2p::PeerId);

impl PeerId {
    /// Wraps a libp2p peer id.
    pub fn from_libp2p(id: libp2p::PeerId) -> Self {
        Self(id)
    }

    /// The wrapped libp2p peer id.
    pub fn to_libp2p(self) -> libp2p::PeerId {
        self.0
    }

    /// The peer id's canonical byte encoding (a multihash).
    pub fn to_bytes(self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// Whether `bytes` is exactly this peer id's canonical encoding (without allocating it).
    pub fn is_encoded_as(self, bytes: &[u8]) -> bool {
        // A libp2p multihash encodes to at most 2 + 10 + 64 bytes.
        let mut buf = [0u8; 80];
        let multihash: &libp2p::multihash::Multihash<64> = self.0.as_ref();
        match multihash.write(&mut buf[..]) {
            Ok(len) => &buf[..len] == bytes,
            Err(_) => self.to_bytes() == bytes,
        }
    }

    /// Parses the canonical byte encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TransportError> {
        libp2p::PeerId::from_bytes(bytes)
            .map(Self)
            .map_err(|e| TransportError::InvalidPeerId(e.to_string()))
    }
}

impl From<libp2p::PeerId> for PeerId {
    fn from(id: libp2p::PeerId) -> Self {
        Self(id)
    }
}

impl From<PeerId> for libp2p::PeerId {
    fn from(id: PeerId) -> Self {
        id.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.0)
    }
}

impl std::str::FromStr for PeerId {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<libp2p::PeerId>()
            .map(Self)
            .map_err(|e| TransportError::InvalidPeerId(e.to_string()))
    }
}

/// One frame received from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// The peer that delivered the frame (not necessarily its author: frames may be relayed).
    pub from: PeerId,
    /// The frame's bytes.
    pub frame: Bytes,
}

/// A change in connectivity to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerEvent {
    /// The first connection to the peer was established.
    Connected(PeerId),
    /// The last connection to the peer was closed.
    Disconnected(PeerId),
    /// The peer sent faster than its inbound rate limit allows; frames were refused. Reported
    /// at most four times a second per peer.
    RateLimited(PeerId),
}

/// The outcome of sending to one peer in [`Transport::send_many`](crate::Transport::send_many).
#[derive(Debug)]
pub struct SendReport {
    /// The destination.
    pub peer: PeerId,
    /// What happened.
    pub result: Result<(), TransportError>,
}

type ValidatorFn = dyn Fn(&[u8], &[u8]) -> Option<RecordMeta> + Send + Sync;

/// What a validator knows about an acceptable record: who is accountable for it (e.g. the key
/// that signed it) and when it stops being valid. A node stores at most
/// [`Libp2pConfig::max_records_per_owner`](crate::Libp2pConfig::max_records_per_owner) records of
/// one owner for other peers, and never keeps one past its `valid_until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    /// The party the record counts against (opaque bytes; empty = the publishing peer).
    pub owner: Vec<u8>,
    /// When the record stops being valid, whatever TTL its publisher asked for.
    pub valid_until: Option<std::time::SystemTime>,
}

/// Decides whether a DHT record `(key, value)` is acceptable. Used by
/// [`Transport::dht_get`](crate::Transport::dht_get) to skip poisoned records and by
/// [`Libp2pConfig::record_validator`](crate::Libp2pConfig::record_validator) to filter inbound
/// records before they are stored. Cheap to clone.
#[derive(Clone)]
pub struct RecordValidator(Arc<ValidatorFn>);

impl RecordValidator {
    /// A validator from a function of `(key, value)`.
    pub fn new(f: impl Fn(&[u8], &[u8]) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(move |k, v| {
            f(k, v).then(|| RecordMeta {
                owner: Vec::new(),
                valid_until: None,
            })
        }))
    }

    /// A validator that also says who owns an acceptable record and until when it is valid
    /// (see [`RecordMeta`]); `None` rejects the record.
    pub fn with_meta(
        f: impl Fn(&[u8], &[u8]) -> Option<RecordMeta> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(f))
    }

    /// A validator that accepts every record.
    pub fn accept_all() -> Self {
        Self::new(|_, _| true)
    }

    /// Whether the record is acceptable.
    pub fn validate(&self, key: &[u8], value: &[u8]) -> bool {
        (self.0)(key, value).is_some()
    }

    /// The record's owner and validity, if it is acceptable.
    pub fn meta(&self, key: &[u8], value: &[u8]) -> Option<RecordMeta> {
        (self.0)(key, value)
    }
}

impl fmt::Debug for RecordValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordValidator(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_encoded_as_matches_exactly_the_canonical_bytes() {
        let a = PeerId::from_libp2p(libp2p::PeerId::random());
        let b = PeerId::from_libp2p(libp2p::PeerId::random());
        let bytes = a.to_bytes();
        assert!(a.is_encoded_as(&bytes));
        assert!(!b.is_encoded_as(&bytes));
        assert!(!a.is_encoded_as(&bytes[..bytes.len() - 1]));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(!a.is_encoded_as(&longer));
        assert!(!a.is_encoded_as(&[]));
    }
}
