//! A long-running node: libp2p transport, signing node and control socket together.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use musig2_coordinator::{
    Config, CoordinatorError, Event, Node, RedbStore, announcement_record_validator,
};
use musig2_transport::{Libp2pConfig, Libp2pTransport, Multiaddr, PeerId, RelayLimits, Transport};
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::control::{self, Served};
use crate::keys::NodeKeys;
use crate::metrics::Metrics;
use crate::view;
use crate::{NodeError, Result};

/// How to run a node.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The node directory holding its keys (see [`crate::keys::generate`]).
    pub dir: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to connect to and bootstrap the DHT from.
    pub bootstrap: Vec<(PeerId, Multiaddr)>,
    /// The control socket to create.
    pub control: PathBuf,
    /// Join every session another signer announces to this node with this node's key in it.
    /// Off by default: a joined session signs the message it names.
    pub auto_join: bool,
    /// The signing node's settings.
    pub node: Config,
    /// Addresses to announce as reachable from outside (e.g. a forwarded port).
    pub external: Vec<Multiaddr>,
    /// Serve Prometheus metrics over HTTP on this address (`/metrics`); off when `None`.
    pub metrics: Option<std::net::SocketAddr>,
    /// The session store file (default `DIR/sessions.redb`): sessions survive a restart and
    /// resume. `None` keeps them in memory only.
    pub store: Option<PathBuf>,
    /// A shell command run when a session's signature is this node's to act on (see
    /// [`on_signature`]); `None`: the operator confirms with `session confirm`.
    pub on_signature: Option<String>,
    /// Offer circuit relay v2 to other nodes within these limits (`None`: not a relay). Give
    /// the node an external address too: a relay hands those out in reservations.
    pub relay_server: Option<RelayLimits>,
    /// Relays to reserve a slot on and be reachable through, each `<multiaddr>/p2p/<id>`.
    pub relays: Vec<Multiaddr>,
    /// Let AutoNAT trust probes over private and documentation addresses (LANs, test nets).
    pub autonat_private_ips: bool,
}

/// File name of the session store inside a node directory.
pub const STORE_FILE: &str = "sessions.redb";

/// Opens the session store at `path`. A store another running node holds (redb locks the
/// file) is an "in use" error naming the file.
pub fn open_store(path: &Path, config: &Config) -> Result<RedbStore> {
    RedbStore::open(path, config.limits).map_err(|error| match error {
        CoordinatorError::Store(text) if text.contains("already open") => NodeError::io(
            "cannot open the session store",
            path,
            std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                "in use by another running node (it holds the file's lock)",
            ),
        ),
        other => other.into(),
    })
}

impl DaemonConfig {
    /// A node of directory `dir` listening on `listen`: control socket `dir/control.sock`, no
    /// bootstrap peers, no auto-join, default settings, no metrics.
    pub fn new(dir: impl Into<PathBuf>, listen: Vec<Multiaddr>) -> Self {
        let dir = dir.into();
        let store = dir.join(STORE_FILE);
        Self {
            control: crate::keys::default_control_socket(&dir),
            dir,
            listen,
            bootstrap: Vec::new(),
            auto_join: false,
            node: Config::default(),
            external: Vec::new(),
            metrics: None,
            store: Some(store),
            on_signature: None,
            relay_server: None,
            relays: Vec::new(),
            autonat_private_ips: false,
        }
    }
}

/// A running node.
#[derive(Debug)]
pub struct Daemon {
    node: Node,
    transport: Arc<Libp2pTransport>,
    addresses: Vec<Multiaddr>,
    control: PathBuf,
    metrics: Option<std::net::SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    resumed: Resumed,
}

/// What a daemon found in its session store when it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resumed {
    /// Sessions taken back from the store (finished ones included).
    pub sessions: usize,
    /// Of those, the ones still running (they continue, at a new attempt when needed).
    pub unfinished: usize,
}

