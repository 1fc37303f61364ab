//! A real libp2p node: the swarm runs in its own task, the handle talks to it over bounded
//! channels.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use libp2p::kad::store::RecordStore;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle, dial_opts::DialOpts};
use libp2p::{
    Multiaddr, StreamProtocol, Swarm, allow_block_list, autonat, connection_limits, dcutr,
    identify, identity, kad, noise, ping, relay, tcp, yamux,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::frame_behaviour::FrameBehaviour;
use crate::frame_stream::{InboundFrames, InboundLimits, Links};
use crate::record_quota::RecordQuota;
use crate::relay::{Reachability, RelayLimits, circuit_listen_addr};
use crate::{
    Inbound, PeerEvent, PeerId, RecordMeta, RecordValidator, Result, SendReport, Transport,
    TransportError,
};

/// The Kademlia protocol of this network (kept apart from the public IPFS DHT).
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/musig2-p2p/kad/1.0.0");

/// Addresses kept per peer given through `add_address`, and peers kept.
const MAX_ADDRESSES_PER_PEER: usize = 8;
const MAX_ADDRESS_BOOK: usize = 16 * 1024;

/// Bytes Kademlia needs around a record value in one packet (key, publisher, framing).
const KAD_PACKET_OVERHEAD: usize = 8 * 1024;

/// Where the node's identity comes from.
#[derive(Clone, Debug, Default)]
pub enum KeySource {
    /// A fresh ed25519 key.
    #[default]
    Generate,
    /// An ed25519 secret stored in a file: 32 raw bytes, or 64 hex digits (see
    /// [`Libp2pTransport::write_key_file`]).
    Ed25519File(PathBuf),
    /// An ed25519 secret given directly.
    Ed25519Secret([u8; 32]),
    /// A ready keypair.
    Keypair(identity::Keypair),
}

impl KeySource {
    /// The peer id this identity gives (loading it, so a bad key file is an error here).
    pub fn peer_id(&self) -> Result<PeerId> {
        Ok(PeerId::from_libp2p(self.load()?.public().to_peer_id()))
    }

    fn load(&self) -> Result<identity::Keypair> {
        match self {
            Self::Generate => Ok(identity::Keypair::generate_ed25519()),
            Self::Ed25519Secret(secret) => ed25519_from_secret(*secret),
            Self::Keypair(kp) => Ok(kp.clone()),
            Self::Ed25519File(path) => {
                let raw = std::fs::read(path).map_err(|e| {
                    TransportError::Config(format!("cannot read key file {}: {e}", path.display()))
                })?;
                let secret = parse_secret(&raw).ok_or_else(|| {
                    TransportError::Config(format!(
                        "key file {} holds neither 32 raw bytes nor 64 hex digits",
                        path.display()
                    ))
                })?;
                ed25519_from_secret(secret)
            }
        }
    }
}

/// Splits a full peer address such as `/ip4/192.0.2.7/tcp/4001/p2p/12D3Koo...` into the peer id
/// and the address to dial it on (for [`Libp2pConfig::bootstrap`]); `None` if `addr` does not
/// end in `/p2p/<peer id>`.
pub fn split_peer_address(mut addr: Multiaddr) -> Option<(PeerId, Multiaddr)> {
    match addr.pop()? {
        libp2p::multiaddr::Protocol::P2p(peer) => Some((PeerId::from_libp2p(peer), addr)),
        _ => None,
    }
}

/// Creates the file `path` for a secret (a key file): fails if it exists, and on Unix the file
/// is readable and writable by its owner only (mode 0600) from the moment it exists.
pub fn create_owner_only_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn ed25519_from_secret(secret: [u8; 32]) -> Result<identity::Keypair> {
    identity::Keypair::ed25519_from_bytes(secret)
        .map_err(|e| TransportError::Config(format!("invalid ed25519 secret: {e}")))
}

fn parse_secret(raw: &[u8]) -> Option<[u8; 32]> {
    if let Ok(secret) = <[u8; 32]>::try_from(raw) {
        return Some(secret);
    }
    let text = std::str::from_utf8(raw).ok()?.trim();
    if text.len() != 64 {
        return None;
    }
    let mut secret = [0u8; 32];
    for (i, byte) in secret.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(secret)
}

/// Settings of one libp2p node. `Default` listens on an ephemeral TCP port of 127.0.0.1.
#[derive(Clone, Debug)]
pub struct Libp2pConfig {
    /// Addresses to listen on (TCP, and QUIC with `/udp/N/quic-v1`).
    pub listen_addrs: Vec<Multiaddr>,
    /// Peers to connect to at start and to bootstrap Kademlia from.
    pub bootstrap: Vec<(PeerId, Multiaddr)>,
    /// The node's identity.
    pub key: KeySource,
    /// Largest frame sent or accepted, in bytes (enforced while reading).
    pub max_frame: usize,
    /// Largest DHT record value, in bytes. Kademlia's packet limit is raised with it (its default
    /// of 16 KiB would otherwise make larger puts fail as a quorum failure).
    pub max_record: usize,
    /// Most records the local Kademlia store holds.
    pub max_records: usize,
    /// Of `max_records`, how many are kept for this node's own puts (records other peers ask
    /// it to store never take them).
    pub reserved_local_records: usize,
    /// Most records stored for other peers per owner (as the record validator names it, e.g.
    /// the key that signed an announcement; without one, the publishing peer).
    pub max_records_per_owner: usize,
    /// Most established connections.
    pub max_connections: u32,
    /// Frames accepted per second from one peer (token bucket with this burst); 0 = unlimited.
    /// Frames over it are answered "rate limited" (the sender may retry) and the peer is
    /// reported as [`PeerEvent::RateLimited`].
    pub inbound_rate_per_sec: u32,
    /// Bytes accepted per second from one peer (token bucket holding one second's worth, at
    /// least one largest frame); 0 = unlimited.
    pub inbound_bytes_per_sec: u64,
    /// Capacity of the inbound frame queue.
    pub inbound_capacity: usize,
    /// Most bytes of frames waiting in the inbound queue (further frames are answered "busy").
    pub max_inbound_queue_bytes: usize,
    /// Capacity of the command queue from handle to swarm task.
    pub command_capacity: usize,
    /// Most sends and DHT operations in flight at once; further callers wait for a slot.
    pub max_in_flight: usize,
    /// Capacity of the connect/disconnect event queue.
    pub event_capacity: usize,
    /// How long a frame may wait for its acknowledgement.
    pub send_timeout: Duration,
    /// How long this node may hold back its acceptance of a frame its sender marked as able to
    /// wait ([`Transport::send_pipelined`]), to acknowledge several frames in one write (at most
    /// [`crate::ACK_BATCH`]; any other answer takes the held ones with it). Zero answers every
    /// frame at once. Delivery is never delayed, only the sender's result (ADR 0024). Keep it
    /// far below the send timeouts of the nodes that send to this one (`send_timeout`, and a
    /// signing node's `message_send_timeout`, 5 s by default): an answer held longer fails
    /// their send, which they then retry.
    pub ack_delay: Duration,
    /// How long a DHT put or get may take, including waiting for the first DHT peers.
    pub dht_timeout: Duration,
    /// How long an idle connection is kept open; keep it at least as long as a session (the
    /// libp2p default of 10 s closes connections mid-session).
    pub idle_connection_timeout: Duration,
    /// Record TTL used when the publisher does not give one (Kademlia's `record_ttl`).
    pub default_record_ttl: Duration,
    /// Filters records that other peers ask this node to store; rejected records are not stored.
    pub record_validator: Option<RecordValidator>,
    /// Addresses other nodes can reach this one at that it cannot see itself (e.g. behind port
    /// forwarding); announced to peers with the listen addresses.
    pub external_addrs: Vec<Multiaddr>,
    /// A Prometheus registry to add libp2p's own metrics to (swarm, Kademlia, identify, ping,
    /// relay, DCUtR, bandwidth); none by default.
    pub metrics: Option<Arc<Mutex<libp2p::metrics::Registry>>>,
    /// Offer circuit relay v2 to other peers within these limits (`None`: not a relay). A relay
    /// hands out its external addresses in reservations, so give it `external_addrs` (or let
    /// AutoNAT confirm one) or no peer can reserve a slot.
    pub relay_server: Option<RelayLimits>,
    /// Relays to listen through, each `<multiaddr>/p2p/<relay id>`: the node reserves a slot
    /// on each, announces `.../p2p/<relay id>/p2p-circuit` as its address, and keeps the
    /// reservation (renewing it, and reserving again after the relay was lost).
    pub relays: Vec<Multiaddr>,
    /// Whether AutoNAT only trusts probes of public IP addresses (libp2p's default). Turn it off
    /// on a LAN or test network where every address is private.
    pub autonat_only_global_ips: bool,
    /// How long AutoNAT waits after start before its first probe.
    pub autonat_boot_delay: Duration,
}

impl Default for Libp2pConfig {
    fn default() -> Self {
        Self {
            listen_addrs: vec![local_tcp_addr()],
            bootstrap: Vec::new(),
            key: KeySource::Generate,
            max_frame: 1024 * 1024,
            max_record: 64 * 1024,
            max_records: 4096,
            reserved_local_records: 1024,
            max_records_per_owner: 32,
            max_connections: 256,
            inbound_rate_per_sec: 2000,
            inbound_bytes_per_sec: 8 * 1024 * 1024,
            inbound_capacity: 1024,
            max_inbound_queue_bytes: 16 * 1024 * 1024,
            command_capacity: 256,
            max_in_flight: 4096,
            event_capacity: 1024,
            send_timeout: Duration::from_secs(10),
            ack_delay: Duration::from_millis(5),
            dht_timeout: Duration::from_secs(30),
            idle_connection_timeout: Duration::from_secs(3600),
            default_record_ttl: Duration::from_secs(3600),
            record_validator: None,
            external_addrs: Vec::new(),
            metrics: None,
            relay_server: None,
            relays: Vec::new(),
            autonat_only_global_ips: true,
            autonat_boot_delay: Duration::from_secs(5),
        }
    }
}

/// Where a node can be reached, as its swarm sees it now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkAddresses {
    /// Every address the node listens on; a listen on `0.0.0.0` or `::` shows each interface.
    pub listen: Vec<Multiaddr>,
    /// Addresses announced as reachable from outside (configured, or confirmed).
    pub external: Vec<Multiaddr>,
    /// Addresses other peers saw this node's connections come from (identify), newest last.
    /// Candidates only: an outbound connection's port is usually not a listening one.
    pub observed: Vec<Multiaddr>,
    /// Whether peers can dial this node directly, as AutoNAT found.
    pub reachability: Reachability,
    /// Relays this node holds a reservation on now (its `/p2p-circuit` addresses are in
    /// `listen`).
    pub relays: Vec<PeerId>,
}

