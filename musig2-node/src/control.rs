//! The local control interface of a running node: one JSON request per line on a Unix socket,
//! one JSON reply per line back, one request per connection.
//!
//! ```text
//! → {"op":"create","signers":["02…","03…"],"peers":["12D3…",null],"message_hex":"68656c6c6f"}
//! ← {"ok":{"session":"5974…"}}
//! → {"op":"wait","session":"5974…"}
//! ← {"ok":{"session":"5974…","signature":"e0f4…"}}
//! → {"op":"join","session":"ffff…"}
//! ← {"error":{"kind":"not_found","message":"unknown session ffff…"}}
//! ```
//!
//! The socket is created owner-only: whoever can reach it can make the node sign.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use musig2_coordinator::{
    CoordinatorError, Node, SessionHealth, SessionRequest, Transcript, TranscriptLimits,
};
use musig2_core::{KeyAggContext, Tweak};
use musig2_proto::{MessageToSign, SessionId, Topology, VerifiedAnnouncement};
use musig2_transport::{Libp2pTransport, Multiaddr, PeerId};
use secp256k1::{PublicKey, schnorr};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

use crate::view::{self, abort_json, abort_words, announcement_json, health_json};
use crate::{ErrorKind, NodeError, Result};

/// Longest request line the node reads.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Longest reply line a client reads.
pub const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `wait` waits when the request does not say.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// Session topology, as named in requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopologyName {
    /// Everyone sends to everyone.
    #[default]
    Mesh,
    /// Signers send to an elected aggregator.
    Star,
}

impl From<TopologyName> for Topology {
    fn from(name: TopologyName) -> Self {
        match name {
            TopologyName::Mesh => Topology::Mesh,
            TopologyName::Star => Topology::Star,
        }
    }
}

/// One tweak of the aggregate key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TweakSpec {
    /// The tweak scalar, 64 hex digits.
    pub hex: String,
    /// X-only (Taproot-style) rather than plain (BIP32-style).
    #[serde(default)]
    pub x_only: bool,
}

/// One message of a multi-message session and the tweaks of its key, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    /// The message, hex.
    pub message_hex: String,
    /// Tweaks applied to the aggregate key for this message, in order.
    #[serde(default)]
    pub tweaks: Vec<TweakSpec>,
}

/// The BIP341 Taproot tweak.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaprootSpec {
    /// The script tree's Merkle root, 64 hex digits; absent for a key-path-only output.
    #[serde(default)]
    pub merkle_root: Option<String>,
}

fn parse_32(what: &'static str, text: &str) -> Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes)
        .map_err(|_| NodeError::invalid(what, "expected 64 hex digits"))?;
    Ok(bytes)
}

/// A session message from hex, at most [`musig2_proto::Limits::max_message_bytes`] long.
fn parse_message(message_hex: &str) -> Result<Vec<u8>> {
    let message =
        hex::decode(message_hex.trim()).map_err(|e| NodeError::invalid("message_hex", e))?;
    let max = musig2_proto::Limits::default().max_message_bytes;
    if message.len() > max {
        return Err(NodeError::invalid(
            "message",
            format!(
                "the message is {} bytes; a session message is at most {max} bytes",
                message.len()
            ),
        ));
    }
    Ok(message)
}

