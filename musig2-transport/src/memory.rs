//! An in-process network for tests and benchmarks, with a seeded fault plan.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use libp2p::Multiaddr;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::{
    Inbound, PeerEvent, PeerId, RecordValidator, Result, SendReport, Transport, TransportError,
};

/// Settings shared by every node of a [`MemoryNetwork`].
#[derive(Clone, Debug)]
pub struct MemoryConfig {
    /// Seed for peer ids and for every fault decision.
    pub seed: u64,
    /// Default frame size limit of a node, in bytes.
    pub max_frame: usize,
    /// DHT record value size limit, in bytes.
    pub max_record: usize,
    /// Capacity of each node's inbound queue.
    pub inbound_capacity: usize,
    /// Capacity of each node's event queue.
    pub event_capacity: usize,
    /// How long a send waits for delivery; a dropped frame fails with a timeout after this.
    pub send_timeout: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            max_frame: 1024 * 1024,
            max_record: 64 * 1024,
            inbound_capacity: 1024,
            event_capacity: 1024,
            send_timeout: Duration::from_secs(5),
        }
    }
}

/// How long the network holds a frame before delivering it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Delay {
    /// Deliver immediately.
    #[default]
    None,
    /// Always this long.
    Fixed(Duration),
    /// Uniformly random in `[min, max]`, drawn from the network's seeded generator.
    Uniform {
        /// Shortest delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
}

/// Faults applied to frames on a link (or from/to a node). Every random choice comes from the
/// network's seeded generator, so a run is reproducible from the seed under a paused clock.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct LinkFault {
    /// Probability that a frame is lost; the sender's `send` then fails with a timeout.
    pub drop: f64,
    /// Delay before delivery.
    pub delay: Delay,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
    /// Probability that a frame is held back by `reorder_hold`, so frames sent after it
    /// (concurrently) overtake it.
    pub reorder: f64,
    /// How long a reordered frame is held back.
    pub reorder_hold: Duration,
}

impl LinkFault {
    /// No fault.
    pub fn none() -> Self {
        Self::default()
    }

    /// Drops frames with probability `p`.
    pub fn with_drop(mut self, p: f64) -> Self {
        self.drop = p;
        self
    }

    /// Delays frames.
    pub fn with_delay(mut self, delay: Delay) -> Self {
        self.delay = delay;
        self
    }

    /// Duplicates frames with probability `p`.
    pub fn with_duplicate(mut self, p: f64) -> Self {
        self.duplicate = p;
        self
    }

    /// Holds frames back by `hold` with probability `p`.
    pub fn with_reorder(mut self, p: f64, hold: Duration) -> Self {
        self.reorder = p;
        self.reorder_hold = hold;
        self
    }

    fn decide(&self, rng: &mut ChaCha8Rng) -> Decision {
        let mut chance = |p: f64| p > 0.0 && rng.random_bool(p.clamp(0.0, 1.0));
        let dropped = chance(self.drop);
        let duplicate = chance(self.duplicate);
        let reorder = chance(self.reorder);
        let mut delay = match self.delay {
            Delay::None => Duration::ZERO,
            Delay::Fixed(d) => d,
            Delay::Uniform { min, max } if max > min => {
                let span = u64::try_from((max - min).as_nanos()).unwrap_or(u64::MAX);
                min + Duration::from_nanos(rng.random_range(0..=span))
            }
            Delay::Uniform { min, .. } => min,
        };
        if reorder {
            delay += self.reorder_hold;
        }
        Decision {
            dropped,
            delay,
            copies: if duplicate { 2 } else { 1 },
        }
    }
}

struct Decision {
    dropped: bool,
    delay: Duration,
    copies: usize,
}

struct Slot {
    generation: u64,
    up: bool,
    max_frame: usize,
    inbound_tx: Option<mpsc::Sender<Inbound>>,
    events_tx: broadcast::Sender<PeerEvent>,
}

struct DhtEntry {
    publisher: PeerId,
    value: Vec<u8>,
    expires: Instant,
}

struct State {
    rng: ChaCha8Rng,
    next_index: u64,
    nodes: HashMap<PeerId, Slot>,
    order: Vec<PeerId>,
    default_fault: LinkFault,
    node_faults: HashMap<PeerId, LinkFault>,
    link_faults: HashMap<(PeerId, PeerId), LinkFault>,
    groups: HashMap<PeerId, usize>,
    partitioned: bool,
    /// (blocker, blocked) pairs: no frames either way while present.
    blocked: HashSet<(PeerId, PeerId)>,
    dht: HashMap<Vec<u8>, Vec<DhtEntry>>,
}