/// Most observed addresses kept.
const MAX_OBSERVED: usize = 8;

/// Refuses a TCP listen address whose port another socket already listens on. libp2p sets
/// `SO_REUSEPORT` on its listeners, so without this check two nodes share a port silently.
fn check_port_free(addr: &Multiaddr) -> Result<()> {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    let mut port = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            // Only plain TCP listens are checked (QUIC runs over UDP).
            Protocol::Udp(_) => return Ok(()),
            _ => {}
        }
    }
    let (Some(ip), Some(port)) = (ip, port) else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind((ip, port)) {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(TransportError::Config(
            format!("cannot listen on {addr}: port {port} is in use by another program"),
        )),
        Err(e) => Err(TransportError::Config(format!(
            "cannot listen on {addr}: {e}"
        ))),
    }
}

fn local_tcp_addr() -> Multiaddr {
    Multiaddr::from(std::net::Ipv4Addr::LOCALHOST).with(libp2p::multiaddr::Protocol::Tcp(0))
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    frames: FrameBehaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    relay_client: relay::client::Behaviour,
    relay: Toggle<relay::Behaviour>,
    autonat: autonat::Behaviour,
    dcutr: dcutr::Behaviour,
}

impl Behaviour {
    fn new(
        key: &identity::Keypair,
        relay_client: relay::client::Behaviour,
        frames: FrameBehaviour,
        config: &Libp2pConfig,
    ) -> Self {
        let local = key.public().to_peer_id();
        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(config.max_connections)),
        );
        let store = kad::store::MemoryStore::with_config(
            local,
            kad::store::MemoryStoreConfig {
                max_records: config.max_records,
                max_value_bytes: config.max_record,
                ..Default::default()
            },
        );
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config
            .set_query_timeout(config.dht_timeout)
            .set_record_ttl(Some(config.default_record_ttl))
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            .set_max_packet_size(config.max_record + KAD_PACKET_OVERHEAD);
        let mut kad = kad::Behaviour::with_config(local, store, kad_config);
        // Client mode (the default until an external address is confirmed) makes every put fail
        // with QuorumFailed and every get return not-found.
        kad.set_mode(Some(kad::Mode::Server));
        // Pushed address updates: a relayed address (reserved after the connection to the relay
        // came up) reaches the peers, and through them the DHT, at once rather than at the next
        // periodic identify minutes later.
        let identify = identify::Behaviour::new(
            identify::Config::new("/musig2-p2p/1.0.0".to_owned(), key.public())
                .with_push_listen_addr_updates(true),
        );
        let relay = config
            .relay_server
            .as_ref()
            .map(|limits| relay::Behaviour::new(local, limits.to_libp2p()));
        let autonat = autonat::Behaviour::new(
            local,
            autonat::Config {
                only_global_ips: config.autonat_only_global_ips,
                boot_delay: config.autonat_boot_delay,
                ..autonat::Config::default()
            },
        );
        Self {
            blocked: allow_block_list::Behaviour::default(),
            limits,
            frames,
            kad,
            identify,
            ping: ping::Behaviour::default(),
            relay_client,
            relay: Toggle::from(relay),
            autonat,
            dcutr: dcutr::Behaviour::new(local),
        }
    }
}