/// Core tweaks as the wire carries them.
fn wire_tweaks(tweaks: &[Tweak]) -> Result<Vec<musig2_proto::Tweak>> {
    tweaks
        .iter()
        .map(|t| musig2_proto::Tweak::new(t.value(), t.is_x_only()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| NodeError::invalid("tweaks", e))
}

/// The session's tweaks: `tweaks` in order, then the Taproot tweak of the key they give.
fn session_tweaks(
    signers: &[PublicKey],
    tweaks: &[TweakSpec],
    taproot: Option<&TaprootSpec>,
) -> Result<Vec<Tweak>> {
    let mut out = tweaks
        .iter()
        .map(|t| {
            Tweak::new(parse_32("tweak", &t.hex)?, t.x_only)
                .map_err(|e| NodeError::invalid("tweak", e))
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(taproot) = taproot {
        let root = taproot
            .merkle_root
            .as_deref()
            .map(|r| parse_32("taproot merkle root", r))
            .transpose()?;
        let internal = KeyAggContext::new(signers)
            .and_then(|ctx| ctx.with_tweaks(&out))
            .map_err(|e| NodeError::invalid("signers", e))?
            .x_only_key();
        out.push(
            Tweak::taproot(&internal, root.as_ref())
                .map_err(|e| NodeError::invalid("taproot tweak", e))?,
        );
    }
    Ok(out)
}

/// A request to a running node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The node's keys, addresses, connected and blocked peers.
    Info,
    /// Create and announce a session; this node must be one of the signers.
    Create {
        /// Signer public keys (compressed, hex), in key-aggregation order.
        signers: Vec<String>,
        /// The peer id of each signer where known (same length as `signers`, or empty). Listed
        /// peers get the announcement directly; the others look it up in the DHT.
        #[serde(default)]
        peers: Vec<Option<String>>,
        /// The message to sign, hex (or `messages`: give exactly one of the two).
        #[serde(default)]
        message_hex: Option<String>,
        /// Several messages signed in the same two rounds, each with its own key tweaks (a
        /// PSBT's inputs); `tweaks` and `taproot` must then be empty.
        #[serde(default)]
        messages: Vec<MessageSpec>,
        /// The digest of the document the messages come from (a PSBT's, 64 hex digits), so the
        /// other signers can check they review the same document.
        #[serde(default)]
        document_digest: Option<String>,
        /// Mesh (default) or star.
        #[serde(default)]
        topology: TopologyName,
        /// Whether to run a nonce-commitment round (default: the node's default policy).
        #[serde(default)]
        commitments: Option<bool>,
        /// Tweaks applied to the aggregate key, in order.
        #[serde(default)]
        tweaks: Vec<TweakSpec>,
        /// Finish with the BIP341 Taproot tweak of the key the tweaks above give.
        #[serde(default)]
        taproot: Option<TaprootSpec>,
        /// The join window in seconds: every signer must join within it (default: the node's).
        #[serde(default)]
        join_timeout_secs: Option<u64>,
        /// How many times the coordinator role may pass down the election order (star
        /// aggregator failover, broadcast turns; default 0: off).
        #[serde(default)]
        max_failovers: Option<u16>,
    },
    /// What a session would sign: its message, signers, aggregate key, tweaks, rules and
    /// deadlines (looking it up in the DHT if needed). Read it before joining.
    Show {
        /// Session id, hex.
        session: String,
        /// A Taproot script tree's Merkle root to check the session's last tweak against.
        #[serde(default)]
        taproot_merkle_root: Option<String>,
    },
    /// Join a session (looking it up in the DHT if needed).
    Join {
        /// Session id, hex.
        session: String,
    },
    /// The state of one session, or of all (`{"sessions": [...]}`).
    Status {
        /// Session id, hex; all sessions if absent.
        #[serde(default)]
        session: Option<String>,
    },
    /// Wait for a session's signature (a session the node has not heard of yet is looked up in
    /// the DHT and waited for; one nobody has announced is reported as not found).
    Wait {
        /// Session id, hex.
        session: String,
        /// Give up after this many seconds (default 300).
        #[serde(default)]
        timeout_secs: Option<u64>,
    },
    /// Abort a session.
    Cancel {
        /// Session id, hex.
        session: String,
    },
    /// Confirm that this node acted on a session's signature (its turn, see
    /// `Event::FinalizeDue`), with an opaque receipt (hex, at most 256 bytes, e.g. a txid).
    Confirm {
        /// Session id, hex.
        session: String,
        /// The receipt, hex.
        #[serde(default)]
        receipt: String,
    },
    /// The sessions that pass every filter given, as `status` shows them
    /// (`{"sessions": [...]}`).
    List {
        /// Only sessions in this phase (a name `status` prints: `created`, `joined`,
        /// `nonce_commit`, `nonce`, `partial_signature`, `done`, `aborted`).
        #[serde(default)]
        phase: Option<String>,
        /// Only running sessions waiting for this node: not joined yet, or with this node among
        /// the holdouts.
        #[serde(default)]
        waiting_for_me: bool,
        /// Only sessions at most this many seconds old.
        #[serde(default)]
        since_secs: Option<u64>,
    },
    /// Write a session's transcript (see `verify-transcript`) to a new file, owner-only (0600).
    /// The node writes it: the path must be absolute, and an existing file is not replaced.
    Export {
        /// Session id, hex.
        session: String,
        /// The file to create, an absolute path on the node's machine.
        out: PathBuf,
    },
    /// Take a transcript file into the node: a finished session for the record, an unfinished
    /// one resumes (at a new attempt). The node reads the file (size-capped before it is read).
    Import {
        /// The transcript file, an absolute path on the node's machine.
        file: PathBuf,
    },
    /// Forget every finished session now (memory and store), whatever the retention.
    Prune,
}

/// A reply from a running node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The request succeeded.
    Ok(Value),
    /// The request failed.
    Error {
        /// Machine-readable kind (see [`ErrorKind`]).
        kind: ErrorKind,
        /// Human-readable message.
        message: String,
        /// Structured details (an abort's reason, blamed signers and origin).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        details: Option<Value>,
    },
}

/// Parses a session id from 64 hex digits.
pub fn parse_session(text: &str) -> Result<SessionId> {
    parse_32("session id", text).map(SessionId::from_bytes)
}

/// Parses a signer key: compressed only (66 hex digits starting 02 or 03).
pub fn parse_signer_key(text: &str) -> Result<PublicKey> {
    let text = text.trim();
    if text.len() != 66 || !(text.starts_with("02") || text.starts_with("03")) {
        return Err(NodeError::invalid(
            "signer key",
            format!(
                "{text:?} is not a compressed public key (66 hex digits starting 02 or 03; \
                 uncompressed keys are not accepted)"
            ),
        ));
    }
    PublicKey::from_str(text).map_err(|e| NodeError::invalid("signer key", e))
}

/// What the control interface needs to know about the node it serves.
#[derive(Clone, Debug)]
pub struct Served {
    /// The signing node.
    pub node: Node,
    /// The libp2p transport under it (for addresses and peers).
    pub transport: Option<Arc<Libp2pTransport>>,
    /// The Prometheus endpoint, when enabled.
    pub metrics: Option<std::net::SocketAddr>,
}

/// An error that carries structured details for the reply.
struct Failure {
    error: NodeError,
    details: Option<Value>,
}

impl From<NodeError> for Failure {
    fn from(error: NodeError) -> Self {
        Self {
            error,
            details: None,
        }
    }
}

impl From<CoordinatorError> for Failure {
    fn from(error: CoordinatorError) -> Self {
        NodeError::from(error).into()
    }
}

/// The announcement of a session this node knows, if it does (from memory, no DHT lookup).
async fn known_announcement(node: &Node, session: SessionId) -> Option<VerifiedAnnouncement> {
    // A session retired between a listing and this call must not start a DHT lookup.
    node.known_session(session).await.ok().flatten()
}

/// Turns "session aborted" into a readable error with the details.
async fn aborted(node: &Node, error: CoordinatorError) -> Failure {
    match error {
        CoordinatorError::Aborted {
            session,
            reason,
            blamed,
            origin,
        } => {
            let announcement = known_announcement(node, session).await;
            let details = abort_json(
                announcement.as_ref(),
                reason,
                &blamed,
                origin,
                Some(&node.public_key()),
            );
            Failure {
                error: NodeError::Aborted(format!(
                    "session {session} aborted: {}",
                    abort_words(&details)
                )),
                details: Some(details),
            }
        }
        other => other.into(),
    }
}

/// A finished session's outcome: `Ok(signature)`, or the abort as a failure. `None` while the
/// session runs.
async fn outcome(
    node: &Node,
    session: SessionId,
) -> Result<Option<std::result::Result<Vec<schnorr::Signature>, Failure>>> {
    let health = node.health(session).await?;
    if !health.phase.is_terminal() {
        return Ok(None);
    }
    Ok(Some(match node.wait_for_signatures(session).await {
        Ok(signatures) => Ok(signatures),
        Err(e) => Err(aborted(node, e).await),
    }))
}

/// Waits for a session's signature. A session this node has not heard of yet is looked up in
/// the DHT meanwhile; if nobody has announced it there either, that is a not-found error.
async fn wait_for_signature(
    node: &Node,
    session: SessionId,
) -> std::result::Result<Vec<schnorr::Signature>, Failure> {
    let mut events = node.events();
    let mut looked_up = false;
    loop {
        match node.wait_for_signatures(session).await {
            Err(CoordinatorError::UnknownSession(_)) => {}
            Ok(signatures) => return Ok(signatures),
            Err(e) => return Err(aborted(node, e).await),
        }
        // Any event of this session means the node knows it now.
        let heard = async {
            loop {
                match events.recv().await {
                    Ok(event) if event.session() == session => return Ok(()),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(CoordinatorError::Shutdown);
                    }
                }
            }
        };
        if looked_up {
            heard.await?;
            continue;
        }
        looked_up = true;
        tokio::select! {
            heard = heard => heard?,
            found = node.discover_session(session) => match found {
                Ok(_) => {}
                Err(CoordinatorError::UnknownSession(_))
                | Err(CoordinatorError::Transport(
                    musig2_transport::TransportError::NotFound
                    | musig2_transport::TransportError::Timeout { .. },
                )) => {
                    // The announcement may have arrived directly meanwhile.
                    if node.health(session).await.is_err() {
                        return Err(NodeError::NotFound(format!(
                            "no node has announced session {session}: this node has not \
                             heard of it and the DHT does not have it"
                        ))
                        .into());
                    }
                }
                Err(e) => return Err(e.into()),
            },
        }
    }
}