impl State {
    fn up(&self, peer: &PeerId) -> bool {
        self.nodes.get(peer).is_some_and(|s| s.up)
    }

    fn group(&self, peer: &PeerId) -> usize {
        self.groups.get(peer).copied().unwrap_or(usize::MAX)
    }

    fn reachable(&self, a: &PeerId, b: &PeerId) -> bool {
        self.up(a)
            && self.up(b)
            && (!self.partitioned || self.group(a) == self.group(b))
            && !self.blocked.contains(&(*a, *b))
            && !self.blocked.contains(&(*b, *a))
    }

    fn connected_pairs(&self) -> HashSet<(PeerId, PeerId)> {
        let mut set = HashSet::new();
        for (i, a) in self.order.iter().enumerate() {
            for b in &self.order[i + 1..] {
                if self.reachable(a, b) {
                    set.insert((*a, *b));
                }
            }
        }
        set
    }

    /// Emits connect/disconnect events for every pair whose reachability changed.
    fn emit_diff(&self, before: &HashSet<(PeerId, PeerId)>) {
        for (i, a) in self.order.iter().enumerate() {
            for b in &self.order[i + 1..] {
                let was = before.contains(&(*a, *b));
                let is = self.reachable(a, b);
                if was == is {
                    continue;
                }
                let (ev_a, ev_b) = if is {
                    (PeerEvent::Connected(*b), PeerEvent::Connected(*a))
                } else {
                    (PeerEvent::Disconnected(*b), PeerEvent::Disconnected(*a))
                };
                self.notify(a, ev_a);
                self.notify(b, ev_b);
            }
        }
    }

    /// Emits a connect event for every pair the newly added `peer` forms, as `emit_diff` would
    /// (the new node is last in `order`).
    fn emit_added(&self, peer: &PeerId) {
        for a in &self.order {
            if a != peer && self.reachable(a, peer) {
                self.notify(a, PeerEvent::Connected(*peer));
                self.notify(peer, PeerEvent::Connected(*a));
            }
        }
    }

    fn notify(&self, peer: &PeerId, event: PeerEvent) {
        if let Some(slot) = self.nodes.get(peer).filter(|s| s.up) {
            // No receiver is fine: nobody is listening.
            let _ = slot.events_tx.send(event);
        }
    }

    fn fault_for(&self, from: &PeerId, to: &PeerId) -> LinkFault {
        self.link_faults
            .get(&(*from, *to))
            .or_else(|| self.node_faults.get(from))
            .or_else(|| self.node_faults.get(to))
            .copied()
            .unwrap_or(self.default_fault)
    }
}

struct Hub {
    config: MemoryConfig,
    state: Mutex<State>,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than losing the whole network, so recover the guard.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A hub connecting any number of [`MemoryTransport`] nodes in one process.
///
/// Cloning the network gives another handle to the same hub. Nodes are connected to every other
/// node unless crashed or partitioned. The DHT is one record store shared by the whole hub
/// (partitions do not split it); each publisher holds one value per key and
/// [`Transport::dht_get`] returns the first valid one in publication order.
#[derive(Clone)]
pub struct MemoryNetwork {
    hub: Arc<Hub>,
}

impl MemoryNetwork {
    /// A network with default settings and the given seed.
    pub fn new(seed: u64) -> Self {
        Self::with_config(MemoryConfig {
            seed,
            ..MemoryConfig::default()
        })
    }

    /// A network with explicit settings.
    pub fn with_config(config: MemoryConfig) -> Self {
        let state = State {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            next_index: 0,
            nodes: HashMap::new(),
            order: Vec::new(),
            default_fault: LinkFault::none(),
            node_faults: HashMap::new(),
            link_faults: HashMap::new(),
            groups: HashMap::new(),
            partitioned: false,
            blocked: HashSet::new(),
            dht: HashMap::new(),
        };
        Self {
            hub: Arc::new(Hub {
                config,
                state: Mutex::new(state),
            }),
        }
    }

    /// The network's settings.
    pub fn config(&self) -> &MemoryConfig {
        &self.hub.config
    }

    /// Adds a node with the network's default frame limit.
    pub fn add_node(&self) -> MemoryTransport {
        self.add_node_with_max_frame(self.hub.config.max_frame)
    }