/// Creates the control socket at `path`, owner-only. A socket file left by a node that is gone is
/// replaced; one that still answers is not.
async fn bind_control(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(NodeError::io(
                "another node is serving",
                path,
                std::io::ErrorKind::AddrInUse.into(),
            ));
        }
        std::fs::remove_file(path).map_err(|e| NodeError::io("cannot remove stale", path, e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| NodeError::io("cannot bind", path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| NodeError::io("cannot restrict", path, e))?;
    }
    Ok(listener)
}

/// An event as JSON: `{"event": <kind>, "session": <id>, "at": <UTC time>, "at_ms": …, ...}`.
/// [`describe_event`] adds who the signers of an abort are.
pub fn event_json(event: &Event) -> Value {
    let session = event.session().to_string();
    let mut value = match event {
        Event::SessionCreated { .. } => json!({ "event": "created", "session": session }),
        Event::SessionAnnounced { .. } => json!({ "event": "announced", "session": session }),
        Event::SessionDiscovered { .. } => json!({ "event": "discovered", "session": session }),
        Event::SessionJoined { signer, .. } => {
            json!({ "event": "joined", "session": session, "signer": signer.get() })
        }
        Event::ParticipantJoined { signer, .. } => {
            json!({ "event": "participant_joined", "session": session, "signer": signer.get() })
        }
        Event::NoncesComplete { .. } => json!({ "event": "nonces_complete", "session": session }),
        Event::PartialSignaturesComplete { .. } => {
            json!({ "event": "partial_signatures_complete", "session": session })
        }
        Event::SignatureReady { signatures, .. } => {
            let mut value = json!({ "event": "signature_ready", "session": session });
            view::signatures_json(&mut value, signatures);
            value
        }
        Event::Aborted {
            reason,
            blamed,
            origin,
            ..
        } => {
            let mut value = view::abort_json(None, *reason, blamed, *origin, None);
            value["event"] = json!("aborted");
            value["session"] = json!(session);
            value
        }
        Event::ParticipantDisconnected { signer, peer, .. } => json!({
            "event": "participant_disconnected",
            "session": session,
            "signer": signer.get(),
            "peer": peer.to_string(),
        }),
        Event::SessionRefused { listed_peer, .. } => json!({
            "event": "refused",
            "session": session,
            "reason": "misrouted",
            "listed_peer": listed_peer.to_string(),
            "text": format!(
                "the announcement lists peer {listed_peer} for this node's key; refused, and the \
                 other signers were told"
            ),
        }),
        Event::SessionEvicted { limit, .. } => json!({
            "event": "evicted",
            "session": session,
            "limit": limit,
            "text": format!(
                "dropped before being joined to respect {limit}; join it by id to fetch it again"
            ),
        }),
        Event::AttemptStarted {
            attempt, signer, ..
        } => json!({
            "event": "attempt_started",
            "session": session,
            "attempt": attempt.get(),
            "signer": signer.get(),
            "text": format!(
                "signer #{} restarted (it lost a nonce it may have sent); the signers start \
                 again at attempt {} with fresh nonces, nobody blamed",
                signer.get(),
                attempt.get()
            ),
        }),
        Event::SessionResumed { .. } => json!({
            "event": "resumed",
            "session": session,
            "text": "taken back from the session store after this node restarted",
        }),
        Event::CoordinatorFailover {
            attempt,
            replaced,
            coordinator,
            ..
        } => json!({
            "event": "coordinator_failover",
            "session": session,
            "attempt": attempt.get(),
            "replaced": replaced.get(),
            "coordinator": coordinator.get(),
            "text": format!(
                "aggregator {} missed its deadline; signer {} took over at attempt {} with fresh                  nonces",
                replaced.get(),
                coordinator.get(),
                attempt.get()
            ),
        }),
        Event::FinalizeDue {
            signatures,
            position,
            ..
        } => json!({
            "event": "finalize_due",
            "session": session,
            "signature": signatures.first().map(ToString::to_string),
            "signatures": signatures.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "position": position,
            "text": "this node's turn to act on the signature; confirm with `session confirm`",
        }),
        Event::BroadcastConfirmed { by, receipt, .. } => json!({
            "event": "broadcast_confirmed",
            "session": session,
            "by": by.get(),
            "receipt": hex::encode(receipt),
        }),
        Event::BroadcastFailover { failed, next, .. } => json!({
            "event": "broadcast_failover",
            "session": session,
            "failed": failed.get(),
            "next": next.get(),
        }),
        Event::BroadcastExhausted { .. } => json!({
            "event": "broadcast_exhausted",
            "session": session,
            "text": "no coordinator confirmed the broadcast in time",
        }),
        other => json!({ "event": "other", "session": session, "debug": format!("{other:?}") }),
    };
    let now = view::now_ms();
    value["at"] = json!(view::utc_time(now));
    value["at_ms"] = json!(now);
    value
}

