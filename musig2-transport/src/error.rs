//! The crate's error type.

use std::time::Duration;

use crate::PeerId;

/// Everything that can go wrong in a transport operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No address is known for the peer (or the memory network has no such node).
    #[error("unknown peer {0}")]
    UnknownPeer(PeerId),
    /// The peer is known but cannot be reached now (crashed, partitioned, dial failed,
    /// connection closed mid-request).
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The operation did not complete in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// Which operation.
        operation: &'static str,
        /// The limit that was hit.
        after: Duration,
    },
    /// A frame exceeds the size limit (of the sender, or of the receiver in the memory network).
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A DHT record value exceeds the configured record size limit.
    #[error("record of {size} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// The value's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The receiver's inbound queue is full or it rate-limits this sender: retry later.
    #[error("peer {0} is applying back-pressure (queue full or rate limited)")]
    Backpressure(PeerId),
    /// The remote peer rejected or broke the exchange (for example it read an oversized frame
    /// and reset the stream).
    #[error("peer {peer} failed the exchange: {reason}")]
    Remote {
        /// The peer.
        peer: PeerId,
        /// What was observed.
        reason: String,
    },
    /// The node was shut down or crashed.
    #[error("transport closed")]
    Closed,
    /// No valid, unexpired record was found under the key.
    #[error("DHT record not found")]
    NotFound,
    /// A DHT put could not be stored on enough peers.
    #[error("DHT quorum failed: {0}")]
    QuorumFailed(String),
    /// A peer id could not be parsed.
    #[error("invalid peer id: {0}")]
    InvalidPeerId(String),
    /// The configuration is invalid (addresses, keys, limits).
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl TransportError {
    /// Whether retrying the same operation later may succeed (timeouts, back-pressure,
    /// unreachable peers, DHT quorum failures).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. }
                | Self::Backpressure(_)
                | Self::Unreachable { .. }
                | Self::QuorumFailed(_)
                | Self::NotFound
        )
    }
}
