//! The local demo: n signers on loopback libp2p produce one BIP340 signature under their MuSig2
//! aggregate key.
//!
//! Node 0 creates the session and lists no peer but its own, so the other signers learn nothing
//! but the session id: they fetch the signed announcement from the DHT, verify it, join, and run
//! the rounds. Every node's DHT store refuses records that are not a correctly signed, unexpired
//! announcement under its own id. The demo checks the final signature with
//! `secp256k1::schnorr::verify` and reports when the last node reached each phase.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use musig2_coordinator::{Config, Event, Node, SessionRequest, announcement_record_validator};
use musig2_core::KeyAggContext;
use musig2_proto::{SessionId, Topology};
use musig2_transport::{Libp2pConfig, Libp2pTransport, Transport};
use secp256k1::{Keypair, schnorr};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::{NodeError, Result};

/// The message the demo signs.
pub const DEMO_MESSAGE: &[u8] = b"musig2-p2p demo: pay 1 BTC to Carol";

/// Most signers the demo runs.
pub const MAX_DEMO_SIGNERS: usize = 128;

/// How the demo session runs.
#[derive(Clone, Copy, Debug)]
pub struct DemoOptions {
    /// Number of signers (2 ..= [`MAX_DEMO_SIGNERS`]).
    pub signers: usize,
    /// Mesh or star.
    pub topology: Topology,
    /// Whether the session has a nonce-commitment round.
    pub commitments: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            signers: 3,
            topology: Topology::Mesh,
            commitments: true,
        }
    }
}

/// One signer of the demo.
#[derive(Clone, Debug, Serialize)]
pub struct DemoSigner {
    /// Signing key, compressed hex.
    pub public_key: String,
    /// libp2p peer id.
    pub peer_id: String,
}

/// When the last node reached one milestone.
#[derive(Clone, Debug, Serialize)]
pub struct DemoPhase {
    /// The milestone.
    pub milestone: &'static str,
    /// Milliseconds since the previous milestone (`None`: no node reported it).
    pub phase_ms: Option<f64>,
    /// Milliseconds since `create_session` was called.
    pub since_start_ms: Option<f64>,
}

/// What the demo did.
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    /// Milliseconds to start the nodes and fill their routing tables.
    pub setup_ms: f64,
    /// The signers, in key-aggregation order.
    pub signers: Vec<DemoSigner>,
    /// The x-only aggregate key, hex.
    pub aggregate_key: String,
    /// The signed message, as text.
    pub message: String,
    /// The session id, hex.
    pub session: String,
    /// The BIP340 signature, hex; verified, and identical on every node.
    pub signature: String,
    /// Milestones in protocol order.
    pub phases: Vec<DemoPhase>,
    /// Milliseconds from `create_session` until every node held the signature.
    pub total_ms: f64,
}

