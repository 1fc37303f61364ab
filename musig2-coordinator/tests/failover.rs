//! Failover and the broadcast turn between `Node`s (ADR 0008), on the in-memory network under
//! a paused clock.

use std::sync::Arc;
use std::time::Duration;

use musig2_coordinator::{Config, Event, Node, SessionRequest};
use musig2_proto::{ElectionMethod, Policy, SessionId, Timeouts, Topology};
use musig2_transport::MemoryNetwork;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use secp256k1::Keypair;

fn keypairs(n: usize, seed: u64) -> Vec<Keypair> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n).map(|_| Keypair::new(&mut rng)).collect()
}

fn request(nodes: &[Node], keys: &[Keypair], message: &[u8], policy: Policy) -> SessionRequest {
    SessionRequest {
        signers: keys.iter().map(Keypair::public_key).collect(),
        peers: nodes.iter().map(|n| Some(n.peer_id())).collect(),
        messages: vec![musig2_proto::MessageToSign::new(message.to_vec())],
        document_digest: None,
        policy,
    }
}

fn star_policy(node: &Node, max_failovers: u16) -> Policy {
    Policy {
        topology: Topology::Star,
        election: ElectionMethod::FirstSigner,
        max_failovers,
        ..node.default_policy()
    }
}

async fn next_matching(
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    want: impl Fn(&Event) -> bool,
) -> Event {
    loop {
        let e = events.recv().await.expect("event stream");
        if want(&e) {
            return e;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_aggregator_cut_off_at_the_start_is_replaced_and_the_session_signs() {
    for commit in [false, true] {
        let network = MemoryNetwork::new(41);
        let keys = keypairs(4, 41);
        let nodes: Vec<Node> = keys
            .iter()
            .map(|kp| Node::spawn(Arc::new(network.add_node()), *kp, Config::default()))
            .collect();
        let peers: Vec<_> = nodes.iter().map(Node::peer_id).collect();
        let mut policy = star_policy(&nodes[0], 2);
        policy.nonce_commitment = commit;
        policy.timeouts.join_ms = 5_000;
        let req = request(&nodes, &keys, b"failover", policy);
        // Node 1 creates; node 0 (the first aggregator) is cut off from the start until the
        // others have failed over.
        let id = nodes[1].create_session(req).await.expect("create");
        network.partition(&[vec![peers[0]], peers[1..].to_vec()]);
        let mut events = nodes[2].events();
        for node in [&nodes[2], &nodes[3]] {
            node.join_session(id).await.expect("join");
        }
        // Node 0 learns of the session (its announcement) before the cut, and joins.
        nodes[0].join_session(id).await.expect("join");
        let failover = next_matching(&mut events, |e| {
            matches!(e, Event::CoordinatorFailover { .. })
        })
        .await;
        assert!(matches!(
            failover,
            Event::CoordinatorFailover { replaced, coordinator, .. }
                if replaced.as_usize() == 0 && coordinator.as_usize() == 1
        ));
        network.heal();
        let mut sigs = Vec::new();
        for node in &nodes {
            sigs.push(node.wait_for_signatures(id).await.expect("signed"));
        }
        assert!(sigs.iter().all(|s| *s == sigs[0]));
        let h = nodes[3].health(id).await.unwrap();
        assert_eq!(h.coordinator.as_usize(), 1);
        assert_eq!(h.attempt.get(), 1);
    }
}

async fn confirmations(events: &mut tokio::sync::broadcast::Receiver<Event>) -> (usize, Vec<u8>) {
    match next_matching(events, |e| matches!(e, Event::BroadcastConfirmed { .. })).await {
        Event::BroadcastConfirmed { by, receipt, .. } => (by.as_usize(), receipt),
        _ => unreachable!(),
    }
}

#[tokio::test(start_paused = true)]
async fn the_broadcast_turn_passes_on_when_the_coordinator_does_not_confirm() {
    let network = MemoryNetwork::new(42);
    let keys = keypairs(3, 42);
    let nodes: Vec<Node> = keys
        .iter()
        .map(|kp| Node::spawn(Arc::new(network.add_node()), *kp, Config::default()))
        .collect();
    let mut policy = Policy {
        topology: Topology::Mesh,
        election: ElectionMethod::FirstSigner,
        max_failovers: 2,
        ..nodes[0].default_policy()
    };
    policy.timeouts = Timeouts {
        broadcast_ms: 10_000,
        ..policy.timeouts
    };
    let mut due: Vec<_> = nodes.iter().map(Node::events).collect();
    let id: SessionId = nodes[0]
        .create_session(request(&nodes, &keys, b"broadcast", policy))
        .await
        .expect("create");
    for node in &nodes[1..] {
        node.join_session(id).await.expect("join");
    }
    // Node 0 is asked first and never confirms: after the broadcast deadline node 1 is asked.
    let e = next_matching(&mut due[0], |e| matches!(e, Event::FinalizeDue { .. })).await;
    assert!(matches!(e, Event::FinalizeDue { position: 0, .. }));
    let e = next_matching(&mut due[1], |e| matches!(e, Event::FinalizeDue { .. })).await;
    assert!(matches!(e, Event::FinalizeDue { position: 1, .. }));
    // Node 2 is not asked yet, and cannot confirm.
    assert!(
        nodes[2]
            .confirm_finalized(id, b"no".to_vec())
            .await
            .is_err()
    );
    let mut watch = nodes[2].events();
    nodes[1]
        .confirm_finalized(id, b"txid-1".to_vec())
        .await
        .expect("confirm");
    assert_eq!(confirmations(&mut watch).await, (1, b"txid-1".to_vec()));
    let mut watch0 = nodes[0].events();
    // The turn does not come to node 2 any more.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        std::iter::from_fn(|| watch0.try_recv().ok()).all(|e| !matches!(
            e,
            Event::FinalizeDue { .. } | Event::BroadcastFailover { .. }
        ))
    );
}