enum DhtReply {
    Done(Result<Vec<u8>>),
    /// No DHT peer yet (or the put reached none): the handle waits and retries.
    Retry(TransportError),
}

enum Command {
    Put {
        record: kad::Record,
        reply: oneshot::Sender<DhtReply>,
    },
    Get {
        key: Vec<u8>,
        validator: RecordValidator,
        reply: oneshot::Sender<DhtReply>,
    },
    AddAddress {
        peer: PeerId,
        addr: Multiaddr,
    },
    Remove {
        key: Vec<u8>,
    },
    Dial {
        peer: PeerId,
        reply: oneshot::Sender<Result<()>>,
    },
    RoutingTableSize {
        reply: oneshot::Sender<usize>,
    },
    Block {
        peer: PeerId,
        blocked: bool,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Addresses {
        reply: oneshot::Sender<NetworkAddresses>,
    },
    Bootstrap,
    Shutdown,
}

/// A libp2p node implementing [`Transport`].
///
/// Build one with [`Libp2pTransport::spawn`], or a connected group on loopback with
/// [`Libp2pTransport::spawn_local_network`]. Dropping the handle stops the swarm task as well.
pub struct Libp2pTransport {
    id: PeerId,
    max_frame: usize,
    max_record: usize,
    dht_timeout: Duration,
    send_timeout: Duration,
    listen_addrs: Vec<Multiaddr>,
    commands: mpsc::Sender<Command>,
    links: Links,
    frames_in: Arc<InboundFrames>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    in_flight: tokio::sync::Semaphore,
    inbound: tokio::sync::Mutex<mpsc::Receiver<Inbound>>,
    /// Bytes waiting in `inbound` (see `Libp2pConfig::max_inbound_queue_bytes`).
    queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    events_tx: Mutex<Option<broadcast::Sender<PeerEvent>>>,
    initial_events: Mutex<Option<broadcast::Receiver<PeerEvent>>>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Libp2pTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libp2pTransport")
            .field("id", &self.id)
            .field("listen_addrs", &self.listen_addrs)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Libp2pTransport {
    /// Starts a node: builds the swarm, listens on every configured address (waiting until each
    /// has its actual address, so ephemeral ports are known), dials the bootstrap peers, and runs
    /// the swarm in its own task. Must be called inside a tokio runtime.
    pub async fn spawn(config: Libp2pConfig) -> Result<Self> {
        if config.max_frame == 0 || config.max_frame > u32::MAX as usize {
            return Err(TransportError::Config(
                "max_frame must be between 1 and u32::MAX".to_owned(),
            ));
        }
        if config.listen_addrs.is_empty() {
            return Err(TransportError::Config("no listen address".to_owned()));
        }
        let keypair = config.key.load()?;
        let id = PeerId::from_libp2p(keypair.public().to_peer_id());
        let behaviour_config = config.clone();
        let idle = config.idle_connection_timeout;
        // One queued inbound stream per possible connection: each peer opens one and keeps it.
        let (frames, incoming) = FrameBehaviour::new(config.max_connections as usize);
        let opener = frames.opener();
        for addr in &config.listen_addrs {
            check_port_free(addr)?;
        }
        // libp2p's metrics go to the caller's registry, or to one nobody reads. The lock is
        // held in this block only: no await may see it.
        let (mut swarm, metrics) = {
            let mut scratch = libp2p::metrics::Registry::default();
            let mut shared = config.metrics.as_ref().map(|r| lock(r));
            let registry = shared.as_deref_mut().unwrap_or(&mut scratch);
            let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
                .with_tokio()
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux::Config::default,
                )
                .map_err(|e| TransportError::Config(format!("tcp transport: {e}")))?
                .with_quic()
                .with_relay_client(noise::Config::new, yamux::Config::default)
                .map_err(|e| TransportError::Config(format!("relay client transport: {e}")))?
                .with_bandwidth_metrics(registry)
                .with_behaviour(|key, relay_client| {
                    Behaviour::new(key, relay_client, frames, &behaviour_config)
                })
                .map_err(|e| TransportError::Config(format!("behaviour: {e}")))?
                .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
                .build();
            let metrics = config
                .metrics
                .is_some()
                .then(|| libp2p::metrics::Metrics::new(registry));
            (swarm, metrics)
        };
        for addr in &config.external_addrs {
            swarm.add_external_address(addr.clone());
        }

        let mut pending_listeners = HashSet::new();
        for addr in &config.listen_addrs {
            let listener = swarm
                .listen_on(addr.clone())
                .map_err(|e| TransportError::Config(format!("cannot listen on {addr}: {e}")))?;
            pending_listeners.insert(listener);
        }
        let mut listen_addrs = Vec::new();
        let wait = async {
            while !pending_listeners.is_empty() {
                match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr {
                        listener_id,
                        address,
                    } => {
                        pending_listeners.remove(&listener_id);
                        listen_addrs.push(address);
                    }
                    SwarmEvent::ListenerClosed { reason, .. } => {
                        return Err(TransportError::Config(format!(
                            "listener closed: {reason:?}"
                        )));
                    }
                    SwarmEvent::ListenerError { error, .. } => {
                        return Err(TransportError::Config(format!("listener error: {error}")));
                    }
                    _ => {}
                }
            }
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .map_err(|_| TransportError::Timeout {
                operation: "listen",
                after: Duration::from_secs(10),
            })??;

        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_capacity.max(1));
        let queued_bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (events_tx, events_rx) = broadcast::channel(config.event_capacity.max(1));
        let frames_in = InboundFrames::new(
            inbound_tx,
            InboundLimits {
                max_frame: config.max_frame,
                rate: config.inbound_rate_per_sec,
                byte_rate: config.inbound_bytes_per_sec,
                body_timeout: config.send_timeout,
                max_queued_bytes: config.max_inbound_queue_bytes,
                ack_delay: config.ack_delay,
            },
            Some(events_tx.downgrade()),
            queued_bytes.clone(),
        );
        let accept_task = Arc::clone(&frames_in).spawn_accept(incoming);
        let links = Links::new(opener, config.idle_connection_timeout);