/// What others should pass to `--bootstrap`, best first: external addresses; addresses peers
/// observed us at on a port we listen on (a connection to us arrived there, e.g. a NAT's
/// forwarded port); every non-loopback listen address; loopback last. No duplicates.
pub fn bootstrap_order(
    external: &[Multiaddr],
    observed: &[Multiaddr],
    listen: &[Multiaddr],
) -> Vec<Multiaddr> {
    let is_loopback = |a: &Multiaddr| {
        let text = a.to_string();
        text.starts_with("/ip4/127.") || text.starts_with("/ip6/::1/")
    };
    let tcp_port = |a: &Multiaddr| {
        let text = a.to_string();
        text.split_once("/tcp/")
            .and_then(|(_, rest)| rest.split('/').next().map(str::to_owned))
    };
    let listen_ports: Vec<String> = listen.iter().filter_map(tcp_port).collect();
    let mut candidates: Vec<Multiaddr> = external.to_vec();
    candidates.extend(
        observed
            .iter()
            .filter(|a| !is_loopback(a) && tcp_port(a).is_some_and(|p| listen_ports.contains(&p)))
            .cloned(),
    );
    candidates.extend(listen.iter().filter(|a| !is_loopback(a)).cloned());
    candidates.extend(listen.iter().filter(|a| is_loopback(a)).cloned());
    let mut ordered: Vec<Multiaddr> = Vec::with_capacity(candidates.len());
    for a in candidates {
        if !ordered.contains(&a) {
            ordered.push(a);
        }
    }
    ordered
}

