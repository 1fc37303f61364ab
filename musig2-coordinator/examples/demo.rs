//! End-to-end demo: N signers on loopback libp2p produce one BIP340 signature under their MuSig2
//! aggregate key.
//!
//! ```text
//! cargo run --release -p musig2-coordinator --example demo [-- --signers N]
//! ```
//!
//! Node 0 creates a session (mesh topology, nonce commitments on) and lists no peer but its
//! own, so the other signers learn nothing but the session id: they fetch the signed
//! announcement from the DHT, verify it, join, and run the rounds. Every node's DHT store
//! refuses records that are not a correctly signed, unexpired announcement under its own id
//! (`announcement_record_validator`). The demo checks the final signature with
//! `secp256k1::schnorr::verify` and prints the time each phase took, from the nodes' event
//! streams.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use musig2_coordinator::{Config, Event, Node, SessionRequest, announcement_record_validator};
use musig2_core::KeyAggContext;
use musig2_proto::{SessionId, Topology};
use musig2_transport::{Libp2pConfig, Libp2pTransport, Transport};
use secp256k1::{Keypair, schnorr};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

const MESSAGE: &[u8] = b"musig2-p2p demo: pay 1 BTC to Carol";
const USAGE: &str = "usage: demo [--signers N]   (2 <= N <= 128, default 3)";

/// A milestone's name and the event that marks it on a node.
type Milestone = (&'static str, fn(&Event) -> bool);

/// Milestones of a session, in protocol order.
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

fn parse_signers() -> Result<usize, String> {
    let mut args = std::env::args().skip(1);
    let mut signers = 3;
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--signers" | "-n" => args.next().ok_or("--signers needs a value")?,
            "--help" | "-h" => return Err(String::new()),
            other => match other.strip_prefix("--signers=") {
                Some(v) => v.to_owned(),
                None => return Err(format!("unknown argument {other:?}")),
            },
        };
        signers = value
            .parse()
            .map_err(|_| format!("not a number: {value:?}"))?;
    }
    if !(2..=128).contains(&signers) {
        return Err(format!(
            "--signers must be between 2 and 128, got {signers}"
        ));
    }
    Ok(signers)
}

