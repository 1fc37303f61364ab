//! One conformance suite, written once, run against both implementations.
//!
//! Each check takes nodes built by a harness (every node reachable from every other, node `i`
//! with frame limit `limits[i]`) and asserts behaviour every `Transport` must have.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{wait_for_event, within};

use musig2_transport::{
    Bytes, Libp2pConfig, Libp2pTransport, MemoryConfig, MemoryNetwork, PeerEvent, PeerId,
    RecordValidator, Transport, TransportError,
};
use tokio::sync::broadcast::error::RecvError;

type Node = Arc<dyn Transport>;

fn frame(tag: &str, i: usize) -> Bytes {
    Bytes::from(format!("{tag}-{i}").into_bytes())
}

async fn point_to_point(nodes: Vec<Node>) {
    let (a, b) = (&nodes[0], &nodes[1]);
    for i in 0..10 {
        a.send(b.local_peer_id(), frame("p2p", i))
            .await
            .expect("send succeeds");
    }
    for i in 0..10 {
        let inbound = within("receive", b.recv()).await.expect("frame arrives");
        assert_eq!(inbound.from, a.local_peer_id());
        assert_eq!(
            inbound.frame,
            frame("p2p", i),
            "acknowledged sends keep order"
        );
    }
    // To itself: loopback delivery in every implementation.
    a.send(a.local_peer_id(), Bytes::from_static(b"self"))
        .await
        .expect("send to self");
    let inbound = within("receive from self", a.recv()).await.expect("frame");
    assert_eq!(
        (inbound.from, &inbound.frame[..]),
        (a.local_peer_id(), &b"self"[..])
    );
    a.dial(a.local_peer_id())
        .await
        .expect("dialling yourself is a no-op");
    // And back.
    b.send(a.local_peer_id(), Bytes::from_static(b"reply"))
        .await
        .expect("reply succeeds");
    let inbound = within("receive reply", a.recv()).await.expect("reply");
    assert_eq!(&inbound.frame[..], b"reply");
    assert_eq!(inbound.from, b.local_peer_id());
}

async fn many_to_one(nodes: Vec<Node>) {
    let sink = nodes[0].local_peer_id();
    let senders = &nodes[1..];
    let sends = senders.iter().map(|node| async move {
        for i in 0..5 {
            node.send(sink, frame("m2o", i))
                .await
                .expect("send to sink");
        }
    });
    futures::future::join_all(sends).await;
    let mut per_sender: HashMap<PeerId, Vec<Bytes>> = HashMap::new();
    for _ in 0..senders.len() * 5 {
        let inbound = within("many-to-one receive", nodes[0].recv())
            .await
            .expect("frame");
        per_sender
            .entry(inbound.from)
            .or_default()
            .push(inbound.frame);
    }
    assert_eq!(per_sender.len(), senders.len());
    for node in senders {
        let frames = &per_sender[&node.local_peer_id()];
        let expected: Vec<Bytes> = (0..5).map(|i| frame("m2o", i)).collect();
        assert_eq!(frames, &expected, "each sender's frames arrive in order");
    }

    // One-to-many: one report per peer, in order, all delivered.
    let targets: Vec<PeerId> = senders.iter().map(|n| n.local_peer_id()).collect();
    let reports = nodes[0]
        .send_many(&targets, Bytes::from_static(b"fan-out"))
        .await;
    assert_eq!(reports.len(), targets.len());
    for (report, target) in reports.iter().zip(&targets) {
        assert_eq!(report.peer, *target);
        assert!(report.result.is_ok(), "{report:?}");
    }
    for node in senders {
        let inbound = within("fan-out receive", node.recv()).await.expect("frame");
        assert_eq!(inbound.from, sink);
        assert_eq!(&inbound.frame[..], b"fan-out");
    }
}

async fn dht_put_get(nodes: Vec<Node>) {
    let key = b"announcement/1".to_vec();
    let value = vec![0xAB; 20 * 1024]; // larger than Kademlia's default 16 KiB packet
    nodes[1]
        .dht_put(key.clone(), value.clone(), Duration::from_secs(600))
        .await
        .expect("put");
    for node in &nodes {
        let got = node
            .dht_get(key.clone(), RecordValidator::accept_all())
            .await
            .expect("every node finds the record");
        assert_eq!(got, value);
    }
    let reject_all = RecordValidator::new(|_, _| false);
    assert_eq!(
        nodes[2].dht_get(key.clone(), reject_all).await,
        Err(TransportError::NotFound),
        "records the validator rejects are not returned"
    );
    assert_eq!(
        nodes[2]
            .dht_get(b"missing".to_vec(), RecordValidator::accept_all())
            .await,
        Err(TransportError::NotFound)
    );
    let max = 1024 * 1024;
    assert!(matches!(
        nodes[0]
            .dht_put(key, vec![0; max], Duration::from_secs(60))
            .await,
        Err(TransportError::RecordTooLarge { .. })
    ));
}