    /// Adds a node with its own frame size limit (frames larger than this are rejected both when
    /// it sends and when it would receive them).
    pub fn add_node_with_max_frame(&self, max_frame: usize) -> MemoryTransport {
        let mut st = self.hub.lock();
        let index = st.next_index;
        st.next_index += 1;
        let mut key_rng = ChaCha8Rng::seed_from_u64(self.hub.config.seed);
        key_rng.set_stream(index + 1);
        let mut secret = [0u8; 32];
        key_rng.fill_bytes(&mut secret);
        let id = match libp2p::identity::Keypair::ed25519_from_bytes(secret) {
            Ok(kp) => PeerId::from_libp2p(kp.public().to_peer_id()),
            // Every 32-byte string is a valid ed25519 secret; keep a distinct id regardless.
            Err(_) => PeerId::from_libp2p(libp2p::PeerId::random()),
        };
        let (handle, slot) = self.make_node(id, 0, max_frame);
        st.nodes.insert(id, slot);
        st.order.push(id);
        // Only pairs with the new node can change: O(n) per node added, not a scan of every
        // pair (which made building a 1,000-node network cubic).
        st.emit_added(&id);
        handle
    }

    fn make_node(&self, id: PeerId, generation: u64, max_frame: usize) -> (MemoryTransport, Slot) {
        let (inbound_tx, inbound_rx) = mpsc::channel(self.hub.config.inbound_capacity.max(1));
        let (events_tx, events_rx) = broadcast::channel(self.hub.config.event_capacity.max(1));
        let slot = Slot {
            generation,
            up: true,
            max_frame,
            inbound_tx: Some(inbound_tx),
            events_tx,
        };
        let handle = MemoryTransport {
            hub: Arc::clone(&self.hub),
            id,
            generation,
            max_frame,
            inbound: tokio::sync::Mutex::new(inbound_rx),
            initial_events: Mutex::new(Some(events_rx)),
        };
        (handle, slot)
    }

    /// Every node ever added (including crashed ones), in the order they were added.
    pub fn peers(&self) -> Vec<PeerId> {
        let st = self.hub.lock();
        st.order
            .iter()
            .filter(|p| st.nodes.contains_key(p))
            .copied()
            .collect()
    }

    /// Applies `fault` to frames sent from `from` to `to` (one direction). Takes precedence over
    /// node and default faults.
    pub fn set_link_fault(&self, from: PeerId, to: PeerId, fault: LinkFault) {
        self.hub.lock().link_faults.insert((from, to), fault);
    }

    /// Applies `fault` to every frame sent by or to `peer` (unless a link fault is set).
    pub fn set_node_fault(&self, peer: PeerId, fault: LinkFault) {
        self.hub.lock().node_faults.insert(peer, fault);
    }

    /// Applies `fault` to every frame without a more specific fault.
    pub fn set_default_fault(&self, fault: LinkFault) {
        self.hub.lock().default_fault = fault;
    }

    /// Removes every fault (partitions and crashes are not affected).
    pub fn clear_faults(&self) {
        let mut st = self.hub.lock();
        st.default_fault = LinkFault::none();
        st.node_faults.clear();
        st.link_faults.clear();
    }

    /// Splits the network: nodes in the same group reach each other, nodes in different groups do
    /// not. Nodes listed in no group form one more group together. Emits disconnect events.
    pub fn partition(&self, groups: &[Vec<PeerId>]) {
        let mut st = self.hub.lock();
        let before = st.connected_pairs();
        st.groups.clear();
        for (i, group) in groups.iter().enumerate() {
            for peer in group {
                st.groups.insert(*peer, i);
            }
        }
        st.partitioned = true;
        st.emit_diff(&before);
    }

    /// Removes the partition. Emits connect events.
    pub fn heal(&self) {
        let mut st = self.hub.lock();
        let before = st.connected_pairs();
        st.groups.clear();
        st.partitioned = false;
        st.emit_diff(&before);
    }

    /// Crashes a node: its queued inbound frames are lost, its handle returns
    /// [`TransportError::Closed`], and the others see it disconnect.
    pub fn crash(&self, peer: PeerId) -> Result<()> {
        let mut st = self.hub.lock();
        let before = st.connected_pairs();
        let capacity = self.hub.config.event_capacity.max(1);
        let slot = st
            .nodes
            .get_mut(&peer)
            .ok_or(TransportError::UnknownPeer(peer))?;
        if !slot.up {
            return Ok(());
        }
        slot.up = false;
        slot.inbound_tx = None;
        slot.events_tx = broadcast::channel(capacity).0;
        st.emit_diff(&before);
        Ok(())
    }

