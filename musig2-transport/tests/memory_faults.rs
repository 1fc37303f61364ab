//! Fault-plan tests for the memory network: every fault is observable and reproducible from the
//! seed. All run on a paused tokio clock, so delays cost no real time and runs are deterministic.

use std::time::Duration;

use musig2_transport::{
    Bytes, Delay, LinkFault, MemoryConfig, MemoryNetwork, MemoryTransport, PeerEvent, PeerId,
    Transport, TransportError,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

fn network(seed: u64) -> (MemoryNetwork, MemoryTransport, MemoryTransport) {
    let net = MemoryNetwork::new(seed);
    let a = net.add_node();
    let b = net.add_node();
    (net, a, b)
}

fn numbered(i: u32) -> Bytes {
    Bytes::copy_from_slice(&i.to_be_bytes())
}

fn number(frame: &Bytes) -> u32 {
    u32::from_be_bytes(frame[..4].try_into().expect("4-byte frame"))
}

/// Drains every frame currently queued at `node`.
async fn drain(node: &MemoryTransport) -> Vec<u32> {
    let mut out = Vec::new();
    while let Ok(Ok(inbound)) = tokio::time::timeout(Duration::from_millis(1), node.recv()).await {
        out.push(number(&inbound.frame));
    }
    out
}

async fn next_event(events: &mut broadcast::Receiver<PeerEvent>) -> PeerEvent {
    tokio::time::timeout(Duration::from_secs(1), events.recv())
        .await
        .expect("an event is pending")
        .expect("event stream open")
}

/// Sends 40 frames over a lossy link; returns which sends succeeded and what arrived.
async fn lossy_run(seed: u64) -> (Vec<bool>, Vec<u32>) {
    let (net, a, b) = network(seed);
    net.set_link_fault(
        a.local_peer_id(),
        b.local_peer_id(),
        LinkFault::none().with_drop(0.5),
    );
    let mut delivered = Vec::new();
    for i in 0..40 {
        match a.send(b.local_peer_id(), numbered(i)).await {
            Ok(()) => delivered.push(true),
            Err(TransportError::Timeout { .. }) => delivered.push(false),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    (delivered, drain(&b).await)
}

#[tokio::test(start_paused = true)]
async fn drop_is_observable_and_reproducible() {
    let (outcome, received) = lossy_run(1).await;
    assert!(
        outcome.contains(&true) && outcome.contains(&false),
        "{outcome:?}"
    );
    let acked: Vec<u32> = (0..40).filter(|&i| outcome[i as usize]).collect();
    assert_eq!(received, acked, "exactly the acknowledged frames arrive");
    assert_eq!(
        lossy_run(1).await,
        (outcome.clone(), received),
        "same seed, same run"
    );
    assert_ne!(
        lossy_run(2).await.0,
        outcome,
        "another seed drops other frames"
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_frame_times_out_after_the_send_timeout() {
    let net = MemoryNetwork::with_config(MemoryConfig {
        send_timeout: Duration::from_secs(3),
        ..MemoryConfig::default()
    });
    let (a, b) = (net.add_node(), net.add_node());
    net.set_node_fault(b.local_peer_id(), LinkFault::none().with_drop(1.0));
    let start = Instant::now();
    let result = a.send(b.local_peer_id(), numbered(0)).await;
    assert_eq!(
        result,
        Err(TransportError::Timeout {
            operation: "send",
            after: Duration::from_secs(3)
        })
    );
    assert_eq!(start.elapsed(), Duration::from_secs(3), "virtual clock");
    // A link fault overrides the node fault.
    net.set_link_fault(a.local_peer_id(), b.local_peer_id(), LinkFault::none());
    a.send(b.local_peer_id(), numbered(1))
        .await
        .expect("link fault wins");
    assert_eq!(drain(&b).await, vec![1]);
    net.clear_faults();
    b.send(a.local_peer_id(), numbered(2))
        .await
        .expect("faults cleared");
}

#[tokio::test(start_paused = true)]
async fn fixed_and_random_delays_follow_the_seed() {
    let (net, a, b) = network(3);
    net.set_link_fault(
        a.local_peer_id(),
        b.local_peer_id(),
        LinkFault::none().with_delay(Delay::Fixed(Duration::from_millis(250))),
    );
    let start = Instant::now();
    a.send(b.local_peer_id(), numbered(0)).await.expect("send");
    assert_eq!(start.elapsed(), Duration::from_millis(250));

    async fn random_delays(seed: u64) -> Vec<Duration> {
        let (net, a, b) = network(seed);
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(90));
        net.set_default_fault(LinkFault::none().with_delay(Delay::Uniform { min, max }));
        let mut delays = Vec::new();
        for i in 0..20 {
            let start = Instant::now();
            a.send(b.local_peer_id(), numbered(i)).await.expect("send");
            let d = start.elapsed();
            assert!(d >= min && d <= max, "{d:?} outside [{min:?}, {max:?}]");
            delays.push(d);
        }
        delays
    }
    let first = random_delays(9).await;
    assert!(first.windows(2).any(|w| w[0] != w[1]), "delays vary");
    assert_eq!(random_delays(9).await, first, "same seed, same delays");
}

#[tokio::test(start_paused = true)]
async fn duplicates_are_delivered_twice() {
    let (net, a, b) = network(4);
    net.set_link_fault(
        a.local_peer_id(),
        b.local_peer_id(),
        LinkFault::none().with_duplicate(1.0),
    );
    a.send(b.local_peer_id(), numbered(7)).await.expect("send");
    assert_eq!(drain(&b).await, vec![7, 7]);
    // The reverse direction is not affected.
    b.send(a.local_peer_id(), numbered(8)).await.expect("send");
    assert_eq!(drain(&a).await, vec![8]);
}

async fn reordered_run(seed: u64) -> Vec<u32> {
    let (net, a, b) = network(seed);
    net.set_link_fault(
        a.local_peer_id(),
        b.local_peer_id(),
        LinkFault::none().with_reorder(0.3, Duration::from_millis(50)),
    );
    let to = b.local_peer_id();
    let sends = (0..20).map(|i| a.send(to, numbered(i)));
    for result in futures::future::join_all(sends).await {
        result.expect("reordered frames are still delivered");
    }
    drain(&b).await
}

#[tokio::test(start_paused = true)]
async fn reorder_is_observable_and_reproducible() {
    let order = reordered_run(5).await;
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..20).collect::<Vec<_>>(),
        "nothing lost or duplicated"
    );
    assert_ne!(order, sorted, "some frames were overtaken");
    assert_eq!(reordered_run(5).await, order, "same seed, same order");
}

#[tokio::test(start_paused = true)]
async fn partition_and_heal() {
    let net = MemoryNetwork::new(6);
    let (a, b, c) = (net.add_node(), net.add_node(), net.add_node());
    let mut a_events = a.events();
    assert_eq!(
        next_event(&mut a_events).await,
        PeerEvent::Connected(b.local_peer_id())
    );
    assert_eq!(
        next_event(&mut a_events).await,
        PeerEvent::Connected(c.local_peer_id())
    );

    net.partition(&[
        vec![a.local_peer_id()],
        vec![b.local_peer_id(), c.local_peer_id()],
    ]);
    assert_eq!(
        next_event(&mut a_events).await,
        PeerEvent::Disconnected(b.local_peer_id())
    );
    assert_eq!(
        next_event(&mut a_events).await,
        PeerEvent::Disconnected(c.local_peer_id())
    );
    assert!(matches!(
        a.send(b.local_peer_id(), numbered(0)).await,
        Err(TransportError::Unreachable { .. })
    ));
    assert!(matches!(
        c.dial(a.local_peer_id()).await,
        Err(TransportError::Unreachable { .. })
    ));
    b.send(c.local_peer_id(), numbered(1))
        .await
        .expect("same side");
    assert_eq!(drain(&c).await, vec![1]);

    net.heal();
    assert_eq!(
        next_event(&mut a_events).await,
        PeerEvent::Connected(b.local_peer_id())
    );
    assert_eq!(
        next_event(&mut a_events).await,
        PeerEvent::Connected(c.local_peer_id())
    );
    a.send(b.local_peer_id(), numbered(2))
        .await
        .expect("healed");
    assert_eq!(drain(&b).await, vec![2]);
}

#[tokio::test(start_paused = true)]
async fn crash_and_restart() {
    let (net, a, b) = network(7);
    let b_id = b.local_peer_id();
    let mut a_events = a.events();
    assert_eq!(next_event(&mut a_events).await, PeerEvent::Connected(b_id));

    a.send(b_id, numbered(1))
        .await
        .expect("queued before the crash");
    net.crash(b_id).expect("crash");
    assert_eq!(
        next_event(&mut a_events).await,
        PeerEvent::Disconnected(b_id)
    );
    assert_eq!(
        b.recv().await,
        Err(TransportError::Closed),
        "queued frames are lost"
    );
    assert_eq!(
        b.send(a.local_peer_id(), numbered(0)).await,
        Err(TransportError::Closed)
    );
    assert!(matches!(
        a.send(b_id, numbered(2)).await,
        Err(TransportError::Unreachable { .. })
    ));
    assert!(net.crash(b_id).is_ok(), "crashing twice is harmless");

    let b2 = net.restart(b_id).expect("restart");
    assert_eq!(b2.local_peer_id(), b_id, "same identity");
    assert_eq!(next_event(&mut a_events).await, PeerEvent::Connected(b_id));
    assert_eq!(
        b.recv().await,
        Err(TransportError::Closed),
        "the old handle stays dead"
    );
    a.send(b_id, numbered(3))
        .await
        .expect("restarted node receives");
    assert_eq!(drain(&b2).await, vec![3]);
    assert!(
        net.restart(b_id).is_err(),
        "only a crashed node can restart"
    );
}

#[tokio::test(start_paused = true)]
async fn a_frame_in_flight_to_a_crashing_node_is_not_delivered() {
    let (net, a, b) = network(8);
    let b_id = b.local_peer_id();
    net.set_link_fault(
        a.local_peer_id(),
        b_id,
        LinkFault::none().with_delay(Delay::Fixed(Duration::from_millis(100))),
    );
    let (result, ()) = tokio::join!(a.send(b_id, numbered(1)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        net.crash(b_id).expect("crash");
    });
    assert!(
        matches!(result, Err(TransportError::Unreachable { .. })),
        "{result:?}"
    );
    let b2 = net.restart(b_id).expect("restart");
    assert!(drain(&b2).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn full_inbound_queue_is_back_pressure() {
    let net = MemoryNetwork::with_config(MemoryConfig {
        inbound_capacity: 2,
        ..MemoryConfig::default()
    });
    let (a, b) = (net.add_node(), net.add_node());
    a.send(b.local_peer_id(), numbered(0)).await.expect("fits");
    a.send(b.local_peer_id(), numbered(1)).await.expect("fits");
    assert_eq!(
        a.send(b.local_peer_id(), numbered(2)).await,
        Err(TransportError::Backpressure(b.local_peer_id()))
    );
    assert_eq!(drain(&b).await, vec![0, 1]);
    a.send(b.local_peer_id(), numbered(3))
        .await
        .expect("room again");
}

#[tokio::test(start_paused = true)]
async fn peer_ids_come_from_the_seed() {
    let ids = |seed| {
        let net = MemoryNetwork::new(seed);
        (0..3)
            .map(|_| net.add_node().local_peer_id())
            .collect::<Vec<PeerId>>()
    };
    let first = ids(11);
    assert_eq!(ids(11), first);
    assert_ne!(ids(12), first);
    assert_eq!(
        first.iter().collect::<std::collections::HashSet<_>>().len(),
        3
    );

    let other = MemoryNetwork::new(99).add_node();
    let (_net, a, _b) = network(11);
    assert_eq!(
        a.send(other.local_peer_id(), numbered(0)).await,
        Err(TransportError::UnknownPeer(other.local_peer_id()))
    );
    assert_eq!(
        a.dial(other.local_peer_id()).await,
        Err(TransportError::UnknownPeer(other.local_peer_id()))
    );
}

#[tokio::test(start_paused = true)]
async fn poisoned_records_are_skipped_and_records_expire() {
    let net = MemoryNetwork::new(13);
    let (honest, attacker, reader) = (net.add_node(), net.add_node(), net.add_node());
    let key = b"session".to_vec();
    attacker
        .dht_put(key.clone(), b"poison".to_vec(), Duration::from_secs(60))
        .await
        .expect("put");
    honest
        .dht_put(key.clone(), b"good".to_vec(), Duration::from_secs(30))
        .await
        .expect("put");
    let valid = musig2_transport::RecordValidator::new(|_, v| v != b"poison");
    assert_eq!(
        reader.dht_get(key.clone(), valid.clone()).await,
        Ok(b"good".to_vec())
    );
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(
        reader.dht_get(key, valid).await,
        Err(TransportError::NotFound),
        "the good record expired; the poisoned one is still skipped"
    );
}
