//! Flood bench (issue #9, "Figures"): a victim node flooded over libp2p by a raw peer.
//!
//! A plain binary (`harness = false`). For each flood kind it starts a fresh victim node plus two
//! honest signer nodes on 127.0.0.1 (default `Config` and `Libp2pConfig`, plus the DHT record
//! validator), measures an honest 3-signer session unloaded, then floods the victim from a raw
//! libp2p peer that writes length-prefixed frames on the frame protocol as fast as the stream
//! takes them, never waiting for the one-byte statuses (a separate task counts them), while
//! honest sessions keep running on the victim:
//!
//! * `a` junk frames (random bytes, first byte 0xFF, 160 bytes each);
//! * `b` validly signed envelopes (Join bodies, signed with the flooder's key) for random
//!   session ids: a pool of 4096 distinct frames, cycled;
//! * `c` validly signed announcements naming the victim (2 signers: a creator and the victim,
//!   the victim's peer id listed): a pool of 4096, each with its own fresh creator key (so the
//!   per-creator cap of the un-joined pool does not help; `FLOOD_CREATORS=1` signs them all with
//!   one key), cycled;
//! * `d` a member of a star session on the victim (the flooder's peer id is that member's)
//!   replays the coordinator's AggregateNonce frame, byte for byte, after the victim verified it.
//!
//! Each kind runs twice on fresh nodes: a quiet run (no honest sessions during the flood; its
//! victim CPU per frame is the judged figure; for kind a with a victim that never blocks) and a
//! loaded run (honest sessions back to back during the flood). Measured: bytes and frames sent,
//! the statuses read back, the frames the victim's node took, when the flooder was blocked, the
//! victim's CPU during the flood (only the victim's runtime threads, from
//! `/proc/self/task/*/schedstat`), heap above idle (a counting global allocator: the whole
//! process and the victim's threads), `Node::usage()` at the end, and honest-session latency
//! during the flood against the unloaded median (before and after). See `docs/bench-flood.md`.
//!
//! ```text
//! cargo bench -p musig2-benches --bench flood
//! FLOOD_KIND=b FLOOD_MIB=64 cargo bench -p musig2-benches --bench flood    # one kind, 64 MiB
//! ```
//!
//! Environment: `FLOOD_KIND` (any of `abcd`, default all), `FLOOD_MIB` (flood size, default
//! 1024), `FLOOD_MAX_SECS` (longest flood, default 120), `FLOOD_SESSIONS` (unloaded sessions,
//! default 15), `FLOOD_CREATORS` (creator keys for kind c, default one per announcement),
//! `FLOOD_RATE` (pace the flooder to this many frames per second; default as fast as it can).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, identity, noise, tcp, yamux};
use musig2_benches::heap;
use musig2_coordinator::{
    Config, Event, Node, NodeUsage, Phase, SessionRequest, announcement_record_validator,
};
use musig2_proto::{
    Announcement, Body, ElectionMethod, Envelope, Frame, Limits, PeerIdBytes, SeqNo, SessionId,
    SignerIndex, Topology, decode_frame,
};
use musig2_transport::{
    Bytes, FRAME_PROTOCOL, Inbound, KeySource, Libp2pConfig, Libp2pTransport, PeerEvent, PeerId,
    RecordValidator, SendReport, Transport,
};
use secp256k1::{Keypair, PublicKey};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

// ---- heap: the benches' counting allocator (musig2_benches::heap) -----------------------------

#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;

/// Thread group of the victim runtime (0 is every other thread: main, honest, flooder).
const VICTIM: u8 = 1;

/// Resets the peaks to the current levels; returns the process's and the victim threads'.
fn heap_reset_peak() -> (usize, i64) {
    heap::reset_peaks();
    (heap::now(), victim_heap_now())
}

/// Bytes allocated by the victim runtime's threads and not freed by them (memory that one
/// group allocates and another frees skews it; see `docs/bench-flood.md`).
fn victim_heap_now() -> i64 {
    heap::group_now(VICTIM)
}

fn victim_heap_peak() -> i64 {
    heap::group_peak(VICTIM)
}

// ---- CPU: per runtime, from the kernel's per-thread accounting -------------------------------

/// CPU time used so far by the threads whose name starts with each prefix (`victim`, `honest`,
/// `flooder`), and by all threads, in nanoseconds, from `/proc/self/task/<tid>/schedstat` (the
/// scheduler's exact run time). Runtime threads live as long as their runtime here, so no CPU is
/// lost to threads that exited.
#[derive(Clone, Copy, Default, Debug)]
struct Cpu {
    victim: u64,
    honest: u64,
    flooder: u64,
    all: u64,
}

fn cpu_now() -> Cpu {
    let mut cpu = Cpu::default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return cpu;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        cpu.all += ns;
        if comm.starts_with("victim") {
            cpu.victim += ns;
        } else if comm.starts_with("honest") {
            cpu.honest += ns;
        } else if comm.starts_with("flooder") {
            cpu.flooder += ns;
        }
    }
    cpu
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            victim: self.victim.saturating_sub(o.victim),
            honest: self.honest.saturating_sub(o.honest),
            flooder: self.flooder.saturating_sub(o.flooder),
            all: self.all.saturating_sub(o.all),
        }
    }
}

// ---- a transport wrapper: counts frames taken by the node; captures and withholds (kind d) ----