async fn info(served: &Served) -> Result<Value> {
    let node = &served.node;
    let peer_id = node.peer_id().to_libp2p();
    let with_p2p = |addrs: &[Multiaddr]| -> Vec<String> {
        addrs
            .iter()
            .map(|a| {
                a.clone()
                    .with_p2p(peer_id)
                    .map_or_else(|a| a.to_string(), |a| a.to_string())
            })
            .collect()
    };
    let (addresses, connected) = match &served.transport {
        Some(transport) => {
            let addresses = transport.addresses().await?;
            let connected = transport.connected_peers().await?;
            (Some(addresses), connected)
        }
        None => (None, Vec::new()),
    };
    let mut connected: Vec<String> = connected.iter().map(ToString::to_string).collect();
    connected.sort();
    let (listen, external, observed, reachability, relays) = addresses
        .map(|a| (a.listen, a.external, a.observed, a.reachability, a.relays))
        .unwrap_or_default();
    let mut relays: Vec<String> = relays.iter().map(ToString::to_string).collect();
    relays.sort();
    let ordered = bootstrap_order(&external, &observed, &listen);
    Ok(json!({
        "public_key": node.public_key().to_string(),
        "peer_id": node.peer_id().to_string(),
        "running": true,
        "addresses": with_p2p(&ordered),
        "listen_addresses": with_p2p(&listen),
        "external_addresses": with_p2p(&external),
        "observed_addresses": observed.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "reachability": {
            "status": reachability.name(),
            "address": match &reachability {
                musig2_transport::Reachability::Public(a) => Some(a.to_string()),
                _ => None,
            },
        },
        "relay_reservations": relays,
        "connected_peers": { "count": connected.len(), "peers": connected },
        "blocked_peers": node.blocked_peers().await?.iter().map(|(peer, left)| json!({
            "peer_id": peer.to_string(),
            "seconds_left": left.as_secs(),
        })).collect::<Vec<_>>(),
        "metrics": served.metrics.map(|a| format!("http://{a}/metrics")),
    }))
}

async fn status(node: &Node, session: SessionId) -> Result<Value> {
    let health = node.health(session).await?;
    let announcement = known_announcement(node, session).await;
    let me = node.public_key();
    let mut value = health_json(&health, announcement.as_ref(), Some(&me));
    if let Some(a) = &announcement {
        let now = view::now_ms();
        let a = a.announcement();
        value["join_deadline"] = view::deadline_json(
            a.created_at_ms.saturating_add(a.policy.timeouts.join_ms),
            now,
        );
        value["expires"] = view::deadline_json(a.expires_at_ms, now);
    }
    match outcome(node, session).await? {
        Some(Ok(signatures)) => view::signatures_json(&mut value, &signatures),
        Some(Err(failure)) => {
            value["abort"] = failure.details.unwrap_or(Value::Null);
            value["abort_text"] = json!(failure.error.to_string());
        }
        None => {}
    }
    Ok(value)
}