        let mut actor = Actor::new(swarm, Arc::clone(&frames_in), &config);
        actor.metrics = metrics;
        for (peer, addr) in &config.bootstrap {
            actor.add_address(*peer, addr.clone());
            if let Err(e) = actor.dial(*peer) {
                tracing::debug!(%peer, error = %e, "bootstrap dial failed");
            }
        }
        for addr in &config.relays {
            let Some((relay, listen)) = circuit_listen_addr(addr) else {
                return Err(TransportError::Config(format!(
                    "relay address {addr} does not end in /p2p/<relay peer id>"
                )));
            };
            let mut dial = addr.clone();
            dial.pop();
            actor.add_address(PeerId::from_libp2p(relay), dial);
            actor.relay_listens.push(RelayListen {
                relay,
                addr: listen,
                listener: None,
            });
        }
        actor.reserve();

        let (commands, command_rx) = mpsc::channel(config.command_capacity.max(1));
        actor.events_tx = Some(events_tx.clone());
        let span = tracing::debug_span!("libp2p_transport", peer = %id);
        let task = tokio::spawn(tracing::Instrument::instrument(actor.run(command_rx), span));

        Ok(Self {
            id,
            max_frame: config.max_frame,
            max_record: config.max_record,
            dht_timeout: config.dht_timeout,
            send_timeout: config.send_timeout,
            listen_addrs,
            commands,
            links,
            frames_in,
            accept_task: Mutex::new(Some(accept_task)),
            in_flight: tokio::sync::Semaphore::new(config.max_in_flight.max(1)),
            inbound: tokio::sync::Mutex::new(inbound_rx),
            queued_bytes,
            events_tx: Mutex::new(Some(events_tx)),
            initial_events: Mutex::new(Some(events_rx)),
            task: tokio::sync::Mutex::new(Some(task)),
        })
    }

    /// Starts `n` nodes on 127.0.0.1 with ephemeral ports, all bootstrapped off node 0, and waits
    /// until every node's Kademlia routing table holds every other node (so DHT puts and gets
    /// work at once). `config.listen_addrs`, `config.bootstrap` and `config.key` are replaced
    /// (each node gets a fresh key); everything else applies to every node.
    pub async fn spawn_local_network(n: usize, config: Libp2pConfig) -> Result<Vec<Self>> {
        Self::spawn_local_network_with(vec![config; n]).await
    }

    /// Like [`Libp2pTransport::spawn_local_network`], with one configuration per node (for
    /// example different frame limits). Node 0 is the bootstrap node.
    pub async fn spawn_local_network_with(configs: Vec<Libp2pConfig>) -> Result<Vec<Self>> {
        let n = configs.len();
        let mut nodes: Vec<Self> = Vec::with_capacity(n);
        let mut wait_limit = Duration::from_secs(10);
        for mut config in configs {
            config.listen_addrs = vec![local_tcp_addr()];
            config.key = KeySource::Generate;
            config.bootstrap = nodes
                .first()
                .map(|first| vec![(first.id, first.listen_addrs[0].clone())])
                .unwrap_or_default();
            wait_limit = wait_limit.max(config.dht_timeout);
            nodes.push(Self::spawn(config).await?);
        }
        let deadline = tokio::time::Instant::now() + wait_limit;
        loop {
            let mut ready = true;
            for node in &nodes {
                // A Kademlia bucket holds at most K_VALUE (20) peers, so large networks can
                // never list everyone; that many entries is as full as a table gets here.
                let wanted = (n - 1).min(libp2p::kad::K_VALUE.get());
                if node.routing_table_size().await? < wanted {
                    ready = false;
                    node.bootstrap().await?;
                }
            }
            if ready {
                return Ok(nodes);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TransportError::Timeout {
                    operation: "local network routing tables",
                    after: wait_limit,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`Transport::send`] and [`Transport::send_pipelined`]; `later`: mark the frame
    /// [`crate::ANSWER_LATER`].
    async fn send_frame(&self, to: PeerId, frame: Bytes, later: bool) -> Result<()> {
        if frame.len() > self.max_frame {
            return Err(TransportError::FrameTooLarge {
                size: frame.len(),
                max: self.max_frame,
            });
        }
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| TransportError::Closed)?;
        if to == self.id {
            return self.frames_in.deliver_local(to, frame);
        }
        self.links
            .send(to, frame, self.send_timeout, later, || self.dial(to))
            .await
    }

    /// The addresses the node listens on (with ephemeral ports resolved).
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Number of peers in the Kademlia routing table.
    pub async fn routing_table_size(&self) -> Result<usize> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::RoutingTableSize { reply }).await?;
        rx.await.map_err(|_| TransportError::Closed)
    }