/// Wraps a node's transport. Counts the frames the node takes from it (for the victim: the
/// frames its transport admitted; one relaxed atomic increment per frame). With `capture` (the
/// kind-d member): records the first AggregateNonce envelope that reaches it (as the
/// single-envelope frame a replayer sends) and from then on drops every frame the member's node
/// sends, so the member never sends its partial signature and the session stays open on the
/// victim for as long as the flood lasts. Everything else delegates.
struct Wrapped {
    inner: Arc<Libp2pTransport>,
    received: Arc<AtomicU64>,
    capture: bool,
    captured: Mutex<Option<(Bytes, bool)>>,
    withhold: AtomicBool,
}

impl Wrapped {
    fn new(inner: Arc<Libp2pTransport>, capture: bool) -> Wrapped {
        Wrapped {
            inner,
            received: Arc::new(AtomicU64::new(0)),
            capture,
            captured: Mutex::new(None),
            withhold: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl Transport for Wrapped {
    fn local_peer_id(&self) -> PeerId {
        self.inner.local_peer_id()
    }
    fn max_frame_size(&self) -> usize {
        self.inner.max_frame_size()
    }
    async fn send(&self, to: PeerId, frame: Bytes) -> musig2_transport::Result<()> {
        if self.withhold.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.inner.send(to, frame).await
    }
    async fn send_pipelined(&self, to: PeerId, frame: Bytes) -> musig2_transport::Result<()> {
        if self.withhold.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.inner.send_pipelined(to, frame).await
    }
    async fn send_many(&self, to: &[PeerId], frame: Bytes) -> Vec<SendReport> {
        let mut out = Vec::with_capacity(to.len());
        for peer in to {
            out.push(SendReport {
                peer: *peer,
                result: self.send(*peer, frame.clone()).await,
            });
        }
        out
    }
    async fn recv(&self) -> musig2_transport::Result<Inbound> {
        let inbound = self.inner.recv().await?;
        self.received.fetch_add(1, Ordering::Relaxed);
        if !self.capture {
            return Ok(inbound);
        }
        let mut captured = self.captured.lock().expect("tap lock");
        if captured.is_none() {
            let found = match decode_frame(&inbound.frame, &Limits::default()) {
                Ok(Frame::Envelope(e)) if is_aggnonce(e.envelope().body()) => {
                    Some((inbound.frame.clone(), true))
                }
                Ok(Frame::Batch(envs)) => envs
                    .iter()
                    .find(|e| is_aggnonce(e.envelope().body()))
                    .map(|e| (Bytes::from(e.to_frame_bytes()), false)),
                _ => None,
            };
            if found.is_some() {
                *captured = found;
                self.withhold.store(true, Ordering::Relaxed);
            }
        }
        Ok(inbound)
    }
    async fn dht_put(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: Duration,
    ) -> musig2_transport::Result<()> {
        self.inner.dht_put(key, value, ttl).await
    }
    async fn dht_remove(&self, key: Vec<u8>) -> musig2_transport::Result<()> {
        self.inner.dht_remove(key).await
    }
    async fn dht_get(
        &self,
        key: Vec<u8>,
        validator: RecordValidator,
    ) -> musig2_transport::Result<Vec<u8>> {
        self.inner.dht_get(key, validator).await
    }
    async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> musig2_transport::Result<()> {
        self.inner.add_address(peer, addr).await
    }
    async fn dial(&self, peer: PeerId) -> musig2_transport::Result<()> {
        self.inner.dial(peer).await
    }
    async fn block_peer(&self, peer: PeerId) -> musig2_transport::Result<()> {
        self.inner.block_peer(peer).await
    }
    async fn unblock_peer(&self, peer: PeerId) -> musig2_transport::Result<()> {
        self.inner.unblock_peer(peer).await
    }
    fn events(&self) -> tokio::sync::broadcast::Receiver<PeerEvent> {
        self.inner.events()
    }
    async fn shutdown(&self) -> musig2_transport::Result<()> {
        self.inner.shutdown().await
    }
}

fn is_aggnonce(body: &Body) -> bool {
    matches!(body, Body::AggregateNonce { .. })
}

// ---- the setting: three runtimes, a victim and two honest nodes -----------------------------

/// Runtimes whose threads are named so their CPU can be told apart.
struct Runtimes {
    victim: Runtime,
    honest: Runtime,
    flooder: Runtime,
}

fn runtime(name: &'static str, workers: usize, group: u8) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .on_thread_start(move || heap::set_thread_group(group))
        // Blocking threads (if any) stay alive, so their CPU stays visible.
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
        .expect("runtime")
}

/// One event of an honest node, with when the bench saw it.
struct Seen {
    node: usize,
    at: Instant,
    event: Event,
}

/// The victim (node 0) and two honest nodes; honest sessions are created on the victim.
struct Setting {
    victim: Node,
    victim_addr: Multiaddr,
    honest: Vec<Node>,
    honest_transports: Vec<Arc<Libp2pTransport>>,
    keys: Vec<PublicKey>,
    events: mpsc::Receiver<Seen>,
    /// Frames the victim's node took from its transport.
    victim_received: Arc<AtomicU64>,
}

fn libp2p_config() -> Libp2pConfig {
    Libp2pConfig {
        record_validator: Some(announcement_record_validator(Config::default().limits)),
        ..Libp2pConfig::default()
    }
}

/// Starts a task that joins every session that reaches `node` and forwards its events.
fn follow(node: &Node, index: usize, tx: mpsc::Sender<Seen>) {
    let mut rx = node.events();
    let node = node.clone();
    tokio::spawn(async move {
        loop {
            let event = match rx.recv().await {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("node {index}: events lagged by {n}");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            };
            if let Event::SessionDiscovered { session } = event {
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = node.join_session(session).await {
                        eprintln!("node {index}: join failed: {e}");
                    }
                });
            }
            let seen = Seen {
                node: index,
                at: Instant::now(),
                event,
            };
            if tx.send(seen).await.is_err() {
                break;
            }
        }
    });
}

/// Dials until connected (a dial already under way makes `dial` fail rather than wait).
async fn dial(t: &dyn Transport, peer: PeerId) {
    let mut last = None;
    for _ in 0..100 {
        match t.dial(peer).await {
            Ok(()) => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {peer}: {last:?}");
}

impl Setting {
    /// Must run on the honest runtime (the honest nodes are spawned where it runs).
    async fn start(rts: &Runtimes, victim_config: Config) -> Setting {
        let victim_kp = Keypair::new(&mut rand::rng());
        let victim_t = rts
            .victim
            .spawn(Libp2pTransport::spawn(libp2p_config()))
            .await
            .expect("join")
            .expect("victim transport");
        let victim_id = victim_t.local_peer_id();
        let victim_addr = victim_t.listen_addrs()[0].clone();
        let victim_t = Arc::new(victim_t);
        let mut honest_transports = Vec::new();
        for _ in 0..2 {
            let t = Libp2pTransport::spawn(Libp2pConfig {
                bootstrap: vec![(victim_id, victim_addr.clone())],
                ..libp2p_config()
            })
            .await
            .expect("honest transport");
            honest_transports.push(Arc::new(t));
        }
        // Every pair connected, every routing table full.
        let addrs: Vec<(PeerId, Multiaddr)> = std::iter::once((victim_id, victim_addr.clone()))
            .chain(
                honest_transports
                    .iter()
                    .map(|t| (t.local_peer_id(), t.listen_addrs()[0].clone())),
            )
            .collect();
        let all: Vec<Arc<Libp2pTransport>> = std::iter::once(victim_t.clone())
            .chain(honest_transports.iter().cloned())
            .collect();
        for (i, t) in all.iter().enumerate() {
            for (peer, addr) in &addrs[i + 1..] {
                t.add_address(*peer, addr.clone()).await.expect("address");
                dial(&**t, *peer).await;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut ready = true;
            for t in &all {
                if t.routing_table_size().await.expect("routing table") < 2 {
                    ready = false;
                    t.bootstrap().await.expect("bootstrap");
                }
            }
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "routing tables not populated");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let victim_wrapped = Wrapped::new(victim_t, false);
        let victim_received = victim_wrapped.received.clone();
        let victim_dyn: Arc<dyn Transport> = Arc::new(victim_wrapped);
        let victim = rts
            .victim
            .spawn(async move { Node::spawn(victim_dyn, victim_kp, victim_config) })
            .await
            .expect("victim node");
        let (events_tx, events) = mpsc::channel(1 << 16);
        let mut honest = Vec::new();
        let mut keys = vec![victim_kp.public_key()];
        for (i, t) in honest_transports.iter().enumerate() {
            let kp = Keypair::new(&mut rand::rng());
            keys.push(kp.public_key());
            let node = Node::spawn(t.clone() as Arc<dyn Transport>, kp, Config::default());
            follow(&node, i + 1, events_tx.clone());
            honest.push(node);
        }
        Setting {
            victim,
            victim_addr,
            honest,
            honest_transports,
            keys,
            events,
            victim_received,
        }
    }

    /// One honest 3-signer session (mesh, nonce commitments: the victim's default policy),
    /// created on the victim: from `create_session` until all three nodes hold the signature.
    async fn session(&mut self) -> Result<Duration, String> {
        let message: [u8; 32] = rand::random();
        let request = SessionRequest {
            signers: self.keys.clone(),
            peers: std::iter::once(self.victim.peer_id())
                .chain(self.honest.iter().map(Node::peer_id))
                .map(Some)
                .collect(),
            messages: vec![musig2_proto::MessageToSign::new(message.to_vec())],
            document_digest: None,
            policy: self.victim.default_policy(),
        };
        let start = Instant::now();
        let limit = Duration::from_secs(30);
        let run = async {
            let id = self
                .victim
                .create_session(request)
                .await
                .map_err(|e| format!("create: {e}"))?;
            let victim = self.victim.clone();
            let mine = tokio::spawn(async move {
                let r = victim.wait_for_signatures(id).await;
                (Instant::now(), r)
            });
            let mut done: HashMap<usize, Instant> = HashMap::new();
            while done.len() < 2 {
                let seen = self.events.recv().await.ok_or("event stream closed")?;
                if seen.event.session() != id {
                    continue;
                }
                match seen.event {
                    Event::SignatureReady { .. } => {
                        done.insert(seen.node, seen.at);
                    }
                    Event::Aborted { reason, .. } => {
                        return Err(format!("aborted on node {}: {reason:?}", seen.node));
                    }
                    _ => {}
                }
            }
            let (at, result) = mine.await.map_err(|e| e.to_string())?;
            result.map_err(|e| format!("victim: {e}"))?;
            let last = done.values().copied().fold(at, Instant::max);
            Ok::<Duration, String>(last - start)
        };
        match tokio::time::timeout(limit, run).await {
            Ok(r) => r,
            Err(_) => Err("did not finish within 30 s".into()),
        }
    }

    async fn shutdown(self) {
        let _ = self.victim.shutdown().await;
        for n in &self.honest {
            let _ = n.shutdown().await;
        }
    }
}

// ---- the flooder: a raw libp2p peer writing frames without waiting for statuses -------------

/// What the flood frames are: the wire form (length prefix included) of each frame of the pool,
/// cut into chunks of whole frames so a reopened stream never starts mid-frame.
struct Pool {
    chunks: Vec<(Vec<u8>, u64)>,
    frame_bytes: f64,
}

impl Pool {
    fn new(frames: &[Vec<u8>]) -> Pool {
        const CHUNK: usize = 32 * 1024;
        let mut chunks = Vec::new();
        let mut cur = Vec::with_capacity(CHUNK + 4096);
        let mut n = 0u64;
        for f in frames {
            cur.extend_from_slice(&u32::try_from(f.len()).expect("small").to_be_bytes());
            cur.extend_from_slice(f);
            n += 1;
            if cur.len() >= CHUNK {
                chunks.push((std::mem::take(&mut cur), n));
                n = 0;
            }
        }
        if n > 0 {
            chunks.push((cur, n));
        }
        let total: usize = frames.iter().map(Vec::len).sum();
        Pool {
            chunks,
            frame_bytes: total as f64 / frames.len() as f64,
        }
    }
}

/// What the flooder saw.
#[derive(Default, Debug)]
struct FloodStats {
    bytes_sent: u64,
    frames_sent: u64,
    /// Status bytes received: accepted, busy, rate limited, too large, other.
    status: [u64; 5],
    streams_opened: u32,
    /// Why the flood stopped.
    end: String,
    /// When the flood stopped (from its start).
    elapsed: Duration,
}

/// A bare swarm with the stream behaviour only, connected to `target`; returns its control.
/// Must run on the flooder runtime.
async fn raw_peer(
    key: identity::Keypair,
    target: Multiaddr,
) -> (libp2p_stream::Control, tokio::task::JoinHandle<()>) {
    let mut raw = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    raw.dial(target).expect("dial");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = raw.select_next_some().await {
                break;
            }
        }
    })
    .await
    .expect("raw connection");
    let control = raw.behaviour().new_control();
    let driver = tokio::spawn(async move {
        loop {
            raw.select_next_some().await;
        }
    });
    (control, driver)
}

/// Writes the pool's chunks, cycled, on frame streams to `target` until `limit` bytes are sent,
/// the stream cannot be (re)opened, or `max` has passed. Runs on the flooder runtime.
async fn flood(
    mut control: libp2p_stream::Control,
    target: PeerId,
    pool: Arc<Pool>,
    limit: u64,
    max: Duration,
    rate: Option<u64>,
    done: Arc<AtomicBool>,
) -> FloodStats {
    let start = Instant::now();
    let counts: Arc<[AtomicU64; 5]> = Arc::new(Default::default());
    let mut stats = FloodStats::default();
    let mut next = 0usize;
    let mut failures = 0;
    let mut readers = Vec::new();
    'outer: loop {
        let stream = match tokio::time::timeout(
            Duration::from_secs(2),
            control.open_stream(target.to_libp2p(), FRAME_PROTOCOL),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                stats.end = format!("stream refused: {e}");
                break;
            }
            Err(_) => {
                stats.end = "stream open timed out".into();
                break;
            }
        };
        stats.streams_opened += 1;
        let (mut reader, mut writer) = stream.split();
        let counts_r = counts.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        for b in &buf[..n] {
                            counts_r[usize::from(*b).min(4)].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
        loop {
            if stats.bytes_sent >= limit {
                stats.end = "sent the whole flood".into();
                break 'outer;
            }
            if start.elapsed() >= max {
                stats.end = format!("time limit ({} s)", max.as_secs());
                break 'outer;
            }
            let (chunk, frames) = &pool.chunks[next];
            if let Some(rate) = rate {
                // Paced: never ahead of `rate` frames per second.
                let due =
                    Duration::from_secs_f64((stats.frames_sent + frames) as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            let written = async {
                writer.write_all(chunk).await?;
                writer.flush().await
            };
            match tokio::time::timeout(Duration::from_secs(5), written).await {
                Ok(Ok(())) => {
                    next = (next + 1) % pool.chunks.len();
                    stats.bytes_sent += chunk.len() as u64;
                    stats.frames_sent += frames;
                    failures = 0;
                }
                Ok(Err(e)) => {
                    failures += 1;
                    if failures > 3 {
                        stats.end = format!("writes keep failing: {e}");
                        break 'outer;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue 'outer;
                }
                Err(_) => {
                    stats.end = "a write stalled for 5 s".into();
                    break 'outer;
                }
            }
        }
    }
    stats.elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    // Statuses still on their way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for r in readers {
        r.abort();
    }
    for (i, c) in counts.iter().enumerate() {
        stats.status[i] = c.load(Ordering::Relaxed);
    }
    stats
}

// ---- the flood kinds ------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Junk,
    UnknownSession,
    Announcements,
    Replay,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::Junk => 'a',
            Kind::UnknownSession => 'b',
            Kind::Announcements => 'c',
            Kind::Replay => 'd',
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Junk => "junk frames",
            Kind::UnknownSession => "signed envelopes, unknown sessions",
            Kind::Announcements => "signed announcements naming the victim",
            Kind::Replay => "replayed AggregateNonce from a member",
        }
    }
    /// Whether the ≤ 10 µs per rejected frame target applies.
    fn cpu_target(self) -> bool {
        self != Kind::Announcements
    }
}

