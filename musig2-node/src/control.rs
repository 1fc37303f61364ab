//! The local control interface of a running node: one JSON request per line on a Unix socket,
//! one JSON reply per line back, one request per connection.
//!
//! ```text
//! → {"op":"create","signers":["02…","03…"],"peers":["12D3…",null],"message_hex":"68656c6c6f"}
//! ← {"ok":{"session":"5974…"}}
//! → {"op":"wait","session":"5974…"}
//! ← {"ok":{"session":"5974…","signature":"e0f4…"}}
//! → {"op":"join","session":"ffff…"}
//! ← {"error":{"kind":"coordinator","message":"unknown session ffff…"}}
//! ```
//!
//! The socket is created owner-only: whoever can reach it can make the node sign.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use musig2_coordinator::{CoordinatorError, Node, SessionHealth, SessionRequest};
use musig2_core::{KeyAggContext, Tweak};
use musig2_proto::{SessionId, Topology, VerifiedAnnouncement};
use musig2_transport::{Multiaddr, PeerId};
use secp256k1::{PublicKey, schnorr};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

use crate::{NodeError, Result};

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
    /// The node's keys, addresses and blocked peers.
    Info,
    /// Create and announce a session; this node must be one of the signers.
    Create {
        /// Signer public keys (compressed, hex), in key-aggregation order.
        signers: Vec<String>,
        /// The peer id of each signer where known (same length as `signers`, or empty). Listed
        /// peers get the announcement directly; the others look it up in the DHT.
        #[serde(default)]
        peers: Vec<Option<String>>,
        /// The message to sign, hex.
        message_hex: String,
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
    },
    /// What a session would sign: its message, signers, aggregate key and rules (looking it up
    /// in the DHT if needed). Read it before joining.
    Show {
        /// Session id, hex.
        session: String,
    },
    /// Join a session (looking it up in the DHT if needed).
    Join {
        /// Session id, hex.
        session: String,
    },
    /// The state of one session, or of all.
    Status {
        /// Session id, hex; all sessions if absent.
        #[serde(default)]
        session: Option<String>,
    },
    /// Wait for a session's signature (a session the node has not heard of yet is waited for).
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
}

/// A reply from a running node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The request succeeded.
    Ok(Value),
    /// The request failed.
    Error {
        /// Machine-readable kind (see [`NodeError::kind`]).
        kind: String,
        /// Human-readable message.
        message: String,
    },
}

/// Parses a session id from 64 hex digits.
pub fn parse_session(text: &str) -> Result<SessionId> {
    parse_32("session id", text).map(SessionId::from_bytes)
}

fn health_json(health: &SessionHealth) -> Value {
    json!({
        "session": health.session.to_string(),
        "phase": format!("{:?}", health.phase),
        "signer": health.signer.get(),
        "signers": health.signers,
        "age_ms": health.age_ms,
        "holdouts": health.holdouts.iter().map(|s| s.get()).collect::<Vec<_>>(),
        "joined": health.joined,
        "commitments": health.commitments,
        "nonces": health.nonces,
        "partial_signatures": health.partial_signatures,
        "coordinator": health.coordinator.get(),
        "attempt": health.attempt.get(),
        "rejected_messages": health.rejected_messages,
    })
}

fn announcement_json(verified: &VerifiedAnnouncement) -> Result<Value> {
    let announcement = verified.announcement();
    let tweaks = announcement
        .tweaks
        .iter()
        .map(|t| musig2_core::Tweak::new(t.value(), t.is_x_only()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| NodeError::invalid("announcement tweaks", e))?;
    let aggregate = KeyAggContext::new(&verified.signer_keys())
        .and_then(|ctx| ctx.with_tweaks(&tweaks))
        .map_err(|e| NodeError::invalid("announcement signers", e))?;
    let policy = &announcement.policy;
    Ok(json!({
        "session": verified.session_id().to_string(),
        "message_hex": hex::encode(&announcement.message),
        "message_text": std::str::from_utf8(&announcement.message).ok(),
        "aggregate_key": aggregate.x_only_key().to_string(),
        "tweaks": announcement.tweaks.len(),
        "creator": announcement.creator.get(),
        "signers": announcement.signers.iter().map(|s| json!({
            "public_key": s.key.to_string(),
            "peer_id": s.peer_id.as_ref().and_then(|p| PeerId::from_bytes(p.as_bytes()).ok()).map(|p| p.to_string()),
        })).collect::<Vec<_>>(),
        "topology": format!("{:?}", policy.topology),
        "nonce_commitment": policy.nonce_commitment,
        "election": format!("{:?}", policy.election),
        "created_at_ms": announcement.created_at_ms,
        "expires_at_ms": announcement.expires_at_ms,
    }))
}

/// What the control interface needs to know about the node it serves.
#[derive(Clone, Debug)]
pub struct Served {
    /// The signing node.
    pub node: Node,
    /// Its listen addresses, each ending in `/p2p/<peer id>`.
    pub addresses: Vec<Multiaddr>,
}

/// Waits for a session's signature; a session this node has not heard of yet (its announcement
/// is still on the way) is waited for rather than refused.
async fn wait_for_signature(node: &Node, session: SessionId) -> Result<schnorr::Signature> {
    let mut events = node.events();
    loop {
        match node.wait_for_signature(session).await {
            Err(CoordinatorError::UnknownSession(_)) => {}
            other => return Ok(other?),
        }
        // Any event of this session means the node knows it now.
        loop {
            match events.recv().await {
                Ok(event) if event.session() == session => break,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(CoordinatorError::Shutdown.into());
                }
            }
        }
    }
}