/// [`event_json`], with the blamed signers and the claimant of an abort named (key, peer id,
/// whether it is this node).
pub async fn describe_event(node: &Node, event: &Event) -> Value {
    let mut value = event_json(event);
    if let Event::Aborted {
        session,
        reason,
        blamed,
        origin,
    } = event
    {
        let announcement = node.discover_session(*session).await.ok();
        let detail = view::abort_json(
            announcement.as_ref(),
            *reason,
            blamed,
            *origin,
            Some(&node.public_key()),
        );
        for key in ["blamed", "origin"] {
            value[key] = detail[key].clone();
        }
        value["text"] = json!(view::abort_words(&detail));
    }
    if let Event::AttemptStarted {
        session,
        attempt,
        signer,
    } = event
    {
        let announcement = node.discover_session(*session).await.ok();
        let who = view::signer_json(announcement.as_ref(), *signer, Some(&node.public_key()));
        value["text"] = json!(format!(
            "{} restarted (it lost a nonce it may have sent); the signers start again at \
             attempt {} with fresh nonces, nobody blamed",
            view::signer_words(&who),
            attempt.get()
        ));
        value["signer_detail"] = who;
    }
    value
}

/// Most `--on-signature` commands running at once.
const MAX_CONCURRENT_SIGNATURE_COMMANDS: usize = 4;
/// How long an `--on-signature` command may run before it is killed (not confirmed).
const SIGNATURE_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// Most stdout bytes read from an `--on-signature` command.
const SIGNATURE_COMMAND_MAX_OUTPUT: usize = 4096;