const POOL: usize = 4096;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn junk_frames() -> Vec<Vec<u8>> {
    (0..POOL)
        .map(|_| {
            let mut f: Vec<u8> = (0..160).map(|_| rand::random::<u8>()).collect();
            f[0] = 0xFF;
            f
        })
        .collect()
}

fn unknown_session_frames(flooder: PeerId) -> Vec<Vec<u8>> {
    let kp = Keypair::new(&mut rand::rng());
    let now = unix_ms();
    let peer_id = PeerIdBytes::new(flooder.to_bytes()).expect("peer id");
    (0..POOL)
        .map(|_| {
            let env = Envelope::sign(
                SessionId::from_bytes(rand::random()),
                SignerIndex::try_from(0usize).expect("index"),
                SeqNo::FIRST,
                now,
                Body::Join {
                    peer_id: peer_id.clone(),
                },
                &kp,
            );
            Frame::Envelope(env).encode()
        })
        .collect()
}

fn announcement_frames(victim_key: PublicKey, victim: PeerId, creators: usize) -> Vec<Vec<u8>> {
    let keys: Vec<Keypair> = (0..creators.clamp(1, POOL))
        .map(|_| Keypair::new(&mut rand::rng()))
        .collect();
    let limits = Limits::default();
    let now = unix_ms();
    let victim_peer = PeerIdBytes::new(victim.to_bytes()).expect("peer id");
    (0..POOL)
        .map(|i| {
            let kp = &keys[i % keys.len()];
            let mut a = Announcement::new(
                vec![kp.public_key(), victim_key],
                b"flood".to_vec(),
                SignerIndex::try_from(0usize).expect("index"),
                now,
                now + 600_000,
            );
            a.signers[1].peer_id = Some(victim_peer.clone());
            a.sign(kp, &limits).expect("sign").to_frame_bytes()
        })
        .collect()
}