async fn execute(served: &Served, request: Request) -> Result<Value> {
    let node = &served.node;
    match request {
        Request::Info => Ok(json!({
            "public_key": node.public_key().to_string(),
            "peer_id": node.peer_id().to_string(),
            "addresses": served.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "blocked_peers": node.blocked_peers().await?.iter().map(|(peer, left)| json!({
                "peer_id": peer.to_string(),
                "seconds_left": left.as_secs(),
            })).collect::<Vec<_>>(),
        })),
        Request::Create {
            signers,
            peers,
            message_hex,
            topology,
            commitments,
            tweaks,
            taproot,
        } => {
            let signers = signers
                .iter()
                .map(|s| PublicKey::from_str(s).map_err(|e| NodeError::invalid("signer key", e)))
                .collect::<Result<Vec<_>>>()?;
            let peers = peers
                .iter()
                .map(|p| {
                    p.as_deref()
                        .map(|p| PeerId::from_str(p).map_err(|e| NodeError::invalid("peer id", e)))
                        .transpose()
                })
                .collect::<Result<Vec<_>>>()?;
            let message = hex::decode(message_hex.trim())
                .map_err(|e| NodeError::invalid("message_hex", e))?;
            let mut policy = node.default_policy();
            policy.topology = topology.into();
            if let Some(commitments) = commitments {
                policy.nonce_commitment = commitments;
            }
            let tweaks = session_tweaks(&signers, &tweaks, taproot.as_ref())?;
            let aggregate = KeyAggContext::new(&signers)
                .and_then(|ctx| ctx.with_tweaks(&tweaks))
                .map_err(|e| NodeError::invalid("signers", e))?
                .x_only_key();
            let session = node
                .create_session(SessionRequest {
                    signers,
                    peers,
                    message,
                    tweaks,
                    policy,
                })
                .await?;
            Ok(json!({ "session": session.to_string(), "aggregate_key": aggregate.to_string() }))
        }
        Request::Show { session } => {
            let announcement = node.discover_session(parse_session(&session)?).await?;
            announcement_json(&announcement)
        }
        Request::Join { session } => {
            let session = parse_session(&session)?;
            node.join_session(session).await?;
            Ok(json!({ "session": session.to_string(), "joined": true }))
        }
        Request::Status { session: Some(id) } => {
            Ok(health_json(&node.health(parse_session(&id)?).await?))
        }
        Request::Status { session: None } => Ok(Value::Array(
            node.sessions().await?.iter().map(health_json).collect(),
        )),
        Request::Wait {
            session,
            timeout_secs,
        } => {
            let session = parse_session(&session)?;
            let limit = timeout_secs.map_or(DEFAULT_WAIT, Duration::from_secs);
            let signature = tokio::time::timeout(limit, wait_for_signature(node, session))
                .await
                .map_err(|_| NodeError::Timeout("waiting for the signature"))??;
            Ok(json!({ "session": session.to_string(), "signature": signature.to_string() }))
        }
        Request::Cancel { session } => {
            let session = parse_session(&session)?;
            node.cancel_session(session).await?;
            Ok(json!({ "session": session.to_string(), "cancelled": true }))
        }
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
        format!(r#"{{"error":{{"kind":"control","message":"cannot encode the reply: {e}"}}}}"#)
            .into_bytes()
    });
    line.push(b'\n');
    line
}

async fn serve_connection(served: Served, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let request =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_line(read, MAX_REQUEST_BYTES)).await {
            Ok(Ok(Some(line))) => serde_json::from_str::<Request>(&line)
                .map_err(|e| NodeError::Control(format!("bad request: {e}"))),
            Ok(Ok(None)) => return,
            Ok(Err(e)) => Err(e),
            Err(_) => Err(NodeError::Timeout("reading the request")),
        };
    let reply = match request {
        Ok(request) => execute(&served, request).await,
        Err(e) => Err(e),
    };
    let reply = match reply {
        Ok(value) => Reply::Ok(value),
        Err(e) => Reply::Error {
            kind: e.kind().to_owned(),
            message: e.to_string(),
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

/// Sends one request to the node listening on `socket` and returns its answer.
pub async fn call(socket: &Path, request: &Request) -> Result<Value> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| NodeError::io("cannot connect to", socket, e))?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)
        .map_err(|e| NodeError::Control(format!("cannot encode the request: {e}")))?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .map_err(|e| NodeError::io("cannot write to", socket, e))?;
    let answer = read_line(read, MAX_REPLY_BYTES)
        .await?
        .ok_or_else(|| NodeError::Control("the node closed the connection".to_owned()))?;
    match serde_json::from_str::<Reply>(&answer)
        .map_err(|e| NodeError::Control(format!("bad reply: {e}")))?
    {
        Reply::Ok(value) => Ok(value),
        Reply::Error { kind, message } => Err(NodeError::Control(format!("{kind}: {message}"))),
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
                message_hex: "00".to_owned(),
                topology: TopologyName::Mesh,
                commitments: None,
                tweaks: Vec::new(),
                taproot: None,
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Status { session: None }).expect("encode"),
            r#"{"op":"status","session":null}"#
        );
        for bad in [
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

    #[tokio::test]
    async fn lines_are_capped_before_they_are_parsed() {
        let long = [b'x'; 100];
        let error = read_line(&long[..], 10).await.expect_err("too long");
        assert!(matches!(error, NodeError::Control(_)), "{error}");
        assert_eq!(
            read_line(&b"short\nrest"[..], 10).await.expect("line"),
            Some("short".to_owned())
        );
        assert_eq!(read_line(&b""[..], 10).await.expect("end"), None);
        assert!(read_line(&[0xff, b'\n'][..], 10).await.is_err());
    }
}