/// A milestone's name and the event that marks it on a node.
type Milestone = (&'static str, fn(&Event) -> bool);

const MILESTONES: [Milestone; 6] = [
    ("announced in the DHT", |e| {
        matches!(e, Event::SessionAnnounced { .. })
    }),
    ("discovered through the DHT", |e| {
        matches!(
            e,
            Event::SessionDiscovered { .. } | Event::SessionCreated { .. }
        )
    }),
    ("joined", |e| matches!(e, Event::SessionJoined { .. })),
    ("nonces complete", |e| {
        matches!(e, Event::NoncesComplete { .. })
    }),
    ("partial signatures complete", |e| {
        matches!(e, Event::PartialSignaturesComplete { .. })
    }),
    ("signature ready", |e| {
        matches!(e, Event::SignatureReady { .. })
    }),
];

/// Records every event of `session` a node emits, with the time it was seen, until the session
/// ends on that node.
fn record_events(
    mut events: broadcast::Receiver<Event>,
    session: Arc<OnceLock<SessionId>>,
) -> JoinHandle<Vec<(Instant, Event)>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            match events.recv().await {
                Ok(event) => {
                    let at = Instant::now();
                    let end = matches!(event, Event::SignatureReady { .. } | Event::Aborted { .. });
                    if session.get().is_none_or(|s| *s == event.session()) {
                        seen.push((at, event));
                        if end {
                            break;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        seen
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the demo: starts `options.signers` nodes on 127.0.0.1, signs [`DEMO_MESSAGE`] and
/// shuts the nodes down. Must run inside a multi-thread tokio runtime.
pub async fn run(options: DemoOptions) -> Result<DemoReport> {
    let n = options.signers;
    if !(2..=MAX_DEMO_SIGNERS).contains(&n) {
        return Err(NodeError::invalid(
            "signers",
            format!("must be between 2 and {MAX_DEMO_SIGNERS}, got {n}"),
        ));
    }
    let config = Config::default();
    let setup = Instant::now();
    let transports = Libp2pTransport::spawn_local_network(
        n,
        Libp2pConfig {
            record_validator: Some(announcement_record_validator(config.limits)),
            ..Libp2pConfig::default()
        },
    )
    .await?;
    let keypairs: Vec<Keypair> = (0..n).map(|_| Keypair::new(&mut rand::rng())).collect();
    let nodes: Vec<Node> = transports
        .into_iter()
        .zip(&keypairs)
        .map(|(t, kp)| Node::spawn(Arc::new(t) as Arc<dyn Transport>, *kp, config.clone()))
        .collect();
    let setup_ms = ms(setup.elapsed());
    let report = sign(&nodes, &keypairs, options, setup_ms).await;
    for node in &nodes {
        node.shutdown().await?;
    }
    report
}

/// Signs the demo message on `nodes` and reports it; `setup_ms` goes into the report as is.
async fn sign(
    nodes: &[Node],
    keypairs: &[Keypair],
    options: DemoOptions,
    setup_ms: f64,
) -> Result<DemoReport> {
    let signers: Vec<_> = keypairs.iter().map(Keypair::public_key).collect();
    let aggregate = KeyAggContext::new(&signers)
        .map_err(|e| NodeError::invalid("signers", e))?
        .x_only_key();

    // Subscribe before anything happens so no event is missed.
    let session_cell = Arc::new(OnceLock::new());
    let recorders: Vec<_> = nodes
        .iter()
        .map(|node| record_events(node.events(), session_cell.clone()))
        .collect();

    let mut peers = vec![None; nodes.len()];
    peers[0] = Some(nodes[0].peer_id());
    let mut policy = nodes[0].default_policy();
    policy.topology = options.topology;
    policy.nonce_commitment = options.commitments;
    let request = SessionRequest {
        signers: signers.clone(),
        peers,
        messages: vec![musig2_proto::MessageToSign::new(DEMO_MESSAGE.to_vec())],
        document_digest: None,
        policy,
    };

    let start = Instant::now();
    let session = nodes[0].create_session(request).await?;
    let _ = session_cell.set(session);
    // Every other signer discovers the announcement through the DHT and joins.
    let joins: Vec<_> = nodes[1..]
        .iter()
        .map(|node| {
            let node = node.clone();
            tokio::spawn(async move { node.join_session(session).await })
        })
        .collect();
    for join in joins {
        join.await
            .map_err(|e| NodeError::Control(format!("join task failed: {e}")))??;
    }
    let mut signatures = Vec::with_capacity(nodes.len());
    for node in nodes {
        signatures.push(node.wait_for_signatures(session).await?);
    }
    let total = start.elapsed();

    // The demo signs one message: one signature per node.
    let signature: schnorr::Signature = signatures[0][0];
    if signatures.iter().any(|s| s.as_slice() != [signature]) {
        return Err(NodeError::Control(
            "the nodes hold different signatures".to_owned(),
        ));
    }
    schnorr::verify(&signature, DEMO_MESSAGE, &aggregate)
        .map_err(|e| NodeError::Control(format!("the final signature does not verify: {e}")))?;

    let mut timelines = Vec::with_capacity(nodes.len());
    for recorder in recorders {
        timelines.push(
            recorder
                .await
                .map_err(|e| NodeError::Control(format!("event recorder failed: {e}")))?,
        );
    }
    let mut phases = Vec::with_capacity(MILESTONES.len());
    let mut previous = start;
    for (milestone, matches) in MILESTONES {
        let reached = timelines
            .iter()
            .filter_map(|events| events.iter().find(|(_, e)| matches(e)).map(|(t, _)| *t))
            .max();
        phases.push(match reached {
            Some(at) => {
                let at = at.max(previous);
                let phase = DemoPhase {
                    milestone,
                    phase_ms: Some(ms(at - previous)),
                    since_start_ms: Some(ms(at - start)),
                };
                previous = at;
                phase
            }
            None => DemoPhase {
                milestone,
                phase_ms: None,
                since_start_ms: None,
            },
        });
    }
    Ok(DemoReport {
        setup_ms,
        signers: nodes
            .iter()
            .zip(&signers)
            .map(|(node, key)| DemoSigner {
                public_key: key.to_string(),
                peer_id: node.peer_id().to_string(),
            })
            .collect(),
        aggregate_key: aggregate.to_string(),
        message: String::from_utf8_lossy(DEMO_MESSAGE).into_owned(),
        session: session.to_string(),
        signature: signature.to_string(),
        phases,
        // The last event can trail the last `wait_for_signature` reply by a few microseconds.
        total_ms: ms(total.max(previous - start)),
    })
}