/// Sets up kind d: a flood member (its own libp2p identity, a node on a capturing [`Wrapped`]) and a star
/// session [honest node 1 (creator, coordinator), victim, member] with long timeouts; waits
/// until the victim has verified the coordinator's AggregateNonce. Returns the member's libp2p
/// key, the captured frame, whether the coordinator had sent it alone in its frame, and the
/// session.
async fn replay_setup(s: &Setting) -> (identity::Keypair, Bytes, bool, SessionId, Node) {
    let key = identity::Keypair::generate_ed25519();
    let victim_id = s.victim.peer_id();
    let t = Libp2pTransport::spawn(Libp2pConfig {
        key: KeySource::Keypair(key.clone()),
        bootstrap: vec![(victim_id, s.victim_addr.clone())],
        ..libp2p_config()
    })
    .await
    .expect("member transport");
    let member_id = t.local_peer_id();
    let member_addr = t.listen_addrs()[0].clone();
    for h in &s.honest_transports {
        h.add_address(member_id, member_addr.clone())
            .await
            .expect("address");
        dial(&**h, member_id).await;
    }
    dial(&t, victim_id).await;
    let tap = Arc::new(Wrapped::new(Arc::new(t), true));
    let member_kp = Keypair::new(&mut rand::rng());
    let member = Node::spawn(
        tap.clone() as Arc<dyn Transport>,
        member_kp,
        Config::default(),
    );
    let (tx, mut rx) = mpsc::channel(1024);
    follow(&member, 9, tx);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let creator = &s.honest[0];
    let mut policy = creator.default_policy();
    policy.topology = Topology::Star;
    policy.election = ElectionMethod::FirstSigner;
    // As long as a node accepts (`Config::max_round_timeout`), so the session outlives the flood.
    policy.timeouts.partial_sig_ms = 600_000;
    policy.timeouts.session_ms = 1_200_000;
    let request = SessionRequest {
        signers: vec![s.keys[1], s.keys[0], member_kp.public_key()],
        peers: vec![
            Some(creator.peer_id()),
            Some(victim_id),
            Some(member.peer_id()),
        ],
        messages: vec![musig2_proto::MessageToSign::new(b"replayed".to_vec())],
        document_digest: None,
        policy,
    };
    let id = creator.create_session(request).await.expect("create");
    s.victim.join_session(id).await.expect("victim joins");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let phase = s.victim.health(id).await.expect("health").phase;
        let captured = tap.captured.lock().expect("lock").clone();
        if phase == Phase::PartialSig {
            if let Some((frame, alone)) = captured {
                return (key, frame, alone, id, member);
            }
        }
        assert!(
            Instant::now() < deadline,
            "kind d setup stuck: victim in {phase:?}, captured {}",
            captured.is_some()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- one kind, end to end --------------------------------------------------------------------

struct Report {
    /// Heap of the victim runtime's threads: peak and end, above their idle level.
    victim_heap_peak_above: i64,
    victim_heap_end_above: i64,
    /// Frames the victim's node took from its transport during the window (flood frames and
    /// the honest sessions' own, a few dozen per session).
    node_received: u64,
    /// The honest sessions' share of `node_received` (frames per unloaded session × sessions).
    honest_frames: u64,
    /// No honest sessions during the flood (the CPU figure's run).
    quiet: bool,
    /// From the flood's start until its last write plus 200 ms.
    window: Duration,
    /// The victim's idle CPU rate times the window.
    idle_cpu: Duration,
    kind: Kind,
    frame_bytes: f64,
    unloaded: Duration,
    unloaded_victim_cpu: Duration,
    stats: FloodStats,
    blocked_after: Option<Duration>,
    victim_cpu: Duration,
    honest_cpu_share: Duration,
    flooder_cpu: Duration,
    heap_idle: usize,
    heap_peak_above: usize,
    heap_end_above: usize,
    usage: NodeUsage,
    during: Vec<Duration>,
    failed: Vec<String>,
    note: String,
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn percentile(v: &[Duration], p: usize) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[(v.len() * p / 100).min(v.len() - 1)]
}

async fn run_kind(
    rts: &Runtimes,
    kind: Kind,
    limit: u64,
    max: Duration,
    rate: Option<u64>,
    unloaded_n: usize,
    quiet: bool,
) -> Report {
    // Every kind gets its sender blocked after a few hundred frames at most, too few to measure a
    // cost per frame: the quiet runs use a victim that never blocks (`max_peer_offences: 0`),
    // for 15 s; the loaded runs keep the default and show how soon the flooder is blocked.
    let never_block = quiet;
    let victim_config = if never_block {
        Config {
            max_peer_offences: 0,
            ..Config::default()
        }
    } else {
        Config::default()
    };
    let max = if never_block {
        max.min(Duration::from_secs(15))
    } else {
        max
    };
    let mut s = Setting::start(rts, victim_config).await;
    let unloaded_n = if quiet { 0 } else { unloaded_n };
    // Unloaded: warm up, then the median of `unloaded_n`, with the victim's CPU per session.
    for _ in 0..3 {
        s.session().await.expect("warm-up session");
    }
    let mut unloaded = Vec::new();
    let cpu0 = cpu_now();
    let frames0 = s.victim_received.load(Ordering::Relaxed);
    for _ in 0..unloaded_n {
        unloaded.push(s.session().await.expect("unloaded session"));
    }
    let unloaded_victim_cpu =
        Duration::from_nanos((cpu_now() - cpu0).victim / unloaded_n.max(1) as u64);
    let unloaded_before = unloaded.len();
    let frames_per_session =
        (s.victim_received.load(Ordering::Relaxed) - frames0) / unloaded_n.max(1) as u64;

    // The flood frames and the flooder's connection.
    let mut note = if never_block {
        "victim with max_peer_offences = 0 (never blocks), flood capped at 15 s".to_owned()
    } else {
        String::new()
    };
    let (key, frames, member) = match kind {
        Kind::Replay => {
            let (key, frame, alone, id, member) = replay_setup(&s).await;
            note = format!(
                "session {id}: AggregateNonce frame of {} bytes ({})",
                frame.len(),
                if alone {
                    "sent alone by the coordinator"
                } else {
                    "taken out of a batch frame"
                }
            );
            (key, vec![frame.to_vec()], Some(member))
        }
        _ => {
            let key = identity::Keypair::generate_ed25519();
            let flooder = PeerId::from_libp2p(key.public().to_peer_id());
            let frames = match kind {
                Kind::Junk => junk_frames(),
                Kind::UnknownSession => unknown_session_frames(flooder),
                _ => {
                    let creators = std::env::var("FLOOD_CREATORS")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(POOL);
                    note = format!("{} creator key(s)", creators.clamp(1, POOL));
                    announcement_frames(s.keys[0], s.victim.peer_id(), creators)
                }
            };
            (key, frames, None)
        }
    };
    let flooder_id = PeerId::from_libp2p(key.public().to_peer_id());
    let pool = Arc::new(Pool::new(&frames));
    drop(frames);
    let frame_bytes = pool.frame_bytes;
    let victim_addr = s.victim_addr.clone();
    let (control, raw_driver) = rts
        .flooder
        .spawn(raw_peer(key, victim_addr))
        .await
        .expect("raw peer");

    // Idle level, then the flood with honest sessions running on the victim.
    let idle_start = (Instant::now(), cpu_now());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rate = (cpu_now() - idle_start.1).victim as f64 / idle_start.0.elapsed().as_secs_f64();
    let (heap_idle, victim_heap_idle) = heap_reset_peak();
    let victim = s.victim.clone();
    let start = Instant::now();
    let cpu_start = cpu_now();
    let received_start = s.victim_received.load(Ordering::Relaxed);
    let target = victim.peer_id();
    let done = Arc::new(AtomicBool::new(false));
    let flood_task =
        rts.flooder
            .spawn(flood(control, target, pool, limit, max, rate, done.clone()));
    let blocked_at = Arc::new(Mutex::new(None::<Duration>));
    let watcher = {
        let victim = victim.clone();
        let blocked_at = blocked_at.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(list) = victim.blocked_peers().await {
                    if list.iter().any(|(p, _)| *p == flooder_id) {
                        *blocked_at.lock().expect("lock") = Some(start.elapsed());
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut during = Vec::new();
    let mut failed = Vec::new();
    while !done.load(Ordering::Relaxed) {
        if quiet {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        match s.session().await {
            Ok(d) => during.push(d),
            Err(e) => failed.push(e),
        }
    }
    // Let the victim drain its queue before reading its CPU.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu = cpu_now() - cpu_start;
    let window = start.elapsed();
    let node_received = s.victim_received.load(Ordering::Relaxed) - received_start;
    let stats = flood_task.await.expect("flood task");
    // Unloaded again once the flooder is gone (the machine's load drifts): the unloaded figure
    // is the median of the sessions before and after the flood.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..unloaded_n {
        match s.session().await {
            Ok(d) => unloaded.push(d),
            // Reported, not fatal: e.g. the victim's DHT store (4096 records, each session's
            // lasting `session_timeout`) fills up after ~4000 sessions.
            Err(e) => failed.push(format!("after the flood: {e}")),
        }
    }
    let unloaded_median = median(&unloaded);
    let unloaded_after = median(&unloaded[unloaded_before..]);
    let unloaded_first = median(&unloaded[..unloaded_before]);
    let heap_peak_above = heap::peak().saturating_sub(heap_idle);
    let heap_end_above = heap::now().saturating_sub(heap_idle);
    let victim_heap_peak_above = victim_heap_peak() - victim_heap_idle;
    let victim_heap_end_above = victim_heap_now() - victim_heap_idle;
    let usage = victim.usage().await.expect("usage");
    tokio::time::sleep(Duration::from_millis(100)).await;
    watcher.abort();
    let blocked_after = *blocked_at.lock().expect("lock");
    let sessions_in_window = during.len() as u32;
    let idle_cpu = Duration::from_nanos((idle_rate * window.as_secs_f64()) as u64);
    let report = Report {
        victim_heap_peak_above,
        victim_heap_end_above,
        node_received,
        honest_frames: frames_per_session * u64::from(sessions_in_window),
        quiet,
        window,
        idle_cpu,
        kind,
        frame_bytes,
        unloaded: unloaded_median,
        unloaded_victim_cpu,
        stats,
        blocked_after,
        victim_cpu: Duration::from_nanos(cpu.victim),
        honest_cpu_share: unloaded_victim_cpu * sessions_in_window,
        flooder_cpu: Duration::from_nanos(cpu.flooder),
        heap_idle,
        heap_peak_above,
        heap_end_above,
        usage,
        during,
        failed,
        note: if quiet {
            note
        } else {
            format!(
                "{note}{}unloaded median before the flood {}, after {}",
                if note.is_empty() { "" } else { "; " },
                ms(unloaded_first),
                ms(unloaded_after)
            )
        },
    };
    raw_driver.abort();
    if let Some(member) = member {
        let _ = member.shutdown().await;
    }
    s.shutdown().await;
    report
}

fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

impl Report {
    fn answered(&self) -> u64 {
        self.stats.status.iter().sum()
    }

    /// Flood frames the victim's node took from its transport (counted at the node, so exact
    /// even when the statuses are lost as the connection is closed).
    fn admitted(&self) -> u64 {
        self.node_received.saturating_sub(self.honest_frames)
    }

    /// Flood frames the victim received and rejected: those its node took, plus those its
    /// transport refused (rate limited, queue full, too large; from the statuses, so a lower
    /// bound when the connection is cut before they arrive).
    fn received(&self) -> u64 {
        self.admitted() + self.stats.status[1..].iter().sum::<u64>()
    }

    /// The victim's CPU spent on the flood: its runtime threads' CPU in the window, less its
    /// idle rate and (loaded runs) the honest sessions' share at the unloaded cost per session.
    fn flood_cpu(&self) -> Duration {
        self.victim_cpu
            .saturating_sub(self.idle_cpu)
            .saturating_sub(self.honest_cpu_share)
    }

    /// Victim CPU per flood frame it received (µs). Quiet runs: all the victim's CPU in the
    /// window, nothing subtracted (an upper bound). Loaded runs: net of the honest sessions.
    fn cpu_per_frame(&self) -> f64 {
        let cpu = if self.quiet {
            self.victim_cpu
        } else {
            self.flood_cpu()
        };
        match self.received() {
            0 => f64::INFINITY,
            n => cpu.as_secs_f64() * 1e6 / n as f64,
        }
    }

    fn latency_ratio(&self) -> f64 {
        median(&self.during).as_secs_f64() / self.unloaded.as_secs_f64()
    }

    fn latency_met(&self) -> bool {
        !self.during.is_empty() && self.failed.is_empty() && self.latency_ratio() <= 2.0
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn print_report(r: &Report) {
    let st = &r.stats;
    let answered = r.answered();
    let accepted = r.admitted();
    println!(
        "\n== ({}) {} [{}] ==",
        r.kind.letter(),
        r.kind.name(),
        if r.quiet {
            "quiet run: no honest sessions during the flood"
        } else {
            "loaded run: honest sessions during the flood"
        }
    );
    if !r.note.is_empty() {
        println!("   {}", r.note);
    }
    println!(
        "   sent {} in {} frames of {:.0} B in {:.2} s on {} stream(s); stopped: {}",
        mib(st.bytes_sent as usize),
        st.frames_sent,
        r.frame_bytes,
        st.elapsed.as_secs_f64(),
        st.streams_opened,
        st.end
    );
    println!(
        "   statuses {answered}: accepted {} / busy {} / rate-limited {} / too large {} / other {}; unanswered {}; taken by the victim's node {} ({}); received by the victim {}",
        st.status[0],
        st.status[1],
        st.status[2],
        st.status[3],
        st.status[4],
        st.frames_sent.saturating_sub(answered),
        accepted,
        mib((accepted as f64 * r.frame_bytes) as usize),
        r.received(),
    );
    println!(
        "   flooder blocked: {}",
        match r.blocked_after {
            Some(d) => format!("yes, {:.2} s after the flood started", d.as_secs_f64()),
            None => "NO".to_owned(),
        }
    );
    println!(
        "   victim CPU in the {:.2} s window {} (less idle {}, less {} honest sessions at {} each = {}) = {} for the flood; flooder CPU {}",
        r.window.as_secs_f64(),
        ms(r.victim_cpu),
        ms(r.idle_cpu),
        r.during.len(),
        ms(r.unloaded_victim_cpu),
        ms(r.honest_cpu_share),
        ms(r.flood_cpu()),
        ms(r.flooder_cpu),
    );
    let per_admitted = if accepted == 0 {
        "-".to_owned()
    } else {
        format!(
            "{:.2} µs",
            r.flood_cpu().as_secs_f64() * 1e6 / accepted as f64
        )
    };
    println!(
        "   victim CPU per frame received {:.2} µs ({}){}; per frame admitted to the node {per_admitted}",
        r.cpu_per_frame(),
        if r.quiet {
            "all its CPU in the window"
        } else {
            "net of idle and honest sessions"
        },
        match (r.kind.cpu_target(), r.quiet) {
            (true, true) => format!(" [target ≤ 10 µs: {}]", verdict(r.cpu_per_frame() <= 10.0)),
            (true, false) => " [the target is judged on the quiet run]".to_owned(),
            (false, _) => " [no target]".to_owned(),
        },
    );
    println!(
        "   heap, whole process: idle {}, peak {} above idle, {} above idle at the end  [target ≤ 64 MiB: {}]; victim threads alone: peak {:.1} MiB, end {:.1} MiB above idle",
        mib(r.heap_idle),
        mib(r.heap_peak_above),
        mib(r.heap_end_above),
        verdict(r.heap_peak_above <= 64 << 20),
        r.victim_heap_peak_above as f64 / 1048576.0,
        r.victim_heap_end_above as f64 / 1048576.0,
    );
    if !r.quiet {
        println!(
            "   honest sessions: unloaded median {}; during the flood {} done (median {}, p90 {}, max {}), {} failed; median ratio {:.2}  [target ≤ 2×: {}]",
            ms(r.unloaded),
            r.during.len(),
            ms(median(&r.during)),
            ms(percentile(&r.during, 90)),
            ms(r.during.iter().copied().max().unwrap_or_default()),
            r.failed.len(),
            r.latency_ratio(),
            verdict(r.latency_met()),
        );
        for f in r.failed.iter().take(3) {
            println!("     failed: {f}");
        }
    }
    println!("   Node::usage() at the end: {:?}", r.usage);
}

fn main() {
    let kinds: Vec<Kind> = {
        let pick = std::env::var("FLOOD_KIND").unwrap_or_else(|_| "abcd".into());
        [
            Kind::Junk,
            Kind::UnknownSession,
            Kind::Announcements,
            Kind::Replay,
        ]
        .into_iter()
        .filter(|k| pick.contains(k.letter()))
        .collect()
    };
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let limit = env("FLOOD_MIB", 1024) << 20;
    let max = Duration::from_secs(env("FLOOD_MAX_SECS", 120));
    let unloaded_n = env("FLOOD_SESSIONS", 15) as usize;
    let rate = std::env::var("FLOOD_RATE")
        .ok()
        .and_then(|v| v.parse().ok());
    let rts = Runtimes {
        victim: runtime("victim", 2, VICTIM),
        honest: runtime("honest", 1, 2),
        flooder: runtime("flooder", 1, 3),
    };
    println!(
        "flood bench: kinds {}, flood {} MiB or {} s at most, pace {}, {} unloaded sessions; victim runtime 2 threads, honest 1, flooder 1",
        kinds.iter().map(|k| k.letter()).collect::<String>(),
        limit >> 20,
        max.as_secs(),
        rate.map_or("none".to_owned(), |r| format!("{r} frames/s")),
        unloaded_n
    );
    let mut reports = Vec::new();
    for kind in kinds {
        let quiet = rts
            .honest
            .block_on(run_kind(&rts, kind, limit, max, rate, unloaded_n, true));
        print_report(&quiet);
        let report = rts
            .honest
            .block_on(run_kind(&rts, kind, limit, max, rate, unloaded_n, false));
        print_report(&report);
        reports.push((quiet, report));
    }
    println!("\n== summary (CPU from the quiet run, everything else from the loaded run) ==");
    println!(
        "| kind | sent | taken by the node / rate-limited / busy | flooder blocked after | victim CPU per frame received (quiet; loaded) | heap peak above idle, process (loaded; quiet) [victim threads (loaded; quiet)] | honest session median unloaded → during flood (ratio; p90; max) | Node::usage() at the end (loaded) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (q, r) in &reports {
        let u = &r.usage;
        println!(
            "| ({}) {} | {} in {} frames | {} / {} / {} | {} | {:.2} µs; {:.2} µs{} | {}; {} ({}) [{:.1}; {:.1} MiB] | {} → {} ({:.2}; {}; {}){} | sessions {} (unjoined {}), pending {} frames / {} B, offence entries {}, outbound peers {}, blocked {} |",
            r.kind.letter(),
            r.kind.name(),
            mib(r.stats.bytes_sent as usize),
            r.stats.frames_sent,
            r.admitted(),
            r.stats.status[2],
            r.stats.status[1],
            r.blocked_after
                .map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or_else(|| "not blocked".into()),
            q.cpu_per_frame(),
            r.cpu_per_frame(),
            if r.kind.cpu_target() {
                format!(" ({})", verdict(q.cpu_per_frame() <= 10.0))
            } else {
                String::new()
            },
            mib(r.heap_peak_above),
            mib(q.heap_peak_above),
            verdict(r.heap_peak_above.max(q.heap_peak_above) <= 64 << 20),
            r.victim_heap_peak_above as f64 / 1048576.0,
            q.victim_heap_peak_above as f64 / 1048576.0,
            ms(r.unloaded),
            ms(median(&r.during)),
            r.latency_ratio(),
            ms(percentile(&r.during, 90)),
            ms(r.during.iter().copied().max().unwrap_or_default()),
            if r.latency_met() {
                " (met)"
            } else {
                " (MISSED)"
            },
            u.sessions,
            u.unjoined_sessions,
            u.pending_frames,
            u.pending_bytes,
            u.offence_entries,
            u.outbound_peers,
            u.blocked_peers,
        );
    }
}