    /// Brings a crashed node back with the same peer id and a fresh, empty handle.
    pub fn restart(&self, peer: PeerId) -> Result<MemoryTransport> {
        let mut st = self.hub.lock();
        let before = st.connected_pairs();
        let (generation, max_frame) = match st.nodes.get(&peer) {
            None => return Err(TransportError::UnknownPeer(peer)),
            Some(slot) if slot.up => {
                return Err(TransportError::Config(format!(
                    "node {peer} is not crashed"
                )));
            }
            Some(slot) => (slot.generation + 1, slot.max_frame),
        };
        let (handle, slot) = self.make_node(peer, generation, max_frame);
        st.nodes.insert(peer, slot);
        st.emit_diff(&before);
        Ok(handle)
    }
}

/// One node of a [`MemoryNetwork`].
pub struct MemoryTransport {
    hub: Arc<Hub>,
    id: PeerId,
    generation: u64,
    max_frame: usize,
    inbound: tokio::sync::Mutex<mpsc::Receiver<Inbound>>,
    initial_events: Mutex<Option<broadcast::Receiver<PeerEvent>>>,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl MemoryTransport {
    /// Blocks or unblocks `peer` for this node, with the disconnect / connect events a real
    /// network would give.
    fn set_blocked(&self, peer: PeerId, blocked: bool) -> Result<()> {
        let mut st = self.hub.lock();
        self.alive(&st)?;
        let before = st.connected_pairs();
        if blocked {
            st.blocked.insert((self.id, peer));
        } else {
            st.blocked.remove(&(self.id, peer));
        }
        st.emit_diff(&before);
        Ok(())
    }

    fn alive(&self, st: &State) -> Result<()> {
        match st.nodes.get(&self.id) {
            Some(slot) if slot.up && slot.generation == self.generation => Ok(()),
            _ => Err(TransportError::Closed),
        }
    }

    fn deliver(&self, to: PeerId, generation: u64, frame: Bytes, copies: usize) -> Result<()> {
        let st = self.hub.lock();
        self.alive(&st)?;
        let unreachable = |reason: &str| TransportError::Unreachable {
            peer: to,
            reason: reason.to_owned(),
        };
        let slot = st.nodes.get(&to).ok_or(TransportError::UnknownPeer(to))?;
        if slot.generation != generation || !st.reachable(&self.id, &to) {
            return Err(unreachable("peer went away while the frame was in flight"));
        }
        let tx = slot
            .inbound_tx
            .as_ref()
            .ok_or_else(|| unreachable("peer is down"))?;
        let inbound = Inbound {
            from: self.id,
            frame,
        };
        for _ in 1..copies {
            // The duplicate is best effort; the original below decides the result.
            let _ = tx.try_send(inbound.clone());
        }
        tx.try_send(inbound).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => TransportError::Backpressure(to),
            mpsc::error::TrySendError::Closed(_) => unreachable("peer is down"),
        })
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn local_peer_id(&self) -> PeerId {
        self.id
    }

    fn max_frame_size(&self) -> usize {
        self.max_frame
    }

    async fn send(&self, to: PeerId, frame: Bytes) -> Result<()> {
        let size = frame.len();
        if size > self.max_frame {
            return Err(TransportError::FrameTooLarge {
                size,
                max: self.max_frame,
            });
        }
        let (decision, generation) = {
            let mut st = self.hub.lock();
            self.alive(&st)?;
            let target = st.nodes.get(&to).ok_or(TransportError::UnknownPeer(to))?;
            let (generation, target_max) = (target.generation, target.max_frame);
            if !st.reachable(&self.id, &to) {
                return Err(TransportError::Unreachable {
                    peer: to,
                    reason: "crashed or partitioned".to_owned(),
                });
            }
            if size > target_max {
                return Err(TransportError::FrameTooLarge {
                    size,
                    max: target_max,
                });
            }
            let fault = st.fault_for(&self.id, &to);
            (fault.decide(&mut st.rng), generation)
        };
        let timeout = self.hub.config.send_timeout;
        let timed_out = TransportError::Timeout {
            operation: "send",
            after: timeout,
        };
        if decision.dropped {
            tracing::trace!(from = %self.id, %to, "memory network dropped a frame");
            tokio::time::sleep(timeout).await;
            return Err(timed_out);
        }
        if decision.delay.is_zero() {
            return self.deliver(to, generation, frame, decision.copies);
        }
        if decision.delay >= timeout {
            tokio::time::sleep(timeout).await;
            return Err(timed_out);
        }
        tokio::time::sleep(decision.delay).await;
        self.deliver(to, generation, frame, decision.copies)
    }

