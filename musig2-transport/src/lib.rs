#![doc = include_str!("../README.md")]

mod error;
mod frame_behaviour;
mod frame_stream;
mod libp2p_transport;
mod memory;
mod record_quota;
mod relay;
mod types;

use std::time::Duration;

use async_trait::async_trait;

pub use bytes::Bytes;
pub use error::TransportError;
pub use frame_stream::{ACK_BATCH, ANSWER_LATER, FRAME_PROTOCOL, FrameStatus};
pub use libp2p::Multiaddr;
pub use libp2p_transport::{
    KeySource, Libp2pConfig, Libp2pTransport, NetworkAddresses, create_owner_only_file,
    split_peer_address,
};
pub use memory::{Delay, LinkFault, MemoryConfig, MemoryNetwork, MemoryTransport};
pub use relay::{Reachability, RelayLimits, is_relayed};
pub use types::{Inbound, PeerEvent, PeerId, RecordMeta, RecordValidator, SendReport};

/// Result alias of this crate.
pub type Result<T, E = TransportError> = std::result::Result<T, E>;

/// A node's view of the network: frames to and from peers, a DHT, and connectivity events.
///
/// Implementations: [`MemoryTransport`] and [`Libp2pTransport`]. The trait is object safe.
#[async_trait]
pub trait Transport: Send + Sync {
    /// This node's peer id.
    fn local_peer_id(&self) -> PeerId;

    /// The largest frame this node sends or accepts, in bytes.
    fn max_frame_size(&self) -> usize;

    /// Sends one frame to `to` and waits until the remote node has accepted it into its inbound
    /// queue (acknowledged delivery).
    ///
    /// Errors: [`TransportError::FrameTooLarge`] before anything is sent,
    /// [`TransportError::UnknownPeer`] when no address is known, [`TransportError::Unreachable`],
    /// [`TransportError::Timeout`], [`TransportError::Backpressure`] when the remote queue is full
    /// or the remote rate-limits us, [`TransportError::Closed`] after shutdown.
    async fn send(&self, to: PeerId, frame: Bytes) -> Result<()>;

    /// [`Transport::send`] for a caller that pipelines its frames and makes no progress by
    /// this one's result (a node's outbound queue). The frame is delivered as promptly as by
    /// `send`, with the same errors; only the result may come later: the receiver may hold its
    /// acceptance back briefly to acknowledge several frames in one write (over libp2p, up to
    /// its `Libp2pConfig::ack_delay`; see ADR 0024). The default is `send`.
    async fn send_pipelined(&self, to: PeerId, frame: Bytes) -> Result<()> {
        self.send(to, frame).await
    }

    /// Sends the same frame to every peer in `to` concurrently and reports one result per peer,
    /// in the order of `to`. One slow or failed peer does not delay the others' results beyond
    /// the send timeout.
    async fn send_many(&self, to: &[PeerId], frame: Bytes) -> Vec<SendReport>;

    /// Waits for the next inbound frame. Cancellation safe. Returns
    /// [`TransportError::Closed`] once the node is shut down (or crashed).
    async fn recv(&self) -> Result<Inbound>;

    /// Stores `value` under `key` in the DHT for `ttl`.
    ///
    /// Waits and retries while the node has no DHT peers yet, up to the DHT timeout. The libp2p
    /// implementation rounds `ttl` up to whole seconds and adds one (Kademlia's wire granularity),
    /// so a record may outlive `ttl` by up to two seconds there.
    async fn dht_put(&self, key: Vec<u8>, value: Vec<u8>, ttl: Duration) -> Result<()>;

    /// Returns the first unexpired value stored under `key` that `validator` accepts; records the
    /// validator rejects (poisoned records) are skipped.
    async fn dht_get(&self, key: Vec<u8>, validator: RecordValidator) -> Result<Vec<u8>>;

    /// Stops serving and republishing the record this node put under `key` (copies other peers
    /// hold expire with their TTL). A key this node never put is fine.
    async fn dht_remove(&self, key: Vec<u8>) -> Result<()>;

    /// Tells the node that `peer` can be reached at `addr`.
    async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> Result<()>;

    /// Connects to `peer` (using known addresses) and waits until connected.
    async fn dial(&self, peer: PeerId) -> Result<()>;

    /// Cuts `peer` off: closes the connections to it and refuses its connections and frames, and
    /// ours to it, until [`Transport::unblock_peer`]. For peers that misbehave.
    async fn block_peer(&self, peer: PeerId) -> Result<()>;

    /// Lets a blocked peer connect again.
    async fn unblock_peer(&self, peer: PeerId) -> Result<()>;

    /// A bounded receiver of connect / disconnect events. The first call returns a receiver that
    /// holds every event since the node started; later calls subscribe from now on. A receiver
    /// that falls behind gets `RecvError::Lagged` rather than unbounded buffering.
    fn events(&self) -> tokio::sync::broadcast::Receiver<PeerEvent>;

    /// Stops the node: closes connections and listeners, ends the event stream, and makes every
    /// later call return [`TransportError::Closed`]. Idempotent.
    async fn shutdown(&self) -> Result<()>;
}

/// Runs `send` to every peer concurrently; shared by the implementations.
pub(crate) async fn send_many_with<T: Transport + ?Sized>(
    transport: &T,
    to: &[PeerId],
    frame: Bytes,
) -> Vec<SendReport> {
    let futures = to.iter().map(|peer| {
        let frame = frame.clone();
        async move {
            SendReport {
                peer: *peer,
                result: transport.send(*peer, frame).await,
            }
        }
    });
    futures::future::join_all(futures).await
}