/// Runs `command` for every session whose signature is this node's turn to act on
/// ([`Event::FinalizeDue`]) and confirms with its output, until the event stream ends.
pub async fn on_signature(node: Node, mut events: broadcast::Receiver<Event>, command: String) {
    let slots = Arc::new(tokio::sync::Semaphore::new(
        MAX_CONCURRENT_SIGNATURE_COMMANDS,
    ));
    loop {
        match events.recv().await {
            Ok(Event::FinalizeDue {
                session,
                signatures,
                position,
            }) => {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (node, command) = (node.clone(), command.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    // Space-separated hex, one per message, in the announcement's order.
                    let messages = match node.discover_session(session).await {
                        Ok(ann) => ann
                            .announcement()
                            .messages
                            .iter()
                            .map(|m| hex::encode(&m.message))
                            .collect::<Vec<_>>()
                            .join(" "),
                        Err(error) => {
                            tracing::warn!(%session, %error, "no announcement for --on-signature");
                            return;
                        }
                    };
                    let env = [
                        ("MUSIG2_SESSION", session.to_string()),
                        (
                            "MUSIG2_SIGNATURE",
                            signatures
                                .iter()
                                .map(|s| hex::encode(s.to_byte_array()))
                                .collect::<Vec<_>>()
                                .join(" "),
                        ),
                        ("MUSIG2_MESSAGE", messages),
                        ("MUSIG2_POSITION", position.to_string()),
                    ];
                    match run_signature_command(&command, &env).await {
                        Ok(receipt) => match node.confirm_finalized(session, receipt).await {
                            Ok(()) => tracing::info!(%session, "broadcast confirmed"),
                            Err(error) => tracing::warn!(%session, %error, "cannot confirm"),
                        },
                        Err(why) => {
                            tracing::warn!(%session, %why, "--on-signature did not confirm");
                        }
                    }
                });
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Runs `sh -c command` with `env`; its trimmed stdout is the receipt (hex is decoded). Fails
/// on a non-zero exit, a timeout or a receipt over 256 bytes.
pub async fn run_signature_command(
    command: &str,
    env: &[(&str, String)],
) -> std::result::Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `{command}`: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let run = async {
        let mut out = Vec::new();
        let mut limited = (&mut stdout).take(SIGNATURE_COMMAND_MAX_OUTPUT as u64);
        limited
            .read_to_end(&mut out)
            .await
            .map_err(|e| format!("reading its output: {e}"))?;
        let status = child
            .wait()
            .await
            .map_err(|e| format!("waiting for it: {e}"))?;
        Ok::<_, String>((status, out))
    };
    let (status, out) = tokio::time::timeout(SIGNATURE_COMMAND_TIMEOUT, run)
        .await
        .map_err(|_| format!("`{command}` ran past {SIGNATURE_COMMAND_TIMEOUT:?}"))??;
    if !status.success() {
        return Err(format!("`{command}` exited with {status}"));
    }
    let text = String::from_utf8_lossy(&out);
    let trimmed = text.trim();
    let receipt = match hex::decode(trimmed) {
        Ok(bytes) if !trimmed.is_empty() => bytes,
        _ => trimmed.as_bytes().to_vec(),
    };
    if receipt.len() > musig2_proto::MAX_RECEIPT_BYTES {
        return Err(format!(
            "its receipt is {} bytes; at most {} are sent",
            receipt.len(),
            musig2_proto::MAX_RECEIPT_BYTES
        ));
    }
    Ok(receipt)
}

/// Most joins `--auto-join` runs at once; further announcements wait (or, once the event
/// queue overflows, are skipped and can be joined by hand).
const MAX_CONCURRENT_AUTO_JOINS: usize = 8;

/// Joins every session announced to this node until the event stream ends.
async fn auto_join(node: Node, mut events: broadcast::Receiver<Event>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_AUTO_JOINS));
    loop {
        match events.recv().await {
            Ok(Event::SessionDiscovered { session, .. }) => {
                let node = node.clone();
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                tokio::spawn(async move {
                    let _slot = slot;
                    match node.join_session(session).await {
                        Ok(()) => tracing::info!(%session, "joined"),
                        Err(error) => tracing::warn!(%session, %error, "could not join"),
                    }
                });
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl Daemon {
    /// Loads the keys, starts the libp2p node and the signing node, and opens the control
    /// socket.
    pub async fn start(config: DaemonConfig) -> Result<Self> {
        let keys = NodeKeys::load(&config.dir)?;
        let listener = bind_control(&config.control).await?;
        let store = match &config.store {
            Some(path) => match open_store(path, &config.node) {
                Ok(store) => Some(store),
                Err(e) => {
                    drop(listener);
                    let _ = std::fs::remove_file(&config.control);
                    return Err(e);
                }
            },
            None => None,
        };
        let metrics_listener =
            match config.metrics {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    NodeError::io("cannot listen for metrics on", addr.to_string(), e)
                })?),
                None => None,
            };
        let metrics = metrics_listener.as_ref().map(|_| Metrics::new());
        let transport = Libp2pTransport::spawn(Libp2pConfig {
            listen_addrs: config.listen.clone(),
            bootstrap: config.bootstrap.clone(),
            key: keys.identity.clone(),
            record_validator: Some(announcement_record_validator(config.node.limits)),
            external_addrs: config.external.clone(),
            metrics: metrics.as_ref().map(Metrics::registry),
            // No frame the node accepts is larger than the wire limit: refuse bigger ones at
            // the transport, before they are read into memory.
            max_frame: config.node.limits.max_frame_bytes,
            relay_server: config.relay_server.clone(),
            relays: config.relays.clone(),
            autonat_only_global_ips: !config.autonat_private_ips,
            ..Libp2pConfig::default()
        })
        .await;
        let transport = match transport {
            Ok(transport) => Arc::new(transport),
            Err(e) => {
                // Leave no socket behind for a node that did not start.
                drop(listener);
                let _ = std::fs::remove_file(&config.control);
                return Err(e.into());
            }
        };
        let peer = transport.local_peer_id().to_libp2p();
        let mut addresses: Vec<Multiaddr> = config.external.clone();
        addresses.extend(transport.addresses().await?.listen);
        let addresses = addresses
            .into_iter()
            .map(|a| a.with_p2p(peer))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|a| NodeError::invalid("listen address", a))?;
        let shared = Arc::clone(&transport) as Arc<dyn Transport>;
        let node = match store {
            Some(store) => {
                match Node::spawn_with_store(shared, keys.signing, config.node.clone(), store) {
                    Ok(node) => node,
                    Err(e) => {
                        let _ = transport.shutdown().await;
                        drop(listener);
                        let _ = std::fs::remove_file(&config.control);
                        return Err(e.into());
                    }
                }
            }
            None => Node::spawn(shared, keys.signing, config.node.clone()),
        };
        let held = node.sessions().await?;
        let resumed = Resumed {
            sessions: held.len(),
            unfinished: held.iter().filter(|h| !h.phase.is_terminal()).count(),
        };
        if resumed.sessions > 0 {
            tracing::info!(
                sessions = resumed.sessions,
                unfinished = resumed.unfinished,
                store = %config.store.as_deref().unwrap_or(Path::new("-")).display(),
                "resumed {} stored sessions ({} still running)",
                resumed.sessions,
                resumed.unfinished
            );
        } else {
            tracing::info!("no stored sessions to resume");
        }
        let mut tasks = Vec::new();
        if config.auto_join {
            tasks.push(tokio::spawn(auto_join(node.clone(), node.events())));
        }
        if let Some(command) = config.on_signature.clone() {
            tasks.push(tokio::spawn(on_signature(
                node.clone(),
                node.events(),
                command,
            )));
        }
        let mut metrics_addr = None;
        if let (Some(metrics), Some(listener)) = (metrics, metrics_listener) {
            metrics_addr = listener.local_addr().ok();
            metrics.note_resumed(resumed.sessions);
            tasks.push(tokio::spawn(
                metrics.clone().record(node.clone(), node.events()),
            ));
            tasks.push(tokio::spawn(metrics.serve(
                listener,
                node.clone(),
                Arc::clone(&transport),
            )));
        }
        tasks.push(tokio::spawn(control::serve(
            listener,
            Served {
                node: node.clone(),
                transport: Some(Arc::clone(&transport)),
                metrics: metrics_addr,
            },
        )));
        Ok(Self {
            node,
            transport,
            addresses,
            control: config.control,
            metrics: metrics_addr,
            tasks,
            resumed,
        })
    }

    /// What the node took back from its session store when it started.
    pub fn resumed(&self) -> Resumed {
        self.resumed
    }

    /// The signing node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// External and listen addresses at start, each ending in `/p2p/<peer id>` (what other
    /// nodes bootstrap from); a listen on `0.0.0.0` shows every interface.
    pub fn addresses(&self) -> &[Multiaddr] {
        &self.addresses
    }

    /// The libp2p transport.
    pub fn transport(&self) -> &Arc<Libp2pTransport> {
        &self.transport
    }

    /// Where the Prometheus endpoint listens, when enabled.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics
    }

    /// The control socket.
    pub fn control_socket(&self) -> &Path {
        &self.control
    }

    /// Stops serving, shuts the node down and removes the control socket.
    pub async fn shutdown(self) -> Result<()> {
        for task in &self.tasks {
            task.abort();
        }
        // The signing node shuts its transport down as well.
        let result = self.node.shutdown().await;
        let _ = std::fs::remove_file(&self.control);
        Ok(result?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use musig2_coordinator::AbortOrigin;
    use musig2_proto::{AbortReason, SessionId, SignerIndex};

    #[test]
    fn events_have_a_stable_json_form() {
        let session = SessionId::from_bytes([7; 32]);
        let blamed = SignerIndex::try_from(2usize).expect("index");
        let aborted = event_json(&Event::Aborted {
            session,
            reason: AbortReason::Timeout,
            blamed: vec![blamed],
            origin: AbortOrigin::Local,
        });
        assert_eq!(aborted["event"], "aborted");
        assert_eq!(aborted["session"], "07".repeat(32));
        assert_eq!(aborted["reason"], "timeout");
        assert_eq!(aborted["blamed"][0]["index"], 2);
        assert_eq!(aborted["origin"]["kind"], "local");
        assert!(!aborted.to_string().contains("SignerIndex"), "{aborted}");
        let mut joined = event_json(&Event::SessionJoined {
            session,
            signer: blamed,
        });
        assert!(
            joined["at_ms"]
                .as_u64()
                .is_some_and(|t| t > 1_700_000_000_000)
        );
        assert!(joined["at"].as_str().is_some_and(|t| t.ends_with('Z')));
        let obj = joined.as_object_mut().expect("object");
        obj.remove("at");
        obj.remove("at_ms");
        assert_eq!(
            joined,
            serde_json::json!({"event": "joined", "session": "07".repeat(32), "signer": 2})
        );
        // The hardening's events have their own stable forms, never Rust debug text.
        let evicted = event_json(&Event::SessionEvicted {
            session,
            limit: "max_unjoined_sessions",
        });
        assert_eq!(evicted["event"], "evicted");
        assert_eq!(evicted["limit"], "max_unjoined_sessions");
        let misrouted = event_json(&Event::Aborted {
            session,
            reason: AbortReason::Misrouted,
            blamed: vec![SignerIndex::try_from(0usize).expect("index")],
            origin: AbortOrigin::Remote(blamed),
        });
        assert_eq!(misrouted["reason"], "misrouted");
        let restarted = event_json(&Event::AttemptStarted {
            session,
            attempt: musig2_proto::Attempt::new(1).expect("attempt"),
            signer: blamed,
        });
        assert_eq!(restarted["event"], "attempt_started");
        assert_eq!(restarted["attempt"], 1);
        assert_eq!(restarted["signer"], 2);
        assert!(
            restarted["text"]
                .as_str()
                .is_some_and(|t| t.contains("attempt 1")),
            "{restarted}"
        );
        let resumed = event_json(&Event::SessionResumed { session });
        assert_eq!(resumed["event"], "resumed");
        assert!(resumed["text"].is_string());
        for value in [evicted, misrouted, restarted, resumed] {
            assert!(!value.to_string().contains("debug"), "{value}");
        }
    }

    #[tokio::test]
    async fn a_signature_command_confirms_only_on_success_with_a_short_receipt() {
        let env = [("MUSIG2_SESSION", "ab".to_owned())];
        assert_eq!(
            run_signature_command("echo \"  $MUSIG2_SESSION  \"", &env).await,
            Ok(vec![0xab]),
            "hex output is decoded"
        );
        assert_eq!(
            run_signature_command("echo not-hex", &env).await,
            Ok(b"not-hex".to_vec())
        );
        assert!(
            run_signature_command("echo ab; exit 3", &env)
                .await
                .is_err()
        );
        assert!(
            run_signature_command("head -c 300 /dev/zero | tr '\\0' x", &env)
                .await
                .is_err(),
            "a receipt over 256 bytes is not sent"
        );
        assert!(
            run_signature_command("/nonexistent-command-xyz", &env)
                .await
                .is_err()
        );
    }
}