    /// Peers with at least one open connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::ConnectedPeers { reply }).await?;
        rx.await.map_err(|_| TransportError::Closed)
    }

    /// Where the node can be reached now: every listen address (each interface of an
    /// unspecified listen), external addresses and the addresses peers observed.
    pub async fn addresses(&self) -> Result<NetworkAddresses> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Addresses { reply }).await?;
        rx.await.map_err(|_| TransportError::Closed)
    }

    /// Starts a Kademlia bootstrap (a lookup of our own id) if the routing table has any peer.
    pub async fn bootstrap(&self) -> Result<()> {
        self.command(Command::Bootstrap).await
    }

    /// Writes a fresh ed25519 secret as 64 hex digits to a new file at `path` (for
    /// [`KeySource::Ed25519File`]) and returns the peer id it gives. The file must not exist
    /// yet; on Unix it is created readable by its owner only (mode 0600).
    pub fn write_key_file(path: &Path) -> Result<PeerId> {
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rng(), secret.as_mut());
        let id = ed25519_from_secret(*secret)?.public().to_peer_id();
        let hex = Zeroizing::new(
            secret
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        );
        let cannot = |e: std::io::Error| {
            TransportError::Config(format!("cannot write key file {}: {e}", path.display()))
        };
        let mut file = create_owner_only_file(path).map_err(cannot)?;
        std::io::Write::write_all(&mut file, hex.as_bytes()).map_err(cannot)?;
        file.sync_all().map_err(cannot)?;
        Ok(PeerId::from_libp2p(id))
    }

    async fn command(&self, command: Command) -> Result<()> {
        self.commands
            .send(command)
            .await
            .map_err(|_| TransportError::Closed)
    }

    /// Runs a DHT command, waiting and retrying while the node has no DHT peers yet.
    async fn dht_with_retry(
        &self,
        operation: &'static str,
        make: impl Fn(oneshot::Sender<DhtReply>) -> Command,
    ) -> Result<Vec<u8>> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| TransportError::Closed)?;
        let deadline = tokio::time::Instant::now() + self.dht_timeout;
        let mut backoff = Duration::from_millis(25);
        loop {
            let (reply, rx) = oneshot::channel();
            self.command(make(reply)).await?;
            let answer = tokio::time::timeout_at(deadline, rx)
                .await
                .map_err(|_| TransportError::Timeout {
                    operation,
                    after: self.dht_timeout,
                })?
                .map_err(|_| TransportError::Closed)?;
            match answer {
                DhtReply::Done(result) => return result,
                DhtReply::Retry(error) => {
                    if tokio::time::Instant::now() + backoff >= deadline {
                        return Err(error);
                    }
                    tracing::debug!(operation, %error, ?backoff, "DHT not ready, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

#[async_trait]
impl Transport for Libp2pTransport {
    fn local_peer_id(&self) -> PeerId {
        self.id
    }

    fn max_frame_size(&self) -> usize {
        self.max_frame
    }

    async fn send(&self, to: PeerId, frame: Bytes) -> Result<()> {
        self.send_frame(to, frame, false).await
    }

    async fn send_pipelined(&self, to: PeerId, frame: Bytes) -> Result<()> {
        self.send_frame(to, frame, true).await
    }

    async fn send_many(&self, to: &[PeerId], frame: Bytes) -> Vec<SendReport> {
        crate::send_many_with(self, to, frame).await
    }

    async fn recv(&self) -> Result<Inbound> {
        let inbound = self
            .inbound
            .lock()
            .await
            .recv()
            .await
            .ok_or(TransportError::Closed)?;
        self.queued_bytes
            .fetch_sub(inbound.frame.len(), std::sync::atomic::Ordering::AcqRel);
        Ok(inbound)
    }

    async fn dht_put(&self, key: Vec<u8>, value: Vec<u8>, ttl: Duration) -> Result<()> {
        if value.len() > self.max_record {
            return Err(TransportError::RecordTooLarge {
                size: value.len(),
                max: self.max_record,
            });
        }
        // Kademlia carries the remaining TTL in whole seconds, truncated, and 0 means "never
        // expires": a 1 s record sent 10 ms later would arrive as immortal. Round up to whole
        // seconds and add one second of slack so remote peers get at least the asked TTL.
        let secs = (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1) + 1;
        let ttl = Duration::from_secs(secs);
        let expires = std::time::Instant::now().checked_add(ttl);
        self.dht_with_retry("dht_put", |reply| {
            let mut record = kad::Record::new(key.clone(), value.clone());
            record.expires = expires;
            Command::Put { record, reply }
        })
        .await
        .map(drop)
    }

    async fn dht_get(&self, key: Vec<u8>, validator: RecordValidator) -> Result<Vec<u8>> {
        self.dht_with_retry("dht_get", |reply| Command::Get {
            key: key.clone(),
            validator: validator.clone(),
            reply,
        })
        .await
    }

    async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> Result<()> {
        self.command(Command::AddAddress { peer, addr }).await
    }

    async fn dht_remove(&self, key: Vec<u8>) -> Result<()> {
        self.command(Command::Remove { key }).await
    }

    async fn dial(&self, peer: PeerId) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Dial { peer, reply }).await?;
        tokio::time::timeout(self.send_timeout, rx)
            .await
            .map_err(|_| TransportError::Timeout {
                operation: "dial",
                after: self.send_timeout,
            })?
            .map_err(|_| TransportError::Closed)?
    }

    async fn block_peer(&self, peer: PeerId) -> Result<()> {
        self.command(Command::Block {
            peer,
            blocked: true,
        })
        .await?;
        // Our stream to the peer goes with its connections.
        self.links.close(peer);
        Ok(())
    }

    async fn unblock_peer(&self, peer: PeerId) -> Result<()> {
        self.command(Command::Block {
            peer,
            blocked: false,
        })
        .await
    }

    fn events(&self) -> broadcast::Receiver<PeerEvent> {
        if let Some(rx) = lock(&self.initial_events).take() {
            return rx;
        }
        match lock(&self.events_tx).as_ref() {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    async fn shutdown(&self) -> Result<()> {
        let mut task = self.task.lock().await;
        let Some(handle) = task.take() else {
            return Ok(());
        };
        lock(&self.events_tx).take();
        lock(&self.initial_events).take();
        // Callers waiting for an in-flight slot get `Closed`.
        self.in_flight.close();
        self.links.close_all();
        let accept = lock(&self.accept_task).take();
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await;
        }
        // If the queue is full the task still sees the closed channel once we are dropped; a
        // closed channel means the task is already gone.
        let _ = self.commands.send(Command::Shutdown).await;
        if let Err(e) = handle.await {
            tracing::warn!(error = %e, "swarm task ended abnormally");
        }
        // Frames still queued are released with the node.
        let mut inbound = self.inbound.lock().await;
        inbound.close();
        while inbound.try_recv().is_ok() {}
        Ok(())
    }
}

struct GetQuery {
    key: Vec<u8>,
    validator: RecordValidator,
    reply: oneshot::Sender<DhtReply>,
}

/// A relay this node listens through (`Libp2pConfig::relays`).
struct RelayListen {
    relay: libp2p::PeerId,
    /// `<relay address>/p2p-circuit`.
    addr: Multiaddr,
    /// The listener while it is open (it closes when the reservation fails or the relay goes).
    listener: Option<libp2p::core::transport::ListenerId>,
}

/// How often relay listeners that closed are opened again.
const RELAY_RETRY: Duration = Duration::from_secs(5);

/// The swarm task's state.
struct Actor {
    swarm: Swarm<Behaviour>,
    max_record: usize,
    default_ttl: Duration,
    validator: Option<RecordValidator>,
    quota: RecordQuota,
    frames_in: Arc<InboundFrames>,
    events_tx: Option<broadcast::Sender<PeerEvent>>,
    known: HashSet<PeerId>,
    /// Addresses given through `add_address` (Kademlia's buckets may have no room for them).
    addresses: HashMap<PeerId, Vec<Multiaddr>>,
    puts: HashMap<kad::QueryId, oneshot::Sender<DhtReply>>,
    gets: HashMap<kad::QueryId, GetQuery>,
    /// DHT lookups of peers a dial had no address for (or whose addresses all failed).
    lookups: HashMap<kad::QueryId, PeerId>,
    /// Peers whose dial failed on every known address and that were looked up in the DHT
    /// again for fresh ones; a second failure answers the waiting dials.
    relooked: HashSet<PeerId>,
    dials: HashMap<PeerId, Vec<oneshot::Sender<Result<()>>>>,
    bootstrapped: bool,
    observed: Vec<Multiaddr>,
    metrics: Option<libp2p::metrics::Metrics>,
    relay_listens: Vec<RelayListen>,
    /// Relays that accepted a reservation, until their listener closes.
    reservations: HashSet<libp2p::PeerId>,
    reachability: Reachability,
}

impl Actor {
    fn new(swarm: Swarm<Behaviour>, frames_in: Arc<InboundFrames>, config: &Libp2pConfig) -> Self {
        Self {
            swarm,
            max_record: config.max_record,
            default_ttl: config.default_record_ttl,
            validator: config.record_validator.clone(),
            quota: RecordQuota::new(
                config
                    .max_records
                    .saturating_sub(config.reserved_local_records),
                config.max_records_per_owner,
            ),
            frames_in,
            events_tx: None,
            known: HashSet::new(),
            addresses: HashMap::new(),
            puts: HashMap::new(),
            gets: HashMap::new(),
            lookups: HashMap::new(),
            relooked: HashSet::new(),
            dials: HashMap::new(),
            bootstrapped: false,
            observed: Vec::new(),
            metrics: None,
            relay_listens: Vec::new(),
            reservations: HashSet::new(),
            reachability: Reachability::Unknown,
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut relay_retry = tokio::time::interval(RELAY_RETRY);
        relay_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None | Some(Command::Shutdown) => break,
                    Some(command) => self.on_command(command),
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = relay_retry.tick(), if !self.relay_listens.is_empty() => self.reserve(),
            }
        }
        tracing::debug!("swarm task stopping");
    }

    /// Listens through every relay whose listener is not open: on a connected relay the relay
    /// client asks for a reservation at once (the listener closes if it is refused or the relay
    /// goes); a relay not connected is dialled first, and `reserve` runs again once it is (a
    /// dial by the relay client itself would be refused while another dial to the relay is
    /// under way, closing the listener).
    fn reserve(&mut self) {
        let waiting: Vec<(usize, libp2p::PeerId)> = self
            .relay_listens
            .iter()
            .enumerate()
            .filter(|(_, l)| l.listener.is_none())
            .map(|(i, l)| (i, l.relay))
            .collect();
        for (i, relay) in waiting {
            if !self.swarm.is_connected(&relay) {
                if let Err(error) = self.dial(PeerId::from_libp2p(relay)) {
                    tracing::debug!(%relay, %error, "cannot dial the relay");
                }
                continue;
            }
            let addr = self.relay_listens[i].addr.clone();
            match self.swarm.listen_on(addr) {
                Ok(id) => self.relay_listens[i].listener = Some(id),
                Err(error) => tracing::debug!(%relay, %error, "cannot listen through the relay"),
            }
        }
    }

    /// A listener closed: if it was a relay's, the reservation is gone until `reserve` runs.
    fn on_listener_closed(
        &mut self,
        id: libp2p::core::transport::ListenerId,
        error: Option<std::io::Error>,
    ) {
        for listen in &mut self.relay_listens {
            if listen.listener == Some(id) {
                listen.listener = None;
                self.reservations.remove(&listen.relay);
                tracing::info!(
                    relay = %listen.relay,
                    error = ?error,
                    "relay listener closed; reserving again"
                );
            }
        }
    }

    fn routing_table_size(&mut self) -> usize {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum()
    }

    fn add_address(&mut self, peer: PeerId, addr: Multiaddr) {
        self.known.insert(peer);
        if self.addresses.len() < MAX_ADDRESS_BOOK || self.addresses.contains_key(&peer) {
            let known = self.addresses.entry(peer).or_default();
            if !known.contains(&addr) {
                if known.len() == MAX_ADDRESSES_PER_PEER {
                    known.remove(0);
                }
                known.push(addr.clone());
            }
        }
        self.swarm.add_peer_address(peer.to_libp2p(), addr.clone());
        self.swarm
            .behaviour_mut()
            .kad
            .add_address(&peer.to_libp2p(), addr);
    }

    /// Dials `peer` on the addresses we were given and those Kademlia knows.
    fn dial(&mut self, peer: PeerId) -> std::result::Result<(), libp2p::swarm::DialError> {
        let addresses = self.addresses.get(&peer).cloned().unwrap_or_default();
        self.swarm.dial(
            DialOpts::peer_id(peer.to_libp2p())
                .addresses(addresses)
                .extend_addresses_through_behaviour()
                .build(),
        )
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Put { record, reply } => {
                if self.routing_table_size() == 0 {
                    let _ = reply.send(DhtReply::Retry(TransportError::QuorumFailed(
                        "no DHT peers yet".to_owned(),
                    )));
                    return;
                }
                match self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, kad::Quorum::One)
                {
                    Ok(id) => {
                        self.puts.insert(id, reply);
                    }
                    Err(kad::store::Error::ValueTooLarge) => {
                        let _ = reply.send(DhtReply::Done(Err(TransportError::RecordTooLarge {
                            size: 0,
                            max: self.max_record,
                        })));
                    }
                    Err(e) => {
                        let _ = reply.send(DhtReply::Done(Err(TransportError::QuorumFailed(
                            format!("local store: {e}"),
                        ))));
                    }
                }
            }
            Command::Get {
                key,
                validator,
                reply,
            } => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                let local_has = kad.store_mut().get(&kad::RecordKey::new(&key)).is_some();
                if !local_has && self.routing_table_size() == 0 {
                    let _ = reply.send(DhtReply::Retry(TransportError::NotFound));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_record(kad::RecordKey::new(&key));
                self.gets.insert(
                    id,
                    GetQuery {
                        key,
                        validator,
                        reply,
                    },
                );
            }
            Command::AddAddress { peer, addr } => self.add_address(peer, addr),
            Command::Remove { key } => {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .remove_record(&kad::RecordKey::new(&key));
            }
            Command::Dial { peer, reply } => {
                let local = peer.to_libp2p() == *self.swarm.local_peer_id();
                if local || self.swarm.is_connected(&peer.to_libp2p()) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                if self.dials.contains_key(&peer) {
                    // A dial or lookup for this peer is under way; its outcome answers this too.
                    self.dials.entry(peer).or_default().push(reply);
                    return;
                }
                match self.dial(peer) {
                    // A dial already in progress (Kademlia's) answers this one too.
                    Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {
                        self.dials.entry(peer).or_default().push(reply)
                    }
                    // No address here: ask the DHT where the peer is.
                    Err(libp2p::swarm::DialError::NoAddresses) if self.routing_table_size() > 0 => {
                        let query = self
                            .swarm
                            .behaviour_mut()
                            .kad
                            .get_closest_peers(peer.to_libp2p());
                        self.lookups.insert(query, peer);
                        self.dials.entry(peer).or_default().push(reply);
                    }
                    Err(libp2p::swarm::DialError::NoAddresses) => {
                        let _ = reply.send(Err(TransportError::UnknownPeer(peer)));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(TransportError::Unreachable {
                            peer,
                            reason: e.to_string(),
                        }));
                    }
                }
            }
            Command::RoutingTableSize { reply } => {
                let _ = reply.send(self.routing_table_size());
            }
            Command::Block { peer, blocked } => {
                let list = &mut self.swarm.behaviour_mut().blocked;
                if blocked {
                    // Also closes every connection to the peer.
                    list.block_peer(peer.to_libp2p());
                } else {
                    list.unblock_peer(peer.to_libp2p());
                }
            }
            Command::ConnectedPeers { reply } => {
                let peers = self
                    .swarm
                    .connected_peers()
                    .map(|p| PeerId::from_libp2p(*p))
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Addresses { reply } => {
                let _ = reply.send(NetworkAddresses {
                    listen: self.swarm.listeners().cloned().collect(),
                    external: self.swarm.external_addresses().cloned().collect(),
                    observed: self.observed.clone(),
                    reachability: self.reachability.clone(),
                    relays: self
                        .reservations
                        .iter()
                        .map(|p| PeerId::from_libp2p(*p))
                        .collect(),
                });
            }
            Command::Bootstrap => {
                // NoKnownPeers only means there is nothing to do yet.
                let _ = self.swarm.behaviour_mut().kad.bootstrap();
            }
            Command::Shutdown => {}
        }
    }

    fn emit(&self, event: PeerEvent) {
        if let Some(tx) = &self.events_tx {
            let _ = tx.send(event);
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(metrics) = &self.metrics {
            use libp2p::metrics::Recorder;
            match &event {
                SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => metrics.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => metrics.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => metrics.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Relay(e)) => metrics.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => metrics.record(e),
                _ => {}
            }
            metrics.record(&event);
        }
        if let SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
            info,
            ..
        })) = &event
        {
            if !self.observed.contains(&info.observed_addr) {
                if self.observed.len() == MAX_OBSERVED {
                    self.observed.remove(0);
                }
                self.observed.push(info.observed_addr.clone());
            }
        }
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal,
                    ..
                },
            )) => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "relay accepted our reservation");
                }
                self.reservations.insert(relay_peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => {
                self.reachability = Reachability::from_nat(&new);
                tracing::info!(reachability = self.reachability.name(), "AutoNAT status");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(event)) => {
                tracing::debug!(peer = %event.remote_peer_id, result = ?event.result, "DCUtR");
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => self.on_listener_closed(listener_id, reason.err()),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocols.contains(&KAD_PROTOCOL) => {
                // Without this, peers that dialled us are in Kademlia without an address.
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
                self.known.insert(PeerId::from_libp2p(peer_id));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } => {
                let peer = PeerId::from_libp2p(peer_id);
                self.known.insert(peer);
                self.relooked.remove(&peer);
                for reply in self.dials.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
                if num_established.get() == 1 {
                    self.emit(PeerEvent::Connected(peer));
                }
                if !self.bootstrapped {
                    self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                }
                if self
                    .relay_listens
                    .iter()
                    .any(|l| l.relay == peer_id && l.listener.is_none())
                {
                    self.reserve();
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                let peer = PeerId::from_libp2p(peer_id);
                self.frames_in.forget(peer);
                self.emit(PeerEvent::Disconnected(peer));
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer_id),
                error,
                ..
            } => {
                let peer = PeerId::from_libp2p(peer_id);
                if !self.swarm.is_connected(&peer_id) {
                    // The addresses known may be stale (a peer that moved, or that became
                    // reachable through a relay since): ask the DHT once before giving up.
                    if self.dials.contains_key(&peer)
                        && self.relooked.insert(peer)
                        && self.routing_table_size() > 0
                    {
                        let query = self.swarm.behaviour_mut().kad.get_closest_peers(peer_id);
                        self.lookups.insert(query, peer);
                        return;
                    }
                    self.relooked.remove(&peer);
                    for reply in self.dials.remove(&peer).unwrap_or_default() {
                        let _ = reply.send(Err(TransportError::Unreachable {
                            peer,
                            reason: error.to_string(),
                        }));
                    }
                }
            }
            _ => {}
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(mut record),
                        ..
                    },
            } => {
                let now = std::time::Instant::now();
                if record.expires.is_none() {
                    record.expires = now.checked_add(self.default_ttl);
                }
                let meta = if record.value.len() > self.max_record {
                    None
                } else {
                    match &self.validator {
                        Some(v) => v.meta(record.key.as_ref(), &record.value),
                        None => Some(RecordMeta {
                            owner: Vec::new(),
                            valid_until: None,
                        }),
                    }
                };
                let Some(meta) = meta else {
                    tracing::debug!(%source, "rejected an inbound DHT record");
                    return;
                };
                // Never kept past what it says it is valid for, whatever TTL was asked.
                if let Some(until) = meta.valid_until {
                    let left = until
                        .duration_since(std::time::SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    let cap = now.checked_add(left);
                    record.expires = match (record.expires, cap) {
                        (Some(e), Some(c)) => Some(e.min(c)),
                        (e, c) => e.or(c),
                    };
                }
                let owner = if meta.owner.is_empty() {
                    source.to_bytes()
                } else {
                    meta.owner
                };
                let store = self.swarm.behaviour_mut().kad.store_mut();
                let admitted = self
                    .quota
                    .admit(&record.key, owner, record.expires, now, |k| {
                        store.get(k).is_some()
                    });
                if let Err(why) = admitted {
                    tracing::debug!(%source, ?why, "refused an inbound DHT record over quota");
                    return;
                }
                if let Err(e) = store.put(record) {
                    tracing::debug!(%source, error = %e, "could not store an inbound DHT record");
                }
            }
            kad::Event::RoutingUpdated { peer, .. } => {
                self.known.insert(PeerId::from_libp2p(peer));
            }
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                kad::QueryResult::PutRecord(result) => {
                    if let Some(reply) = self.puts.remove(&id) {
                        let answer = match result {
                            Ok(_) => DhtReply::Done(Ok(Vec::new())),
                            Err(kad::PutRecordError::QuorumFailed { .. }) => DhtReply::Retry(
                                TransportError::QuorumFailed("no peer stored the record".into()),
                            ),
                            Err(kad::PutRecordError::Timeout { .. }) => {
                                DhtReply::Done(Err(TransportError::Timeout {
                                    operation: "dht_put",
                                    after: Duration::ZERO,
                                }))
                            }
                        };
                        let _ = reply.send(answer);
                    }
                }
                kad::QueryResult::GetRecord(result) => self.on_get(id, result, step.last),
                kad::QueryResult::GetClosestPeers(result) if step.last => {
                    self.on_lookup(id, result)
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// A DHT lookup for a peer we had no address for ended: dial it if it was found.
    fn on_lookup(&mut self, id: kad::QueryId, result: kad::GetClosestPeersResult) {
        let Some(peer) = self.lookups.remove(&id) else {
            return;
        };
        let found = match result {
            Ok(kad::GetClosestPeersOk { peers, .. })
            | Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers
                .into_iter()
                .find(|info| info.peer_id == peer.to_libp2p())
                .map(|info| info.addrs),
        };
        for addr in found.unwrap_or_default() {
            self.add_address(peer, addr);
        }
        if self.swarm.is_connected(&peer.to_libp2p()) {
            for reply in self.dials.remove(&peer).unwrap_or_default() {
                let _ = reply.send(Ok(()));
            }
            return;
        }
        let error = match self.dial(peer) {
            Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => return,
            Err(libp2p::swarm::DialError::NoAddresses) => TransportError::UnknownPeer(peer),
            Err(e) => TransportError::Unreachable {
                peer,
                reason: e.to_string(),
            },
        };
        self.relooked.remove(&peer);
        for reply in self.dials.remove(&peer).unwrap_or_default() {
            let _ = reply.send(Err(error.clone()));
        }
    }

    fn on_get(&mut self, id: kad::QueryId, result: kad::GetRecordResult, last: bool) {
        let Some(query) = self.gets.remove(&id) else {
            return;
        };
        let found = match result {
            Ok(kad::GetRecordOk::FoundRecord(peer_record)) => {
                let record = peer_record.record;
                let fresh = !record.is_expired(std::time::Instant::now());
                (fresh && query.validator.validate(&query.key, &record.value))
                    .then_some(record.value)
            }
            Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. }) => None,
            Err(kad::GetRecordError::Timeout { .. }) => {
                let _ = query
                    .reply
                    .send(DhtReply::Done(Err(TransportError::Timeout {
                        operation: "dht_get",
                        after: Duration::ZERO,
                    })));
                return;
            }
            Err(_) => {
                let _ = query
                    .reply
                    .send(DhtReply::Done(Err(TransportError::NotFound)));
                return;
            }
        };
        match found {
            Some(value) => {
                if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                    q.finish();
                }
                let _ = query.reply.send(DhtReply::Done(Ok(value)));
            }
            None if last => {
                let _ = query
                    .reply
                    .send(DhtReply::Done(Err(TransportError::NotFound)));
            }
            None => {
                self.gets.insert(id, query);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_split_into_id_and_dial_address() {
        let id = PeerId::from_libp2p(identity::Keypair::generate_ed25519().public().to_peer_id());
        let dial: Multiaddr = "/ip4/192.0.2.7/tcp/4001".parse().expect("addr");
        let full = dial
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(id.to_libp2p()));
        assert_eq!(split_peer_address(full), Some((id, dial.clone())));
        assert_eq!(split_peer_address(dial), None);
        assert_eq!(split_peer_address(Multiaddr::empty()), None);
    }

    #[test]
    fn secret_parsing_accepts_raw_and_hex_only() {
        let raw = [7u8; 32];
        assert_eq!(parse_secret(&raw), Some(raw));
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_secret(hex.as_bytes()), Some(raw));
        assert_eq!(parse_secret(format!("{hex}\n").as_bytes()), Some(raw));
        assert_eq!(parse_secret(b"short"), None);
        assert_eq!(parse_secret(&[b'z'; 64]), None);
    }
}
