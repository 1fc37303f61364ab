//! Prometheus metrics of a running node (`run --metrics ADDR`), in the OpenMetrics text format
//! on `GET /metrics`, with `prometheus-client` (the library of libp2p's own metrics, which are
//! served alongside: swarm, Kademlia query durations, identify, ping, bandwidth).
//!
//! Session metrics come from the node's events (outcomes, phase durations, aborts, blamed
//! signers), from its traffic counters (frames in and out, rejections by reason, blocks) and from
//! its state at scrape time (sessions by phase, blocked and connected peers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use musig2_coordinator::{AbortOrigin, Event, Node, StatsSnapshot};
use musig2_proto::SessionId;
use musig2_transport::{Libp2pTransport, PeerId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

use crate::view;

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Most sessions whose phase start times are tracked at once.
const MAX_TRACKED: usize = 4096;
/// Longest HTTP request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Most scrapes answered at once.
const MAX_SCRAPES: usize = 8;

fn phase_histogram() -> Histogram {
    // 5 ms .. ~20 min.
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

/// The node's metrics and the registry they are in (shared with libp2p's).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    sessions: Family<Labels, Gauge>,
    finished: Family<Labels, Counter>,
    phase_seconds: HistogramFamily,
    aborts: Family<Labels, Counter>,
    blamed: Family<Labels, Counter>,
    frames: Family<Labels, Counter>,
    rejected: Family<Labels, Counter>,
    send_failures: Counter,
    blocks: Counter,
    store_commits: Counter,
    store_commit_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    store_failures: Counter,
    /// The node's counters at the last scrape (the Prometheus counters move by the difference).
    last: Arc<Mutex<StatsSnapshot>>,
    blocked_peers: Gauge,
    connected_peers: Gauge,
    reachability: Family<Labels, Gauge>,
    relay_reservations: Gauge,
    events: Counter,
    restarts: Family<Labels, Counter>,
    resumed: Counter,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with the node's metrics in it.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            registry: Arc::new(Mutex::new(Registry::default())),
            sessions: Family::default(),
            finished: Family::default(),
            phase_seconds: Family::new_with_constructor(phase_histogram as fn() -> Histogram),
            aborts: Family::default(),
            blamed: Family::default(),
            frames: Family::default(),
            rejected: Family::default(),
            send_failures: Counter::default(),
            blocks: Counter::default(),
            store_commits: Counter::default(),
            store_commit_seconds: Counter::default(),
            store_failures: Counter::default(),
            last: Arc::default(),
            blocked_peers: Gauge::default(),
            connected_peers: Gauge::default(),
            reachability: Family::default(),
            relay_reservations: Gauge::default(),
            events: Counter::default(),
            restarts: Family::default(),
            resumed: Counter::default(),
        };
        let sub = registry.sub_registry_with_prefix("musig2");
        sub.register(
            "sessions",
            "Sessions this node knows, by phase",
            metrics.sessions.clone(),
        );
        sub.register(
            "sessions_finished",
            "Sessions finished, by outcome (signed, aborted)",
            metrics.finished.clone(),
        );
        sub.register(
            "phase_duration_seconds",
            "Time from one milestone of a session to the next, by phase",
            metrics.phase_seconds.clone(),
        );
        sub.register(
            "aborts",
            "Aborted sessions, by reason and origin (local finding or remote claim)",
            metrics.aborts.clone(),
        );
        sub.register(
            "blamed",
            "Times a signer was blamed for an abort, by peer (or key) and origin",
            metrics.blamed.clone(),
        );
        sub.register(
            "frames",
            "Frames received from and sent to peers, by direction",
            metrics.frames.clone(),
        );
        sub.register(
            "rejected",
            "Frames and envelopes rejected, by reason",
            metrics.rejected.clone(),
        );
        sub.register(
            "send_failures",
            "Frames given up on after every retry",
            metrics.send_failures.clone(),
        );
        sub.register(
            "store_commits",
            "Session-store transactions committed",
            metrics.store_commits.clone(),
        );
        sub.register(
            "store_commit_seconds",
            "Time spent in session-store commits (divide by store_commits for the mean latency)",
            metrics.store_commit_seconds.clone(),
        );
        sub.register(
            "store_failures",
            "Session-store transactions that failed",
            metrics.store_failures.clone(),
        );
        sub.register(
            "peer_blocks",
            "Times a peer was blocked for repeated offences",
            metrics.blocks.clone(),
        );
        sub.register(
            "blocked_peers",
            "Peers blocked for sending invalid frames",
            metrics.blocked_peers.clone(),
        );
        sub.register(
            "connected_peers",
            "Peers with an open connection",
            metrics.connected_peers.clone(),
        );
        sub.register("events", "Node events seen", metrics.events.clone());
        sub.register(
            "reachability",
            "1 for what AutoNAT found (status: unknown, public, private), 0 for the others",
            metrics.reachability.clone(),
        );
        sub.register(
            "relay_reservations",
            "Relays this node holds a reservation on (it is reachable through them)",
            metrics.relay_reservations.clone(),
        );
        sub.register(
            "restarts",
            "New attempts started because a signer restarted, by who (this_node, other)",
            metrics.restarts.clone(),
        );
        sub.register(
            "sessions_resumed",
            "Sessions taken back from the session store when the node started",
            metrics.resumed.clone(),
        );
        *lock(&metrics.registry) = registry;
        metrics
    }

    /// The registry, to add libp2p's metrics to (see `Libp2pConfig::metrics`).
    pub fn registry(&self) -> Arc<Mutex<Registry>> {
        Arc::clone(&self.registry)
    }

    /// Counts `n` sessions resumed from the store (the node resumes them before its event
    /// stream can be watched, so the daemon reports them).
    pub fn note_resumed(&self, n: usize) {
        self.resumed.inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Counts the node's events until the stream ends.
    pub async fn record(self, node: Node, mut events: broadcast::Receiver<Event>) {
        let mut last: HashMap<SessionId, (&'static str, Instant)> = HashMap::new();
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            self.events.inc();
            let session = event.session();
            let now = Instant::now();
            // The milestone this event marks, and the phase it ends.
            let milestone = match &event {
                Event::SessionCreated { .. } | Event::SessionDiscovered { .. } => Some("known"),
                Event::SessionJoined { .. } => Some("joined"),
                Event::NoncesComplete { .. } => Some("nonces"),
                Event::PartialSignaturesComplete { .. } => Some("partial_signatures"),
                Event::SignatureReady { .. } => Some("signed"),
                Event::Aborted { .. } => Some("aborted"),
                _ => None,
            };
            if let Some(milestone) = milestone {
                if let Some((previous, at)) = last.get(&session).copied() {
                    let phase = match (previous, milestone) {
                        ("known", "joined") => Some("join_wait"),
                        ("joined", "nonces") => Some("nonce_exchange"),
                        ("nonces", "partial_signatures") => Some("partial_signature_exchange"),
                        ("partial_signatures", "signed") => Some("aggregation"),
                        (_, "aborted") => Some("until_abort"),
                        _ => None,
                    };
                    if let Some(phase) = phase {
                        self.phase_seconds
                            .get_or_create(&labels(&[("phase", phase)]))
                            .observe((now - at).as_secs_f64());
                    }
                }
                if matches!(milestone, "signed" | "aborted") {
                    last.remove(&session);
                } else if last.len() < MAX_TRACKED || last.contains_key(&session) {
                    last.insert(session, (milestone, now));
                }
            }
            match &event {
                Event::AttemptStarted { signer, .. } => {
                    let mine = node
                        .health(session)
                        .await
                        .is_ok_and(|h| h.signer == *signer);
                    let who = if mine { "this_node" } else { "other" };
                    self.restarts.get_or_create(&labels(&[("who", who)])).inc();
                }
                Event::SignatureReady { .. } => {
                    self.finished
                        .get_or_create(&labels(&[("outcome", "signed")]))
                        .inc();
                }
                Event::Aborted {
                    reason,
                    blamed,
                    origin,
                    ..
                } => {
                    let origin = match origin {
                        AbortOrigin::Local => "local",
                        AbortOrigin::Remote(_) => "remote",
                    };
                    self.finished
                        .get_or_create(&labels(&[("outcome", "aborted")]))
                        .inc();
                    self.aborts
                        .get_or_create(&labels(&[
                            ("reason", view::reason_name(*reason)),
                            ("origin", origin),
                        ]))
                        .inc();
                    if !blamed.is_empty() {
                        let announcement = node.discover_session(session).await.ok();
                        for index in blamed {
                            let who = announcement
                                .as_ref()
                                .and_then(|a| a.announcement().signers.get(index.as_usize()))
                                .map(|s| {
                                    s.peer_id
                                        .as_ref()
                                        .and_then(|p| PeerId::from_bytes(p.as_bytes()).ok())
                                        .map_or_else(|| s.key.to_string(), |p| p.to_string())
                                })
                                .unwrap_or_else(|| format!("signer {}", index.get()));
                            self.blamed
                                .get_or_create(&labels(&[("peer", &who), ("origin", origin)]))
                                .inc();
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Refreshes the gauges read from the node's state.
    async fn refresh(&self, node: &Node, transport: &Libp2pTransport) {
        if let Ok(sessions) = node.sessions().await {
            self.sessions.clear();
            for health in &sessions {
                self.sessions
                    .get_or_create(&labels(&[("phase", view::phase_name(health.phase))]))
                    .inc();
            }
        }
        {
            // Read and compare under one lock, so concurrent scrapes count each frame once.
            let mut last = lock(&self.last);
            let now = node.stats();
            let delta = |new: u64, old: u64| new.saturating_sub(old);
            self.frames
                .get_or_create(&labels(&[("direction", "in")]))
                .inc_by(delta(now.frames_in, last.frames_in));
            self.frames
                .get_or_create(&labels(&[("direction", "out")]))
                .inc_by(delta(now.frames_out, last.frames_out));
            self.send_failures
                .inc_by(delta(now.send_failures, last.send_failures));
            self.blocks
                .inc_by(delta(now.peers_blocked, last.peers_blocked));
            self.store_commits
                .inc_by(delta(now.store_commits, last.store_commits));
            self.store_commit_seconds
                .inc_by(delta(now.store_commit_micros, last.store_commit_micros) as f64 / 1e6);
            self.store_failures
                .inc_by(delta(now.store_failures, last.store_failures));
            for (reason, count) in &now.rejected {
                let old = last.rejected.get(reason).copied().unwrap_or(0);
                self.rejected
                    .get_or_create(&labels(&[("reason", reason)]))
                    .inc_by(delta(*count, old));
            }
            *last = now;
        }
        if let Ok(blocked) = node.blocked_peers().await {
            self.blocked_peers
                .set(i64::try_from(blocked.len()).unwrap_or(i64::MAX));
        }
        if let Ok(peers) = transport.connected_peers().await {
            self.connected_peers
                .set(i64::try_from(peers.len()).unwrap_or(i64::MAX));
        }
        if let Ok(addresses) = transport.addresses().await {
            let now = addresses.reachability.name();
            for status in ["unknown", "public", "private"] {
                self.reachability
                    .get_or_create(&labels(&[("status", status)]))
                    .set(i64::from(status == now));
            }
            self.relay_reservations
                .set(i64::try_from(addresses.relays.len()).unwrap_or(i64::MAX));
        }
    }

    /// The metrics in the OpenMetrics text format, gauges refreshed first.
    pub async fn scrape(&self, node: &Node, transport: &Libp2pTransport) -> String {
        self.refresh(node, transport).await;
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &lock(&self.registry))
        {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        text
    }

    /// Serves `GET /metrics` on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener, node: Node, transport: Arc<Libp2pTransport>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    // Scrapers beyond the cap are turned away (the connection is closed).
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        continue;
                    };
                    let (metrics, node, transport) =
                        (self.clone(), node.clone(), Arc::clone(&transport));
                    tokio::spawn(async move {
                        let _slot = slot;
                        let _ = metrics.answer(stream, &node, &transport).await;
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn answer(
        &self,
        mut stream: TcpStream,
        node: &Node,
        transport: &Libp2pTransport,
    ) -> std::io::Result<()> {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        let read = async {
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            Ok::<_, std::io::Error>(())
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let (status, kind, body) = if line.starts_with(b"GET /metrics ") {
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.scrape(node, transport).await,
            )
        } else {
            (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "only GET /metrics is served\n".to_owned(),
            )
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    }
}