/// Star over libp2p on loopback: the first aggregator's process dies mid-round (it holds one
/// member's nonce), the others fail over to the next in order, and the aggregator comes back
/// from its store on the same key and port, catches up and signs as a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_aggregator_over_libp2p_is_replaced_and_signs_when_back() {
    use musig2_coordinator::store::MemoryStore;
    use musig2_transport::{KeySource, Libp2pConfig, Libp2pTransport, Multiaddr, Transport};

    let keys = keypairs(3, 43);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr0: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr");
    let secret = [7u8; 32];
    let config0 = Libp2pConfig {
        listen_addrs: vec![addr0.clone()],
        key: KeySource::Ed25519Secret(secret),
        ..Libp2pConfig::default()
    };
    let t0 = Arc::new(
        Libp2pTransport::spawn(config0.clone())
            .await
            .expect("node 0"),
    );
    let peer0 = t0.local_peer_id();
    let mut transports = vec![Arc::clone(&t0)];
    for _ in 1..3 {
        let t = Libp2pTransport::spawn(Libp2pConfig {
            bootstrap: vec![(peer0, addr0.clone())],
            ..Libp2pConfig::default()
        })
        .await
        .expect("libp2p");
        transports.push(Arc::new(t));
    }
    // Everyone knows everyone's address.
    for a in &transports {
        for b in &transports {
            if a.local_peer_id() != b.local_peer_id() {
                a.add_address(b.local_peer_id(), b.listen_addrs()[0].clone())
                    .await
                    .expect("address");
            }
        }
    }
    let node_config = Config {
        join_timeout: Duration::from_secs(4),
        nonce_exchange_timeout: Duration::from_secs(3),
        partial_sig_exchange_timeout: Duration::from_secs(3),
        ..Config::default()
    };
    let store0 = MemoryStore::new();
    let node0 = Node::spawn_with_store(
        Arc::clone(&t0) as Arc<dyn Transport>,
        keys[0],
        node_config.clone(),
        store0.clone(),
    )
    .expect("node 0");
    let others: Vec<Node> = transports[1..]
        .iter()
        .zip(&keys[1..])
        .map(|(t, kp)| {
            Node::spawn(
                Arc::clone(t) as Arc<dyn Transport>,
                *kp,
                node_config.clone(),
            )
        })
        .collect();
    let policy = Policy {
        topology: Topology::Star,
        election: ElectionMethod::FirstSigner,
        max_failovers: 2,
        nonce_commitment: false,
        ..others[0].default_policy()
    };
    let req = SessionRequest {
        signers: keys.iter().map(Keypair::public_key).collect(),
        peers: vec![
            Some(node0.peer_id()),
            Some(others[0].peer_id()),
            Some(others[1].peer_id()),
        ],
        messages: vec![musig2_proto::MessageToSign::new(
            b"libp2p failover".to_vec(),
        )],
        document_digest: None,
        policy,
    };
    let mut events = others[1].events();
    let id = others[0].create_session(req).await.expect("create");
    node0.join_session(id).await.expect("join");
    // Node 0 has node 1's nonce (sent when node 1 created the session); it dies before node 2
    // joins: nothing of what it held in memory survives, only its store.
    tokio::time::sleep(Duration::from_millis(200)).await;
    t0.shutdown().await.expect("crash");
    drop(node0);
    others[1].join_session(id).await.expect("join");
    let failover = tokio::time::timeout(
        Duration::from_secs(30),
        next_matching(&mut events, |e| {
            matches!(e, Event::CoordinatorFailover { .. })
        }),
    )
    .await
    .expect("failover within the deadlines");
    assert!(matches!(
        failover,
        Event::CoordinatorFailover { replaced, coordinator, .. }
            if replaced.as_usize() == 0 && coordinator.as_usize() == 1
    ));
    // Back on the same key and port, from its store.
    let t0 = Libp2pTransport::spawn(config0).await.expect("node 0 again");
    assert_eq!(t0.local_peer_id(), peer0);
    for b in &transports[1..] {
        t0.add_address(b.local_peer_id(), b.listen_addrs()[0].clone())
            .await
            .expect("address");
    }
    let node0 = Node::spawn_with_store(Arc::new(t0), keys[0], node_config, store0)
        .expect("node 0 restarted");
    let mut sigs = Vec::new();
    for node in [&node0, &others[0], &others[1]] {
        let sig = tokio::time::timeout(Duration::from_secs(60), node.wait_for_signatures(id))
            .await
            .expect("signed in time")
            .expect("signed");
        sigs.push(sig);
    }
    assert!(sigs.iter().all(|s| *s == sigs[0]));
    let h = others[1].health(id).await.expect("health");
    assert_eq!(h.coordinator.as_usize(), 1);
}