    async fn send_many(&self, to: &[PeerId], frame: Bytes) -> Vec<SendReport> {
        crate::send_many_with(self, to, frame).await
    }

    async fn recv(&self) -> Result<Inbound> {
        let mut rx = self.inbound.lock().await;
        let inbound = rx.recv().await.ok_or(TransportError::Closed)?;
        self.alive(&self.hub.lock())?;
        Ok(inbound)
    }

    async fn dht_put(&self, key: Vec<u8>, value: Vec<u8>, ttl: Duration) -> Result<()> {
        let max = self.hub.config.max_record;
        if value.len() > max {
            return Err(TransportError::RecordTooLarge {
                size: value.len(),
                max,
            });
        }
        let mut st = self.hub.lock();
        self.alive(&st)?;
        let now = Instant::now();
        let expires = now + ttl;
        let entries = st.dht.entry(key).or_default();
        entries.retain(|e| e.expires > now);
        match entries.iter_mut().find(|e| e.publisher == self.id) {
            Some(entry) => {
                entry.value = value;
                entry.expires = expires;
            }
            None => entries.push(DhtEntry {
                publisher: self.id,
                value,
                expires,
            }),
        }
        Ok(())
    }

    async fn dht_get(&self, key: Vec<u8>, validator: RecordValidator) -> Result<Vec<u8>> {
        let mut st = self.hub.lock();
        self.alive(&st)?;
        let now = Instant::now();
        let entries = st.dht.get_mut(&key).ok_or(TransportError::NotFound)?;
        entries.retain(|e| e.expires > now);
        entries
            .iter()
            .find(|e| validator.validate(&key, &e.value))
            .map(|e| e.value.clone())
            .ok_or(TransportError::NotFound)
    }

    async fn dht_remove(&self, key: Vec<u8>) -> Result<()> {
        let mut st = self.hub.lock();
        self.alive(&st)?;
        if let Some(entries) = st.dht.get_mut(&key) {
            entries.retain(|e| e.publisher != self.id);
            if entries.is_empty() {
                st.dht.remove(&key);
            }
        }
        Ok(())
    }

    async fn add_address(&self, _peer: PeerId, _addr: Multiaddr) -> Result<()> {
        // Every node of the hub can reach every other; addresses carry no information here.
        self.alive(&self.hub.lock())
    }

    async fn dial(&self, peer: PeerId) -> Result<()> {
        let st = self.hub.lock();
        self.alive(&st)?;
        if !st.nodes.contains_key(&peer) {
            return Err(TransportError::UnknownPeer(peer));
        }
        if !st.reachable(&self.id, &peer) {
            return Err(TransportError::Unreachable {
                peer,
                reason: "crashed, partitioned or blocked".to_owned(),
            });
        }
        Ok(())
    }

    async fn block_peer(&self, peer: PeerId) -> Result<()> {
        self.set_blocked(peer, true)
    }

    async fn unblock_peer(&self, peer: PeerId) -> Result<()> {
        self.set_blocked(peer, false)
    }

    fn events(&self) -> broadcast::Receiver<PeerEvent> {
        let initial = self
            .initial_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(rx) = initial {
            return rx;
        }
        let st = self.hub.lock();
        match st.nodes.get(&self.id) {
            Some(slot) if slot.up && slot.generation == self.generation => {
                slot.events_tx.subscribe()
            }
            // A receiver whose sender is already gone: it reports `Closed` at once.
            _ => broadcast::channel(1).1,
        }
    }

    async fn shutdown(&self) -> Result<()> {
        let mut st = self.hub.lock();
        if self.alive(&st).is_err() {
            return Ok(());
        }
        let before = st.connected_pairs();
        st.emit_diff_removing(&self.id, &before);
        Ok(())
    }
}

impl State {
    /// Removes a node for good and emits its disconnect events.
    fn emit_diff_removing(&mut self, peer: &PeerId, before: &HashSet<(PeerId, PeerId)>) {
        if let Some(slot) = self.nodes.get_mut(peer) {
            slot.up = false;
        }
        self.emit_diff(before);
        self.nodes.remove(peer);
        self.order.retain(|p| p != peer);
    }
}
