//! A long-running node: libp2p transport, signing node and control socket together.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use musig2_coordinator::{Config, Event, Node, announcement_record_validator};
use musig2_transport::{Libp2pConfig, Libp2pTransport, Multiaddr, PeerId, Transport};
use tokio::net::UnixListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::control::{self, Served};
use crate::keys::NodeKeys;
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
}

/// A running node.
#[derive(Debug)]
pub struct Daemon {
    node: Node,
    addresses: Vec<Multiaddr>,
    control: PathBuf,
    tasks: Vec<JoinHandle<()>>,
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

/// An event as JSON: `{"event": <kind>, "session": <id>, ...}`.
pub fn event_json(event: &Event) -> serde_json::Value {
    use serde_json::json;
    let session = event.session().to_string();
    match event {
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
        Event::SignatureReady { signature, .. } => json!({
            "event": "signature_ready", "session": session, "signature": signature.to_string(),
        }),
        Event::Aborted {
            reason,
            blamed,
            origin,
            ..
        } => json!({
            "event": "aborted",
            "session": session,
            "reason": format!("{reason:?}"),
            "blamed": blamed.iter().map(|s| s.get()).collect::<Vec<_>>(),
            "origin": format!("{origin:?}"),
        }),
        Event::ParticipantDisconnected { signer, peer, .. } => json!({
            "event": "participant_disconnected",
            "session": session,
            "signer": signer.get(),
            "peer": peer.to_string(),
        }),
        other => json!({ "event": format!("{other:?}"), "session": session }),
    }
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
        let transport = Libp2pTransport::spawn(Libp2pConfig {
            listen_addrs: config.listen.clone(),
            bootstrap: config.bootstrap.clone(),
            key: keys.identity.clone(),
            record_validator: Some(announcement_record_validator(config.node.limits)),
            ..Libp2pConfig::default()
        })
        .await?;
        let addresses = transport
            .listen_addrs()
            .iter()
            .map(|a| a.clone().with_p2p(transport.local_peer_id().to_libp2p()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|a| NodeError::invalid("listen address", a))?;
        let node = Node::spawn(
            Arc::new(transport) as Arc<dyn Transport>,
            keys.signing,
            config.node.clone(),
        );
        let mut tasks = Vec::new();
        if config.auto_join {
            tasks.push(tokio::spawn(auto_join(node.clone(), node.events())));
        }
        tasks.push(tokio::spawn(control::serve(
            listener,
            Served {
                node: node.clone(),
                addresses: addresses.clone(),
            },
        )));
        Ok(Self {
            node,
            addresses,
            control: config.control,
            tasks,
        })
    }

    /// The signing node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Listen addresses, each ending in `/p2p/<peer id>` (what other nodes bootstrap from).
    pub fn addresses(&self) -> &[Multiaddr] {
        &self.addresses
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
        assert_eq!(aborted["reason"], "Timeout");
        assert_eq!(aborted["blamed"], serde_json::json!([2]));
        let joined = event_json(&Event::SessionJoined {
            session,
            signer: blamed,
        });
        assert_eq!(
            joined,
            serde_json::json!({"event": "joined", "session": "07".repeat(32), "signer": 2})
        );
    }
}