async fn record_expiry(nodes: Vec<Node>) {
    let key = b"short-lived".to_vec();
    nodes[1]
        .dht_put(key.clone(), b"v".to_vec(), Duration::from_millis(800))
        .await
        .expect("put");
    // Wait until it is gone everywhere (without asserting how fast).
    within("record expiry", async {
        for node in &nodes {
            loop {
                match node
                    .dht_get(key.clone(), RecordValidator::accept_all())
                    .await
                {
                    Err(TransportError::NotFound) => break,
                    Ok(value) => assert_eq!(value, b"v"),
                    Err(e) => panic!("unexpected error {e}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
    .await;
}

/// `nodes[0]` has a large frame limit, `nodes[1]` a small one (`SMALL`).
async fn oversize_frames(nodes: Vec<Node>) {
    let (big, small) = (&nodes[0], &nodes[1]);
    assert_eq!(small.max_frame_size(), SMALL);
    // Rejected on send, before anything moves.
    let too_big_for_sender = Bytes::from(vec![1u8; small.max_frame_size() + 1]);
    assert_eq!(
        small.send(big.local_peer_id(), too_big_for_sender).await,
        Err(TransportError::FrameTooLarge {
            size: SMALL + 1,
            max: SMALL
        })
    );
    // Rejected on receive: the sender allows it, the receiver does not.
    let too_big_for_receiver = Bytes::from(vec![2u8; SMALL + 1]);
    let result = big.send(small.local_peer_id(), too_big_for_receiver).await;
    assert!(result.is_err(), "the receiver must reject it: {result:?}");
    // A frame at the limit still goes through, and is the only thing delivered.
    let at_limit = Bytes::from(vec![3u8; SMALL]);
    big.send(small.local_peer_id(), at_limit.clone())
        .await
        .expect("frame at the limit");
    let inbound = within("receive at-limit frame", small.recv())
        .await
        .expect("frame");
    assert_eq!(inbound.frame, at_limit);
}

async fn disconnect_event(nodes: Vec<Node>) {
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut events = a.events();
    let b_id = b.local_peer_id();
    wait_for_event(&mut events, PeerEvent::Connected(b_id)).await;
    b.shutdown().await.expect("shutdown");
    wait_for_event(&mut events, PeerEvent::Disconnected(b_id)).await;
}

async fn blocking(nodes: Vec<Node>) {
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut events = a.events();
    a.send(b.local_peer_id(), frame("before", 0))
        .await
        .expect("send before the block");
    within("frame before the block", b.recv())
        .await
        .expect("frame");
    a.block_peer(b.local_peer_id()).await.expect("block");
    wait_for_event(&mut events, PeerEvent::Disconnected(b.local_peer_id())).await;
    // Neither direction gets through; a third node is unaffected.
    let from_blocked = within(
        "send from the blocked peer",
        b.send(a.local_peer_id(), frame("blocked", 1)),
    )
    .await;
    assert!(from_blocked.is_err(), "{from_blocked:?}");
    let to_blocked = within(
        "send to the blocked peer",
        a.send(b.local_peer_id(), frame("blocked", 2)),
    )
    .await;
    assert!(to_blocked.is_err(), "{to_blocked:?}");
    c.send(a.local_peer_id(), frame("third", 3))
        .await
        .expect("others still reach the blocker");
    expect_frame(a, c, frame("third", 3)).await;
    // Unblocked, the peer reaches us again.
    a.unblock_peer(b.local_peer_id()).await.expect("unblock");
    within("send after unblocking", async {
        // The blocked peer's own view of the connection may take a moment to settle.
        while b.send(a.local_peer_id(), frame("after", 4)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    expect_frame(a, b, frame("after", 4)).await;
}

/// The next frame `to` receives is `frame`, from `from`.
async fn expect_frame(to: &Node, from: &Node, frame: Bytes) {
    let inbound = within("frame", to.recv()).await.expect("frame");
    assert_eq!((inbound.from, inbound.frame), (from.local_peer_id(), frame));
}

async fn shutdown_releases(nodes: Vec<Node>) {
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut events = b.events();
    a.send(b.local_peer_id(), Bytes::from_static(b"queued"))
        .await
        .expect("send before shutdown");
    b.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown is idempotent");
    assert_eq!(
        within("recv after shutdown", b.recv()).await,
        Err(TransportError::Closed)
    );
    assert_eq!(
        b.send(a.local_peer_id(), Bytes::from_static(b"x")).await,
        Err(TransportError::Closed)
    );
    assert_eq!(
        b.dht_put(b"k".to_vec(), b"v".to_vec(), Duration::from_secs(1))
            .await,
        Err(TransportError::Closed)
    );
    assert_eq!(
        b.dht_get(b"k".to_vec(), RecordValidator::accept_all())
            .await,
        Err(TransportError::Closed)
    );
    // The event stream ends.
    within("event stream closes", async {
        loop {
            match events.recv().await {
                Err(RecvError::Closed) => break,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
            }
        }
    })
    .await;
    assert!(matches!(b.events().recv().await, Err(RecvError::Closed)));
    // Others get an error, not a hang.
    let result = within(
        "send to a stopped node",
        a.send(b.local_peer_id(), Bytes::new()),
    )
    .await;
    assert!(result.is_err(), "{result:?}");
}

const SMALL: usize = 1024;
const LARGE: usize = 256 * 1024;

// ---- memory harness -------------------------------------------------------------------------

fn memory_nodes(limits: &[usize]) -> Vec<Node> {
    let net = MemoryNetwork::with_config(MemoryConfig {
        seed: 42,
        max_record: 64 * 1024,
        ..MemoryConfig::default()
    });
    limits
        .iter()
        .map(|&max| Arc::new(net.add_node_with_max_frame(max)) as Node)
        .collect()
}

mod memory {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn blocking() {
        super::blocking(memory_nodes(&[LARGE; 3])).await;
    }

    #[tokio::test(start_paused = true)]
    async fn point_to_point() {
        super::point_to_point(memory_nodes(&[LARGE; 2])).await;
    }

    #[tokio::test(start_paused = true)]
    async fn many_to_one() {
        super::many_to_one(memory_nodes(&[LARGE; 5])).await;
    }

    #[tokio::test(start_paused = true)]
    async fn dht_put_get() {
        super::dht_put_get(memory_nodes(&[LARGE; 5])).await;
    }

    #[tokio::test(start_paused = true)]
    async fn record_expiry() {
        super::record_expiry(memory_nodes(&[LARGE; 3])).await;
    }

    #[tokio::test(start_paused = true)]
    async fn oversize_frames() {
        super::oversize_frames(memory_nodes(&[LARGE, SMALL])).await;
    }

    #[tokio::test(start_paused = true)]
    async fn disconnect_event() {
        super::disconnect_event(memory_nodes(&[LARGE; 2])).await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_releases() {
        super::shutdown_releases(memory_nodes(&[LARGE; 2])).await;
    }
}

// ---- libp2p harness (127.0.0.1) -----------------------------------------------------------

async fn libp2p_nodes(limits: &[usize]) -> Vec<Node> {
    let configs = limits
        .iter()
        .map(|&max_frame| Libp2pConfig {
            max_frame,
            max_record: 64 * 1024,
            ..Libp2pConfig::default()
        })
        .collect();
    Libp2pTransport::spawn_local_network_with(configs)
        .await
        .expect("local network")
        .into_iter()
        .map(|n| Arc::new(n) as Node)
        .collect()
}

mod libp2p {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking() {
        super::blocking(libp2p_nodes(&[LARGE; 3]).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn point_to_point() {
        super::point_to_point(libp2p_nodes(&[LARGE; 2]).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_to_one() {
        super::many_to_one(libp2p_nodes(&[LARGE; 5]).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dht_put_get() {
        super::dht_put_get(libp2p_nodes(&[LARGE; 5]).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn record_expiry() {
        super::record_expiry(libp2p_nodes(&[LARGE; 3]).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversize_frames() {
        super::oversize_frames(libp2p_nodes(&[LARGE, SMALL]).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disconnect_event() {
        super::disconnect_event(libp2p_nodes(&[LARGE; 2]).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_releases() {
        super::shutdown_releases(libp2p_nodes(&[LARGE; 2]).await).await;
    }
}