/// [`status`] of a session listed a moment ago, `None` if the node forgot it since: retention
/// retires finished sessions at any moment, and a listing must not fail for one of them (the
/// soak bench saw `list` answer "unknown session" under load).
async fn status_if_still_held(node: &Node, session: SessionId) -> Result<Option<Value>> {
    match status(node, session).await {
        Ok(value) => Ok(Some(value)),
        Err(NodeError::Coordinator(CoordinatorError::UnknownSession(_))) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a session passes `list`'s filters.
fn listed(
    health: &SessionHealth,
    phase: Option<&str>,
    waiting_for_me: bool,
    since_secs: Option<u64>,
) -> bool {
    if phase.is_some_and(|p| p != view::phase_name(health.phase)) {
        return false;
    }
    if waiting_for_me {
        let running = !health.phase.is_terminal();
        let unjoined = matches!(health.phase, musig2_coordinator::Phase::Created);
        if !(running && (unjoined || health.holdouts.contains(&health.signer))) {
            return false;
        }
    }
    since_secs.is_none_or(|s| health.age_ms <= s.saturating_mul(1000))
}

/// A path the node is handed over the socket: it must be absolute (the node's working
/// directory is not the client's).
fn absolute(what: &'static str, path: &Path) -> Result<()> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(NodeError::invalid(
            what,
            format!("{} is not an absolute path", path.display()),
        ))
    }
}

/// Creates `path` (never replacing a file), owner-only, with `bytes`; removes it if the write
/// fails.
fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| NodeError::io("cannot create", path, e))?;
    if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(NodeError::io("cannot write", path, e));
    }
    Ok(())
}

/// Reads and decodes a transcript file, refusing one over the size limit unread.
fn read_transcript(path: &Path, limits: &TranscriptLimits) -> Result<Transcript> {
    let cap = u64::try_from(limits.max_file_bytes).unwrap_or(u64::MAX);
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(cap.saturating_add(1)).read_to_end(&mut bytes))
        .map_err(|e| NodeError::io("cannot read", path, e))?;
    if bytes.len() > limits.max_file_bytes {
        return Err(NodeError::invalid(
            "transcript",
            format!(
                "{} is larger than the {} bytes a transcript may have",
                path.display(),
                limits.max_file_bytes
            ),
        ));
    }
    Transcript::decode(&bytes, limits).map_err(transcript_error)
}

/// A transcript that does not decode or verify is invalid input.
fn transcript_error(error: CoordinatorError) -> NodeError {
    match error {
        CoordinatorError::Transcript { what, .. } => NodeError::invalid("transcript", what),
        other => other.into(),
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| NodeError::Control(format!("file task failed: {e}")))?
}

