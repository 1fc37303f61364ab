//! Prometheus metrics of a running node (`run --metrics ADDR`), in the OpenMetrics text format
//! on `GET /metrics`, with `prometheus-client` (the library of libp2p's own metrics, which are
//! served alongside: swarm, Kademlia query durations, identify, ping, bandwidth).
//!
//! Session metrics come from the node's events (outcomes, phase durations, aborts, blamed
//! signers) and from its state at scrape time (sessions by phase, rejected messages, blocked and
//! connected peers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use musig2_coordinator::{AbortOrigin, Event, Node};
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
    rejected_messages: Gauge,
    blocked_peers: Gauge,
    connected_peers: Gauge,
    events: Counter,
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
            rejected_messages: Gauge::default(),
            blocked_peers: Gauge::default(),
            connected_peers: Gauge::default(),
            events: Counter::default(),
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
            "rejected_messages",
            "Messages the known sessions rejected (invalid, unauthenticated, replayed)",
            metrics.rejected_messages.clone(),
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
        *lock(&metrics.registry) = registry;
        metrics
    }

    /// The registry, to add libp2p's metrics to (see `Libp2pConfig::metrics`).
    pub fn registry(&self) -> Arc<Mutex<Registry>> {
        Arc::clone(&self.registry)
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
            let mut rejected = 0u64;
            for health in &sessions {
                self.sessions
                    .get_or_create(&labels(&[("phase", view::phase_name(health.phase))]))
                    .inc();
                rejected = rejected.saturating_add(health.rejected_messages);
            }
            self.rejected_messages
                .set(i64::try_from(rejected).unwrap_or(i64::MAX));
        }
        if let Ok(blocked) = node.blocked_peers().await {
            self.blocked_peers
                .set(i64::try_from(blocked.len()).unwrap_or(i64::MAX));
        }
        if let Ok(peers) = transport.connected_peers().await {
            self.connected_peers
                .set(i64::try_from(peers.len()).unwrap_or(i64::MAX));
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
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let (metrics, node, transport) =
                        (self.clone(), node.clone(), Arc::clone(&transport));
                    tokio::spawn(async move {
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
