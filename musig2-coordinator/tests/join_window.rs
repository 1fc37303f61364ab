//! The join window: signers have `join_timeout` (human time, from creation) to join, apart
//! from the machine-time round deadlines. Paused tokio clock, in-memory network.

use std::sync::Arc;
use std::time::Duration;

use musig2_coordinator::{Config, CoordinatorError, Node, SessionRequest};
use musig2_proto::AbortReason;
use musig2_transport::MemoryNetwork;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use secp256k1::{Keypair, schnorr};

fn nodes(seed: u64, join_timeout: Duration) -> (Vec<Keypair>, Vec<Node>) {
    let network = MemoryNetwork::new(seed);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let keypairs: Vec<Keypair> = (0..2).map(|_| Keypair::new(&mut rng)).collect();
    let config = Config {
        join_timeout,
        dht_query_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let nodes = keypairs
        .iter()
        .map(|kp| Node::spawn(Arc::new(network.add_node()), *kp, config.clone()))
        .collect();
    (keypairs, nodes)
}

fn request(keypairs: &[Keypair], node: &Node) -> SessionRequest {
    SessionRequest {
        signers: keypairs.iter().map(|k| k.public_key()).collect(),
        // No peer ids: round 1 waits until every signer has joined.
        peers: Vec::new(),
        messages: vec![musig2_proto::MessageToSign::new(b"read me first".to_vec())],
        document_digest: None,
        policy: node.default_policy(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_signer_may_join_late_within_the_join_window() {
    let (keypairs, nodes) = nodes(7, Duration::from_secs(120));
    assert_eq!(nodes[0].default_policy().timeouts.join_ms, 120_000);
    let id = nodes[0]
        .create_session(request(&keypairs, &nodes[0]))
        .await
        .expect("create");
    // Far past the 30 s nonce timeout, within the 2-minute join window.
    tokio::time::sleep(Duration::from_secs(100)).await;
    nodes[1].join_session(id).await.expect("join late");
    let a: Vec<schnorr::Signature> = nodes[0].wait_for_signatures(id).await.expect("signed");
    let b = nodes[1].wait_for_signatures(id).await.expect("signed");
    assert_eq!(a, b);
}

#[tokio::test(start_paused = true)]
async fn the_join_window_ends_when_announced() {
    let (keypairs, nodes) = nodes(8, Duration::from_secs(120));
    let start = tokio::time::Instant::now();
    let id = nodes[0]
        .create_session(request(&keypairs, &nodes[0]))
        .await
        .expect("create");
    match nodes[0].wait_for_signatures(id).await {
        Err(CoordinatorError::Aborted { reason, blamed, .. }) => {
            assert_eq!(reason, AbortReason::Timeout);
            assert_eq!(blamed.len(), 1);
            assert_eq!(blamed[0].get(), 1);
        }
        other => panic!("expected a timeout abort, got {other:?}"),
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(120) && waited < Duration::from_secs(130),
        "aborted after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn with_announced_peers_round_one_waits_out_the_join_window_too() {
    let (keypairs, nodes) = nodes(9, Duration::from_secs(120));
    let mut request = request(&keypairs, &nodes[0]);
    // Announced peers let round 1 start at once; the late signer still has its window.
    request.peers = nodes.iter().map(|n| Some(n.peer_id())).collect();
    let id = nodes[0].create_session(request).await.expect("create");
    tokio::time::sleep(Duration::from_secs(100)).await;
    nodes[1].join_session(id).await.expect("join late");
    let a = nodes[0].wait_for_signatures(id).await.expect("signed");
    assert_eq!(a, nodes[1].wait_for_signatures(id).await.expect("signed"));
}