/// Records every event of `session` a node emits, with the time it was seen, until the session
/// ends on that node.
fn record_events(
    mut events: broadcast::Receiver<Event>,
    session: Arc<std::sync::OnceLock<SessionId>>,
) -> JoinHandle<Vec<(Instant, Event)>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            match events.recv().await {
                Ok(event) => {
                    let at = Instant::now();
                    let end = matches!(event, Event::SignatureReady { .. } | Event::Aborted { .. });
                    let ours = session.get().is_none_or(|s| *s == event.session());
                    if ours {
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

/// `n` nodes on 127.0.0.1, all bootstrapped off node 0, once every Kademlia routing table holds
/// `min(n - 1, 20)` peers. (`Libp2pTransport::spawn_local_network` waits for all `n - 1`, which
/// Kademlia's 20-entry buckets rarely allow beyond about 20 nodes.)
async fn local_network(
    n: usize,
    config: Libp2pConfig,
) -> Result<Vec<Libp2pTransport>, Box<dyn std::error::Error>> {
    let first = Libp2pTransport::spawn(config.clone()).await?;
    let boot = (first.local_peer_id(), first.listen_addrs()[0].clone());
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(
            Libp2pTransport::spawn(Libp2pConfig {
                bootstrap: vec![boot.clone()],
                ..config.clone()
            })
            .await?,
        );
    }
    let want = (n - 1).min(20);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ready = true;
        for node in &nodes {
            if node.routing_table_size().await? < want {
                ready = false;
                node.bootstrap().await?;
            }
        }
        if ready {
            return Ok(nodes);
        }
        if Instant::now() >= deadline {
            return Err("routing tables not populated within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ms(d: Duration) -> String {
    format!("{:8.2} ms", d.as_secs_f64() * 1e3)
}

async fn run(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::default();
    println!("Starting {n} libp2p nodes on 127.0.0.1 ...");
    let setup = Instant::now();
    let transports = local_network(
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
    println!(
        "Network ready in {:.0} ms (every Kademlia routing table populated).\n",
        setup.elapsed().as_secs_f64() * 1e3
    );

    let signers: Vec<_> = keypairs.iter().map(Keypair::public_key).collect();
    let aggregate = KeyAggContext::new(&signers)?.x_only_key();
    println!("Signers:");
    for (i, (node, key)) in nodes.iter().zip(&signers).enumerate() {
        println!("  #{i:<3} key {key}  peer {}", node.peer_id());
    }
    println!("Aggregate key (x-only): {aggregate}");
    println!("Message: {:?}\n", String::from_utf8_lossy(MESSAGE));

    // Subscribe before anything happens so no event is missed.
    let session_cell = Arc::new(std::sync::OnceLock::new());
    let recorders: Vec<_> = nodes
        .iter()
        .map(|node| record_events(node.events(), session_cell.clone()))
        .collect();

    let mut peers = vec![None; n];
    peers[0] = Some(nodes[0].peer_id());
    let mut policy = nodes[0].default_policy();
    policy.topology = Topology::Mesh;
    policy.nonce_commitment = true;
    let request = SessionRequest {
        signers: signers.clone(),
        peers,
        message: MESSAGE.to_vec(),
        tweaks: Vec::new(),
        policy,
    };

    let start = Instant::now();
    let session = nodes[0].create_session(request).await?;
    let _ = session_cell.set(session);
    println!("Session id: {session}");
    println!("(the other signers get only this id and look the session up in the DHT)\n");

    // Every other signer discovers the announcement through the DHT and joins.
    let joins = nodes[1..].iter().map(|node| {
        let node = node.clone();
        tokio::spawn(async move { node.join_session(session).await })
    });
    for join in futures_join(joins).await {
        join??;
    }
    let mut signatures = Vec::with_capacity(n);
    for node in &nodes {
        signatures.push(node.wait_for_signature(session).await?);
    }
    let total = start.elapsed();

    let signature: schnorr::Signature = signatures[0];
    if signatures.iter().any(|s| *s != signature) {
        return Err("the nodes hold different signatures".into());
    }
    schnorr::verify(&signature, MESSAGE, &aggregate)
        .map_err(|e| format!("final signature does not verify: {e}"))?;
    println!("Signature: {signature}");
    println!(
        "Verified with secp256k1::schnorr::verify under the aggregate key; identical on all {n} nodes.\n"
    );

    let mut timelines = Vec::with_capacity(n);
    for recorder in recorders {
        timelines.push(recorder.await?);
    }
    println!("Phases (time at which the last node reached each milestone):");
    println!(
        "  {:<32} {:>11} {:>11}",
        "milestone", "phase", "since start"
    );
    let mut previous = start;
    for (name, matches) in MILESTONES {
        let reached = timelines
            .iter()
            .filter_map(|events| events.iter().find(|(_, e)| matches(e)).map(|(t, _)| *t))
            .max();
        match reached {
            Some(at) => {
                let at = at.max(previous);
                println!("  {name:<32} {} {}", ms(at - previous), ms(at - start));
                previous = at;
            }
            None => println!("  {name:<32} {:>11}", "(no event)"),
        }
    }
    // The last event can trail the last `wait_for_signature` reply by a few microseconds.
    let total = total.max(previous - start);
    println!(
        "  {:<32} {:>11} {}",
        "total (create -> all signed)",
        "",
        ms(total)
    );

    for node in &nodes {
        node.shutdown().await?;
    }
    Ok(())
}

/// Awaits every task, in order.
async fn futures_join<T>(
    tasks: impl Iterator<Item = JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let tasks: Vec<_> = tasks.collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await);
    }
    out
}

fn main() -> ExitCode {
    let n = match parse_signers() {
        Ok(n) => n,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), run(n))
            .await
            .unwrap_or_else(|_| Err("demo did not finish within 60 s".into()))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