async fn execute(served: &Served, request: Request) -> std::result::Result<Value, Failure> {
    let node = &served.node;
    match request {
        Request::Info => Ok(info(served).await?),
        Request::Create {
            signers,
            peers,
            message_hex,
            messages,
            document_digest,
            topology,
            commitments,
            tweaks,
            taproot,
            join_timeout_secs,
            max_failovers,
        } => {
            let signers = signers
                .iter()
                .map(|s| parse_signer_key(s))
                .collect::<Result<Vec<_>>>()?;
            let peers = peers
                .iter()
                .map(|p| {
                    p.as_deref()
                        .map(|p| PeerId::from_str(p).map_err(|e| NodeError::invalid("peer id", e)))
                        .transpose()
                })
                .collect::<Result<Vec<_>>>()?;
            let messages = match (message_hex, messages.is_empty()) {
                (Some(message_hex), true) => vec![MessageToSign {
                    message: parse_message(&message_hex)?,
                    tweaks: wire_tweaks(&session_tweaks(&signers, &tweaks, taproot.as_ref())?)?,
                }],
                (None, false) if tweaks.is_empty() && taproot.is_none() => messages
                    .iter()
                    .map(|m| {
                        Ok(MessageToSign {
                            message: parse_message(&m.message_hex)?,
                            tweaks: wire_tweaks(&session_tweaks(&signers, &m.tweaks, None)?)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
                (None, false) => {
                    return Err(NodeError::invalid(
                        "messages",
                        "with `messages`, give each message's tweaks there, not `tweaks` or \
                         `taproot`",
                    )
                    .into());
                }
                _ => {
                    return Err(NodeError::invalid(
                        "message",
                        "give exactly one of `message_hex` and `messages`",
                    )
                    .into());
                }
            };
            let document_digest = document_digest
                .as_deref()
                .map(|d| parse_32("document digest", d))
                .transpose()?;
            let mut policy = node.default_policy();
            policy.topology = topology.into();
            if let Some(commitments) = commitments {
                policy.nonce_commitment = commitments;
            }
            if let Some(n) = max_failovers {
                policy.max_failovers = n;
            }
            if let Some(secs) = join_timeout_secs {
                if secs == 0 {
                    return Err(
                        NodeError::invalid("join timeout", "must be at least 1 second").into(),
                    );
                }
                policy.timeouts.join_ms = secs.saturating_mul(1000);
            }
            let untweaked =
                KeyAggContext::new(&signers).map_err(|e| NodeError::invalid("signers", e))?;
            let output_keys = messages
                .iter()
                .map(|m| {
                    let tweaks = musig2_coordinator::message_tweaks(m)
                        .map_err(|e| NodeError::invalid("tweaks", e))?;
                    Ok(untweaked
                        .clone()
                        .with_tweaks(&tweaks)
                        .map_err(|e| NodeError::invalid("tweaks", e))?
                        .x_only_key()
                        .to_string())
                })
                .collect::<Result<Vec<String>>>()?;
            let session = node
                .create_session(SessionRequest {
                    signers,
                    peers,
                    messages,
                    document_digest,
                    policy,
                })
                .await?;
            let created = node.discover_session(session).await?;
            let a = created.announcement();
            let now = view::now_ms();
            Ok(json!({
                "session": session.to_string(),
                "aggregate_key": output_keys[0],
                "output_key": output_keys[0],
                "output_keys": output_keys,
                "document_digest": document_digest.map(hex::encode),
                "join_deadline": view::deadline_json(
                    a.created_at_ms.saturating_add(a.policy.timeouts.join_ms),
                    now,
                ),
                "expires": view::deadline_json(a.expires_at_ms, now),
            }))
        }
        Request::Show {
            session,
            taproot_merkle_root,
        } => {
            let root = taproot_merkle_root
                .as_deref()
                .map(|r| parse_32("taproot merkle root", r))
                .transpose()?;
            let announcement = node.discover_session(parse_session(&session)?).await?;
            Ok(announcement_json(
                &announcement,
                Some(&node.public_key()),
                root.as_ref(),
            )?)
        }
        Request::Join { session } => {
            let session = parse_session(&session)?;
            // Joining after the join window would only abort the session for everyone.
            let announcement = node.discover_session(session).await?;
            let a = announcement.announcement();
            let window_end = a.created_at_ms.saturating_add(a.policy.timeouts.join_ms);
            let not_joined = node
                .health(session)
                .await
                .is_ok_and(|h| matches!(h.phase, musig2_coordinator::Phase::Created));
            if not_joined && view::now_ms() >= window_end {
                return Err(NodeError::Rejected(format!(
                    "the join window of session {session} ended at {}; ask the creator for a new \
                     session",
                    view::local_time(window_end)
                ))
                .into());
            }
            match node.join_session(session).await {
                Ok(()) => {}
                Err(CoordinatorError::SessionFinished(_)) => {
                    if let Some(Err(failure)) = outcome(node, session).await? {
                        return Err(failure);
                    }
                    return Err(
                        NodeError::Rejected(format!("session {session} has finished")).into(),
                    );
                }
                Err(e) => return Err(e.into()),
            }
            Ok(json!({ "session": session.to_string(), "joined": true }))
        }
        Request::Status { session: Some(id) } => Ok(status(node, parse_session(&id)?).await?),
        Request::Status { session: None } => {
            let mut all = Vec::new();
            for health in node.sessions().await? {
                all.extend(status_if_still_held(node, health.session).await?);
            }
            Ok(json!({ "sessions": all }))
        }
        Request::Wait {
            session,
            timeout_secs,
        } => {
            let session = parse_session(&session)?;
            let limit = timeout_secs.map_or(DEFAULT_WAIT, Duration::from_secs);
            let signatures = tokio::time::timeout(limit, wait_for_signature(node, session))
                .await
                .map_err(|_| NodeError::Timeout("waiting for the signature"))??;
            let mut value = json!({ "session": session.to_string() });
            view::signatures_json(&mut value, &signatures);
            Ok(value)
        }
        Request::Confirm { session, receipt } => {
            let session = parse_session(&session)?;
            let receipt = hex::decode(receipt.trim())
                .map_err(|e| NodeError::Rejected(format!("the receipt is not hex: {e}")))?;
            node.confirm_finalized(session, receipt.clone()).await?;
            Ok(json!({ "session": session.to_string(), "confirmed": hex::encode(receipt) }))
        }
        Request::Cancel { session } => {
            let session = parse_session(&session)?;
            match outcome(node, session).await? {
                Some(Ok(_)) => {
                    return Err(NodeError::Rejected(format!(
                        "session {session} is already signed; nothing to cancel"
                    ))
                    .into());
                }
                Some(Err(failure)) => {
                    return Err(Failure {
                        error: NodeError::Rejected(format!(
                            "session {session} has already ended: {}",
                            failure.error
                        )),
                        details: failure.details,
                    });
                }
                None => {}
            }
            node.cancel_session(session).await?;
            Ok(json!({ "session": session.to_string(), "cancelled": true }))
        }
        Request::List {
            phase,
            waiting_for_me,
            since_secs,
        } => {
            if let Some(p) = phase.as_deref() {
                if !view::PHASE_NAMES.contains(&p) {
                    return Err(NodeError::invalid(
                        "phase",
                        format!(
                            "{:?} is not a phase (one of: {})",
                            view::escape_untrusted(p).text,
                            view::PHASE_NAMES.join(", ")
                        ),
                    )
                    .into());
                }
            }
            let mut all = Vec::new();
            for health in node.sessions().await? {
                if listed(&health, phase.as_deref(), waiting_for_me, since_secs) {
                    all.extend(status_if_still_held(node, health.session).await?);
                }
            }
            Ok(json!({ "sessions": all }))
        }
        Request::Export { session, out } => {
            let session = parse_session(&session)?;
            absolute("--out", &out)?;
            let transcript = node.export_transcript(session).await?;
            let bytes = transcript.encode();
            let len = bytes.len();
            let path = out.clone();
            blocking(move || write_new_private(&path, &bytes)).await?;
            Ok(json!({
                "session": session.to_string(),
                "file": out.display().to_string(),
                "bytes": len,
                "envelopes": transcript.envelopes.len(),
                "finished": transcript.outcome.is_some(),
            }))
        }
        Request::Import { file } => {
            absolute("transcript file", &file)?;
            let limits = TranscriptLimits::default();
            let transcript = blocking(move || read_transcript(&file, &limits)).await?;
            let session = node
                .import_transcript(transcript)
                .await
                .map_err(transcript_error)?;
            let health = node.health(session).await?;
            Ok(json!({
                "session": session.to_string(),
                "imported": true,
                "phase": view::phase_name(health.phase),
                "finished": health.phase.is_terminal(),
            }))
        }
        Request::Prune => Ok(json!({ "pruned": node.prune_finished().await? })),
    }
}

/// Reads one line of at most `max` bytes (without the newline); `None` at end of input.
async fn read_line<R: AsyncRead + Unpin>(reader: R, max: usize) -> Result<Option<String>> {
    let mut line = Vec::new();
    let mut limited = BufReader::new(reader.take(max as u64 + 1));
    let read = limited
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| NodeError::Control(format!("read failed: {e}")))?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > max {
        return Err(NodeError::Control(format!("line longer than {max} bytes")));
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| NodeError::Control("line is not UTF-8".to_owned()))
}

fn reply_line(reply: &Reply) -> Vec<u8> {
    let mut line = serde_json::to_vec(reply).unwrap_or_else(|e| {
        // A reply is built from strings and numbers only; report rather than panic.
        format!(r#"{{"error":{{"kind":"internal","message":"cannot encode the reply: {e}"}}}}"#)
            .into_bytes()
    });
    line.push(b'\n');
    line
}

async fn serve_connection(served: Served, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let request =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_line(read, MAX_REQUEST_BYTES)).await {
            Ok(Ok(Some(line))) => {
                serde_json::from_str::<Request>(&line).map_err(|e| NodeError::invalid("request", e))
            }
            Ok(Ok(None)) => return,
            // An over-long or non-UTF-8 request is the client's mistake.
            Ok(Err(e)) => Err(NodeError::invalid("request", e)),
            Err(_) => Err(NodeError::Timeout("reading the request")),
        };
    let reply = match request {
        Ok(request) => execute(&served, request).await,
        Err(e) => Err(e.into()),
    };
    let reply = match reply {
        Ok(value) => Reply::Ok(value),
        Err(Failure { error, details }) => Reply::Error {
            kind: error.kind(),
            message: error.to_string(),
            details,
        },
    };
    // The client may have gone; nothing to do then.
    let _ = write.write_all(&reply_line(&reply)).await;
}

/// Serves control requests on `listener` until the task is dropped; each connection in its own
/// task.
pub async fn serve(listener: UnixListener, served: Served) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(served.clone(), stream));
            }
            Err(error) => {
                tracing::warn!(%error, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A failed request's error and its structured details, as the node sent them.
#[derive(Debug)]
pub struct CallError {
    /// The error (its kind is the node's).
    pub error: NodeError,
    /// The details the node attached, if any.
    pub details: Option<Value>,
}

impl From<NodeError> for CallError {
    fn from(error: NodeError) -> Self {
        Self {
            details: error.details(),
            error,
        }
    }
}

impl From<NodeError> for Box<CallError> {
    fn from(error: NodeError) -> Self {
        Box::new(error.into())
    }
}

/// Sends one request to the node listening on `socket` and returns its answer. The node's
/// errors keep their kind ([`NodeError::Remote`]); a socket nobody answers on is
/// [`NodeError::Unreachable`].
pub async fn call(socket: &Path, request: &Request) -> Result<Value> {
    call_detailed(socket, request).await.map_err(|e| e.error)
}

/// Like [`call`], keeping the details of an error reply.
pub async fn call_detailed(
    socket: &Path,
    request: &Request,
) -> std::result::Result<Value, CallError> {
    let plain = |error: NodeError| CallError {
        error,
        details: None,
    };
    let stream = UnixStream::connect(socket).await.map_err(|source| {
        plain(NodeError::Unreachable {
            path: socket.to_owned(),
            source,
        })
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| {
        plain(NodeError::Control(format!(
            "cannot encode the request: {e}"
        )))
    })?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .map_err(|e| plain(NodeError::io("cannot write to", socket, e)))?;
    let answer = read_line(read, MAX_REPLY_BYTES)
        .await
        .map_err(plain)?
        .ok_or_else(|| {
            plain(NodeError::Control(
                "the node closed the connection".to_owned(),
            ))
        })?;
    match serde_json::from_str::<Reply>(&answer)
        .map_err(|e| plain(NodeError::Control(format!("bad reply: {e}"))))?
    {
        Reply::Ok(value) => Ok(value),
        Reply::Error {
            kind,
            message,
            details,
        } => Err(CallError {
            error: NodeError::Remote { kind, message },
            details,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_json_form() {
        let create: Request = serde_json::from_str(
            r#"{"op":"create","signers":["02aa"],"peers":[null],"message_hex":"00"}"#,
        )
        .expect("create");
        assert_eq!(
            create,
            Request::Create {
                signers: vec!["02aa".to_owned()],
                peers: vec![None],
                message_hex: Some("00".to_owned()),
                messages: Vec::new(),
                document_digest: None,
                topology: TopologyName::Mesh,
                commitments: None,
                tweaks: Vec::new(),
                taproot: None,
                join_timeout_secs: None,
                max_failovers: None,
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Status { session: None }).expect("encode"),
            r#"{"op":"status","session":null}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"list","waiting_for_me":true}"#)
                .expect("list"),
            Request::List {
                phase: None,
                waiting_for_me: true,
                since_secs: None,
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"prune"}"#).expect("prune"),
            Request::Prune
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"export","session":"00","out":"/tmp/x"}"#)
                .expect("export"),
            Request::Export {
                session: "00".to_owned(),
                out: PathBuf::from("/tmp/x"),
            }
        );
        assert!(absolute("file", Path::new("relative.transcript")).is_err());
        for bad in [
            r#"{"op":"import"}"#,
            r#"{"op":"explode"}"#,
            r#"{"op":"join"}"#,
            r#"{"op":"join","session":"00","extra":1}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn session_ids_parse_from_hex_only() {
        let id = parse_session(&"ab".repeat(32)).expect("id");
        assert_eq!(id.to_bytes(), [0xab; 32]);
        for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(
                matches!(parse_session(bad), Err(NodeError::InvalidArgument { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn bootstrap_addresses_are_ordered_best_first() {
        let a = |t: &str| t.parse::<Multiaddr>().expect("multiaddr");
        let listen = [a("/ip4/127.0.0.1/tcp/4001"), a("/ip4/10.0.0.5/tcp/4001")];
        let observed = [
            a("/ip4/198.51.100.9/tcp/4001"), // on our listening port: a forwarded port
            a("/ip4/198.51.100.9/tcp/53211"), // an outbound connection's port: not handed out
            a("/ip4/127.0.0.1/tcp/4001"),
        ];
        let external = [a("/ip4/203.0.113.7/tcp/4001")];
        assert_eq!(
            bootstrap_order(&external, &observed, &listen),
            vec![
                a("/ip4/203.0.113.7/tcp/4001"),
                a("/ip4/198.51.100.9/tcp/4001"),
                a("/ip4/10.0.0.5/tcp/4001"),
                a("/ip4/127.0.0.1/tcp/4001"),
            ]
        );
    }

    #[tokio::test]
    async fn lines_are_capped_before_they_are_parsed() {
        let long = [b'x'; 100];
        let error = read_line(&long[..], 10).await.expect_err("too long");
        assert!(matches!(error, NodeError::Control(_)), "{error}");
        assert!(parse_signer_key(&format!("04{}", "ab".repeat(64))).is_err());
        assert_eq!(
            read_line(&b"short\nrest"[..], 10).await.expect("line"),
            Some("short".to_owned())
        );
        assert_eq!(read_line(&b""[..], 10).await.expect("end"), None);
        assert!(read_line(&[0xff, b'\n'][..], 10).await.is_err());
    }
}
