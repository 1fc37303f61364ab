//! libp2p-specific tests, all on 127.0.0.1 in one process. They wait for conditions with generous
//! bounds and never assert on timing.

mod common;

use std::time::Duration;

use common::{wait_for_event, within};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, noise, tcp, yamux};
use musig2_transport::{
    ACK_BATCH, ANSWER_LATER, Bytes, FRAME_PROTOCOL, KeySource, Libp2pConfig, Libp2pTransport,
    PeerEvent, PeerId, RecordValidator, Transport, TransportError,
};

/// `from` sends `payload` to `to`, which must receive exactly it.
async fn deliver(from: &Libp2pTransport, to: &Libp2pTransport, payload: &'static [u8]) {
    from.send(to.local_peer_id(), Bytes::from_static(payload))
        .await
        .expect("send");
    let inbound = within("recv", to.recv()).await.expect("frame");
    assert_eq!(
        (inbound.from, &inbound.frame[..]),
        (from.local_peer_id(), payload)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_all_to_all_and_dht() {
    let nodes = Libp2pTransport::spawn_local_network(5, Libp2pConfig::default())
        .await
        .expect("network");
    for node in &nodes {
        assert_eq!(node.routing_table_size().await, Ok(4));
    }
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.local_peer_id()).collect();
    let rounds = nodes.iter().map(|node| {
        let others: Vec<PeerId> = ids
            .iter()
            .copied()
            .filter(|p| *p != node.local_peer_id())
            .collect();
        let frame = Bytes::from(node.local_peer_id().to_bytes());
        async move { node.send_many(&others, frame).await }
    });
    for reports in futures::future::join_all(rounds).await {
        assert_eq!(reports.len(), 4);
        assert!(reports.iter().all(|r| r.result.is_ok()), "{reports:?}");
    }
    for node in &nodes {
        let mut senders = Vec::new();
        for _ in 0..4 {
            let inbound = within("all-to-all receive", node.recv())
                .await
                .expect("frame");
            assert_eq!(inbound.frame, Bytes::from(inbound.from.to_bytes()));
            senders.push(inbound.from);
        }
        senders.sort();
        let mut expected: Vec<PeerId> = ids
            .iter()
            .copied()
            .filter(|p| *p != node.local_peer_id())
            .collect();
        expected.sort();
        assert_eq!(senders, expected);
    }
    nodes[4]
        .dht_put(b"k".to_vec(), b"v".to_vec(), Duration::from_secs(60))
        .await
        .expect("put");
    assert_eq!(
        nodes[0]
            .dht_get(b"k".to_vec(), RecordValidator::accept_all())
            .await,
        Ok(b"v".to_vec())
    );
    for node in &nodes {
        node.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_to_one_peer_share_its_stream_and_all_arrive() {
    let nodes = Libp2pTransport::spawn_local_network(
        2,
        Libp2pConfig {
            inbound_rate_per_sec: 0,
            inbound_bytes_per_sec: 0,
            ..Libp2pConfig::default()
        },
    )
    .await
    .expect("network");
    let (a, b) = (&nodes[0], &nodes[1]);
    const FRAMES: u32 = 500;
    let sends =
        (0..FRAMES).map(|i| a.send(b.local_peer_id(), Bytes::from(i.to_be_bytes().to_vec())));
    let results = within("pipelined sends", futures::future::join_all(sends)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut got = Vec::new();
    for _ in 0..FRAMES {
        let inbound = within("receive", b.recv()).await.expect("frame");
        assert_eq!(inbound.from, a.local_peer_id());
        got.push(u32::from_be_bytes(
            inbound.frame[..].try_into().expect("4 bytes"),
        ));
    }
    got.sort_unstable();
    assert_eq!(
        got,
        (0..FRAMES).collect::<Vec<_>>(),
        "every frame exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_link_does_not_keep_an_idle_connection_open() {
    // Frame streams are long-lived, but a link with nothing in flight closes after the idle
    // timeout, so the connection can idle out as it would without frames.
    let config = Libp2pConfig {
        idle_connection_timeout: Duration::from_secs(1),
        ..Libp2pConfig::default()
    };
    let a = Libp2pTransport::spawn(config.clone()).await.expect("a");
    let b = Libp2pTransport::spawn(config).await.expect("b");
    let mut events = a.events();
    a.add_address(b.local_peer_id(), b.listen_addrs()[0].clone())
        .await
        .expect("address");
    deliver(&a, &b, b"once").await;
    // The idle connection closes.
    wait_for_event(&mut events, PeerEvent::Disconnected(b.local_peer_id())).await;
    // And the next frame reconnects and opens a fresh link.
    deliver(&a, &b, b"again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_records_are_validated_before_storing() {
    let honest = Libp2pConfig {
        record_validator: Some(RecordValidator::new(|_, v| !v.starts_with(b"bad"))),
        ..Libp2pConfig::default()
    };
    let attacker = Libp2pConfig::default();
    let nodes = Libp2pTransport::spawn_local_network_with(vec![
        honest.clone(),
        honest.clone(),
        honest.clone(),
        honest,
        attacker,
    ])
    .await
    .expect("network");
    let valid = RecordValidator::new(|_, v| !v.starts_with(b"bad"));
    nodes[4]
        .dht_put(
            b"session".to_vec(),
            b"bad value".to_vec(),
            Duration::from_secs(60),
        )
        .await
        .ok();
    nodes[1]
        .dht_put(
            b"session".to_vec(),
            b"good".to_vec(),
            Duration::from_secs(60),
        )
        .await
        .expect("honest put");
    assert_eq!(
        nodes[2].dht_get(b"session".to_vec(), valid).await,
        Ok(b"good".to_vec()),
        "a poisoned record is skipped"
    );
    // A key only the attacker wrote: honest nodes refused to store it, so once the attacker is
    // gone nobody has it.
    nodes[4]
        .dht_put(
            b"only-bad".to_vec(),
            b"bad".to_vec(),
            Duration::from_secs(60),
        )
        .await
        .ok();
    nodes[4].shutdown().await.expect("shutdown");
    assert_eq!(
        nodes[2]
            .dht_get(b"only-bad".to_vec(), RecordValidator::accept_all())
            .await,
        Err(TransportError::NotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_put_waits_for_connectivity() {
    let lonely = Libp2pTransport::spawn(Libp2pConfig::default())
        .await
        .expect("node");
    let addr = lonely.listen_addrs()[0].clone();
    let id = lonely.local_peer_id();
    let (put, late) = tokio::join!(
        lonely.dht_put(b"k".to_vec(), b"v".to_vec(), Duration::from_secs(60)),
        async move {
            // Starts after the put is already waiting for a DHT peer.
            tokio::time::sleep(Duration::from_millis(200)).await;
            Libp2pTransport::spawn(Libp2pConfig {
                bootstrap: vec![(id, addr)],
                ..Libp2pConfig::default()
            })
            .await
            .expect("late node")
        }
    );
    put.expect("the put succeeds once a peer appears");
    assert_eq!(
        late.dht_get(b"k".to_vec(), RecordValidator::accept_all())
            .await,
        Ok(b"v".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_address_dial_and_unknown_peer() {
    let a = Libp2pTransport::spawn(Libp2pConfig::default())
        .await
        .expect("a");
    let b = Libp2pTransport::spawn(Libp2pConfig::default())
        .await
        .expect("b");
    let stranger = PeerId::from_libp2p(libp2p::PeerId::random());
    assert_eq!(
        a.send(stranger, Bytes::from_static(b"x")).await,
        Err(TransportError::UnknownPeer(stranger))
    );
    assert_eq!(
        a.dial(stranger).await,
        Err(TransportError::UnknownPeer(stranger))
    );

    let mut events = a.events();
    a.add_address(b.local_peer_id(), b.listen_addrs()[0].clone())
        .await
        .expect("add address");
    a.dial(b.local_peer_id()).await.expect("dial");
    wait_for_event(&mut events, PeerEvent::Connected(b.local_peer_id())).await;
    assert!(
        a.connected_peers()
            .await
            .expect("peers")
            .contains(&b.local_peer_id())
    );
    deliver(&a, &b, b"hi").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_and_rate_limit_are_back_pressure() {
    let nodes = Libp2pTransport::spawn_local_network_with(vec![
        Libp2pConfig::default(),
        Libp2pConfig {
            inbound_capacity: 1,
            ..Libp2pConfig::default()
        },
        Libp2pConfig {
            inbound_rate_per_sec: 1,
            ..Libp2pConfig::default()
        },
    ])
    .await
    .expect("network");
    let (sender, small_queue, limited) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut limited_events = limited.events();
    sender
        .send(small_queue.local_peer_id(), Bytes::from_static(b"1"))
        .await
        .expect("fits");
    assert_eq!(
        sender
            .send(small_queue.local_peer_id(), Bytes::from_static(b"2"))
            .await,
        Err(TransportError::Backpressure(small_queue.local_peer_id()))
    );
    assert_eq!(&small_queue.recv().await.expect("frame").frame[..], b"1");

    // A burst of one per second: ten quick sends cannot all pass.
    let mut refused = 0;
    for _ in 0..10 {
        match sender
            .send(limited.local_peer_id(), Bytes::from_static(b"r"))
            .await
        {
            Ok(()) => {}
            Err(TransportError::Backpressure(p)) if p == limited.local_peer_id() => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(refused > 0);
    let mut reports = 0;
    while let Ok(event) = limited_events.try_recv() {
        if event == PeerEvent::RateLimited(sender.local_peer_id()) {
            reports += 1;
        }
    }
    // The receiver reports the peer, throttled: fewer reports than refusals.
    assert!(
        reports >= 1 && (reports < refused || refused == 1),
        "{reports} reports for {refused} refusals"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_rate_limit_refuses_large_frames_past_the_budget() {
    let nodes = Libp2pTransport::spawn_local_network_with(vec![
        Libp2pConfig::default(),
        Libp2pConfig {
            inbound_bytes_per_sec: 1,
            max_frame: 64 * 1024,
            ..Libp2pConfig::default()
        },
    ])
    .await
    .expect("network");
    let (sender, limited) = (&nodes[0], &nodes[1]);
    let big = Bytes::from(vec![7u8; 40 * 1024]);
    // The bucket holds one largest frame (64 KiB): the first 40 KiB frame passes, the second
    // does not, and small frames are refused too until bytes refill (1 byte per second).
    sender
        .send(limited.local_peer_id(), big.clone())
        .await
        .expect("first frame fits the burst");
    assert_eq!(
        sender.send(limited.local_peer_id(), big).await,
        Err(TransportError::Backpressure(limited.local_peer_id()))
    );
    assert_eq!(limited.recv().await.expect("frame").frame.len(), 40 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_file_gives_a_stable_identity() {
    let dir = std::env::temp_dir().join(format!("musig2-transport-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("node.key");
    let _ = std::fs::remove_file(&path);
    let id = Libp2pTransport::write_key_file(&path).expect("write key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the secret is readable by its owner only"
        );
    }
    assert!(
        Libp2pTransport::write_key_file(&path).is_err(),
        "an existing key file is never overwritten"
    );
    for _ in 0..2 {
        let node = Libp2pTransport::spawn(Libp2pConfig {
            key: KeySource::Ed25519File(path.clone()),
            ..Libp2pConfig::default()
        })
        .await
        .expect("node from key file");
        assert_eq!(node.local_peer_id(), id);
        node.shutdown().await.expect("shutdown");
    }
    std::fs::write(&path, b"not a key").expect("overwrite");
    let err = Libp2pTransport::spawn(Libp2pConfig {
        key: KeySource::Ed25519File(path.clone()),
        ..Libp2pConfig::default()
    })
    .await
    .expect_err("bad key file");
    assert!(matches!(err, TransportError::Config(_)), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_frames() {
    let quic: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("addr");
    let config = Libp2pConfig {
        listen_addrs: vec![quic],
        ..Libp2pConfig::default()
    };
    let a = Libp2pTransport::spawn(config.clone()).await.expect("a");
    let b = Libp2pTransport::spawn(config).await.expect("b");
    a.add_address(b.local_peer_id(), b.listen_addrs()[0].clone())
        .await
        .expect("address");
    deliver(&a, &b, b"over quic").await;
}

// ---- a raw peer that speaks the frame protocol by hand -------------------------------------

/// A bare swarm with only the stream behaviour, driven in its own task; returns its id and
/// the stream control.
async fn raw_peer(connect_to: Option<&Multiaddr>) -> (PeerId, libp2p_stream::Control, Multiaddr) {
    let mut raw = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    raw.listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
        .expect("listen");
    let addr = within("raw listen address", async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = raw.select_next_some().await {
                break address;
            }
        }
    })
    .await;
    if let Some(target) = connect_to {
        raw.dial(target.clone()).expect("dial");
        within("raw connection", async {
            loop {
                if let SwarmEvent::ConnectionEstablished { .. } = raw.select_next_some().await {
                    break;
                }
            }
        })
        .await;
    }
    let id = PeerId::from_libp2p(*raw.local_peer_id());
    let control = raw.behaviour().new_control();
    tokio::spawn(async move {
        loop {
            raw.select_next_some().await;
        }
    });
    (id, control, addr)
}

/// Writes `bytes` on a fresh frame stream, closes our side and returns every byte the node
/// answered before it closed its side.
async fn raw_exchange(
    control: &mut libp2p_stream::Control,
    target: PeerId,
    bytes: &[u8],
) -> Vec<u8> {
    let mut stream = control
        .open_stream(target.to_libp2p(), FRAME_PROTOCOL)
        .await
        .expect("the node accepts frame streams");
    // The node may drop the stream mid-write (that is the point); what it answered is what
    // counts.
    let _ = stream.write_all(bytes).await;
    let _ = stream.close().await;
    let mut answer = Vec::new();
    let _ = within("raw answer", stream.take(1024).read_to_end(&mut answer)).await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_from_a_raw_peer() {
    const MAX: usize = 4096;
    let nodes = Libp2pTransport::spawn_local_network_with(vec![
        Libp2pConfig {
            max_frame: MAX,
            ..Libp2pConfig::default()
        },
        Libp2pConfig::default(),
    ])
    .await
    .expect("network");
    let (target, honest) = (&nodes[0], &nodes[1]);
    let (_, mut raw, _) = raw_peer(Some(&target.listen_addrs()[0])).await;

    let oversized = {
        let mut f = u32::try_from(MAX + 1)
            .expect("small")
            .to_be_bytes()
            .to_vec();
        f.extend(vec![0u8; MAX + 1]);
        f
    };
    let attacks: Vec<Vec<u8>> = vec![
        u32::MAX.to_be_bytes().to_vec(),  // claims 4 GiB
        [0, 0, 0, 100, 1, 2, 3].to_vec(), // truncated body
        vec![0, 0],                       // truncated length
        oversized,                        // just over the cap
        // a valid two-byte frame, then a length of 0x09090909: over the cap
        [0, 0, 0, 2, 9, 9, 9, 9, 9, 9, 9, 9, 9].to_vec(),
    ];
    let mut answers = Vec::new();
    for attack in &attacks {
        answers.push(raw_exchange(&mut raw, target.local_peer_id(), attack).await);
    }
    // Lengths over the cap are answered "too large" (3) from the length alone, truncated input
    // gets no answer; the one valid frame is accepted (0) and the bad length behind it refused.
    // Every stream ends after the first problem.
    assert_eq!(
        answers,
        vec![vec![3u8], vec![], vec![], vec![3u8], vec![0u8, 3u8]],
        "{answers:?}"
    );

    // The node is alive and serves honest peers.
    honest
        .send(target.local_peer_id(), Bytes::from_static(b"still here"))
        .await
        .expect("honest send after the attacks");
    let first = within("recv after attacks", target.recv())
        .await
        .expect("frame");
    assert_eq!(&first.frame[..], &[9, 9], "the valid frame arrived first");
    let second = within("recv after attacks", target.recv())
        .await
        .expect("frame");
    assert_eq!(&second.frame[..], b"still here");
    target.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_receivers_limit_names_the_receiver_and_the_next_goes_through() {
    const SMALL: usize = 1024;
    let nodes = Libp2pTransport::spawn_local_network_with(vec![
        Libp2pConfig::default(),
        Libp2pConfig {
            max_frame: SMALL,
            ..Libp2pConfig::default()
        },
    ])
    .await
    .expect("network");
    let (big, small) = (&nodes[0], &nodes[1]);
    for _ in 0..3 {
        let refused = big
            .send(small.local_peer_id(), Bytes::from(vec![1u8; SMALL + 1]))
            .await;
        assert!(
            matches!(&refused, Err(TransportError::Remote { peer, .. }) if *peer == small.local_peer_id()),
            "{refused:?}"
        );
        deliver(big, small, &[2u8; SMALL]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_hold_many_frame_streams() {
    let target = Libp2pTransport::spawn(Libp2pConfig::default())
        .await
        .expect("target");
    let (raw_id, mut raw, _) = raw_peer(Some(&target.listen_addrs()[0])).await;
    let target_id = target.local_peer_id();
    // Ten streams held open at once, each carrying one frame: only the first few are served.
    let mut streams = Vec::new();
    for _ in 0..10 {
        streams.push(
            raw.open_stream(target_id.to_libp2p(), FRAME_PROTOCOL)
                .await
                .expect("stream"),
        );
    }
    let mut served = 0;
    for stream in &mut streams {
        let _ = stream.write_all(&[0, 0, 0, 1, 42]).await;
        let _ = stream.flush().await;
        let mut status = [0u8; 1];
        let answered = within("status or close", stream.read(&mut status)).await;
        if matches!(answered, Ok(1)) {
            assert_eq!(status[0], 0, "a served stream acknowledges the frame");
            served += 1;
        }
    }
    assert!((1..=4).contains(&served), "served {served} of 10 streams");
    for _ in 0..served {
        let inbound = within("frame", target.recv()).await.expect("frame");
        assert_eq!((inbound.from, &inbound.frame[..]), (raw_id, &[42u8][..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_answers_garbage_fails_the_send_and_the_next_gets_a_fresh_stream() {
    let sender = Libp2pTransport::spawn(Libp2pConfig::default())
        .await
        .expect("sender");
    let (raw_id, mut raw, raw_addr) = raw_peer(None).await;
    let mut incoming = raw.accept(FRAME_PROTOCOL).expect("accept");
    sender.add_address(raw_id, raw_addr).await.expect("address");
    // The raw receiver answers its first stream with an unknown status and its second properly.
    let receiver = tokio::spawn(async move {
        let mut frames = Vec::new();
        for answer in [7u8, 0u8] {
            let (_, mut stream) = incoming.next().await.expect("stream");
            let mut frame = [0u8; 4 + 3];
            stream.read_exact(&mut frame).await.expect("frame");
            frames.push(frame[4..].to_vec());
            stream.write_all(&[answer]).await.expect("answer");
            stream.flush().await.expect("flush");
            // Keep the second stream open until the sender is done.
            if answer == 0 {
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            }
        }
        frames
    });
    let first = within(
        "first send",
        sender.send(raw_id, Bytes::from_static(b"one")),
    )
    .await;
    assert!(
        matches!(&first, Err(TransportError::Unreachable { peer, .. }) if *peer == raw_id),
        "{first:?}"
    );
    within(
        "second send",
        sender.send(raw_id, Bytes::from_static(b"two")),
    )
    .await
    .expect("a fresh stream works");
    sender.shutdown().await.expect("shutdown");
    let frames = within("receiver", receiver).await.expect("receiver task");
    assert_eq!(frames, vec![b"one".to_vec(), b"two".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_dials_to_one_peer_all_succeed() {
    let a = Libp2pTransport::spawn(Libp2pConfig::default())
        .await
        .expect("a");
    let b = Libp2pTransport::spawn(Libp2pConfig::default())
        .await
        .expect("b");
    a.add_address(b.local_peer_id(), b.listen_addrs()[0].clone())
        .await
        .expect("add address");
    // The second and third dial arrive while the first is in progress: they wait for it
    // instead of failing.
    let (first, second, third) = within("dials", async {
        tokio::join!(
            a.dial(b.local_peer_id()),
            a.dial(b.local_peer_id()),
            a.dial(b.local_peer_id())
        )
    })
    .await;
    assert_eq!(first, Ok(()));
    assert_eq!(second, Ok(()));
    assert_eq!(third, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_queue_is_bounded_in_bytes() {
    let nodes = Libp2pTransport::spawn_local_network_with(vec![
        Libp2pConfig::default(),
        Libp2pConfig {
            max_inbound_queue_bytes: 1000,
            ..Libp2pConfig::default()
        },
    ])
    .await
    .expect("network");
    let (sender, receiver) = (&nodes[0], &nodes[1]);
    let frame = Bytes::from(vec![1u8; 600]);
    sender
        .send(receiver.local_peer_id(), frame.clone())
        .await
        .expect("an empty queue takes a frame");
    // 1,200 bytes would wait: refused, though the queue has room for many frames.
    assert_eq!(
        sender.send(receiver.local_peer_id(), frame.clone()).await,
        Err(TransportError::Backpressure(receiver.local_peer_id()))
    );
    assert_eq!(receiver.recv().await.expect("frame").frame.len(), 600);
    sender
        .send(receiver.local_peer_id(), frame)
        .await
        .expect("room again once read");
}

// ---- answers held back for frames that can wait (ADR 0024) -----------------------------------

/// Longer than [`common::PATIENCE`]: an answer that arrives within it was not held to the end
/// of the delay.
const HOLD: Duration = Duration::from_secs(120);

/// `body` as a frame on the wire, marked [`ANSWER_LATER`] if `later`.
fn wire_frame(body: &[u8], later: bool) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("small");
    let word = if later { len | ANSWER_LATER } else { len };
    let mut wire = word.to_be_bytes().to_vec();
    wire.extend_from_slice(body);
    wire
}

/// Writes each body as one frame (with the "answer later" bit when `later`), then flushes.
async fn write_frames<'a>(
    stream: &mut libp2p::Stream,
    bodies: impl IntoIterator<Item = &'a [u8]>,
    later: bool,
) {
    for body in bodies {
        stream
            .write_all(&wire_frame(body, later))
            .await
            .expect("write");
    }
    stream.flush().await.expect("flush");
}

/// A node under `config`, and a frame stream a raw peer opened to it.
async fn node_and_raw_stream(config: Libp2pConfig) -> (Libp2pTransport, libp2p::Stream) {
    let mut nodes = Libp2pTransport::spawn_local_network_with(vec![config])
        .await
        .expect("network");
    let target = nodes.pop().expect("one node");
    let (_, mut raw, _) = raw_peer(Some(&target.listen_addrs()[0])).await;
    let stream = raw
        .open_stream(target.local_peer_id().to_libp2p(), FRAME_PROTOCOL)
        .await
        .expect("stream");
    (target, stream)
}

/// Whether the node wrote anything on `stream` within a short while.
async fn answered_soon(stream: &mut libp2p::Stream) -> bool {
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_frames_that_can_wait_are_held_and_go_out_together() {
    let (target, mut stream) = node_and_raw_stream(Libp2pConfig {
        ack_delay: HOLD,
        ..Libp2pConfig::default()
    })
    .await;

    // Three frames that can wait: delivered at once, answered not yet.
    write_frames(&mut stream, [&[0u8][..], &[1], &[2]], true).await;
    for i in 0..3u8 {
        let inbound = within("delivery", target.recv()).await.expect("frame");
        assert_eq!(&inbound.frame[..], &[i]);
    }
    assert!(!answered_soon(&mut stream).await, "answers held back");

    // A frame that cannot wait is answered at once, and the held answers go with it.
    write_frames(&mut stream, [&b"now"[..]], false).await;
    let mut answers = [9u8; 4];
    within("four answers", stream.read_exact(&mut answers))
        .await
        .expect("read");
    assert_eq!(answers, [0; 4]);
    assert_eq!(
        &within("recv", target.recv()).await.expect("frame").frame[..],
        b"now"
    );

    // A full batch of frames that can wait is answered without waiting for the delay.
    write_frames(&mut stream, vec![&b"b"[..]; ACK_BATCH], true).await;
    let mut batch = vec![9u8; ACK_BATCH];
    within("a full batch of answers", stream.read_exact(&mut batch))
        .await
        .expect("read");
    assert_eq!(batch, vec![0; ACK_BATCH]);

    // Held answers are written when the sender closes its side.
    write_frames(&mut stream, [&b"c"[..]; 2], true).await;
    stream.close().await.expect("close");
    let mut rest = Vec::new();
    within("the last answers", stream.read_to_end(&mut rest))
        .await
        .expect("read");
    assert_eq!(rest, vec![0, 0]);
    target.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_answered_at_once_even_for_a_frame_that_can_wait() {
    let (target, mut stream) = node_and_raw_stream(Libp2pConfig {
        ack_delay: HOLD,
        inbound_rate_per_sec: 1,
        ..Libp2pConfig::default()
    })
    .await;
    // One frame a second: the first is accepted (and held), the second refused, which sends
    // both answers.
    write_frames(&mut stream, [&b"1"[..]], true).await;
    assert!(!answered_soon(&mut stream).await, "the acceptance is held");
    write_frames(&mut stream, [&b"2"[..]], true).await;
    let mut answers = [9u8; 2];
    within("both answers", stream.read_exact(&mut answers))
        .await
        .expect("read");
    assert_eq!(answers, [0, 2], "accepted, then rate limited");
    target.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_complete_within_the_delay_and_plain_sends_at_once() {
    let nodes = Libp2pTransport::spawn_local_network_with(vec![
        Libp2pConfig::default(),
        Libp2pConfig {
            ack_delay: Duration::from_millis(300),
            ..Libp2pConfig::default()
        },
        Libp2pConfig {
            ack_delay: HOLD,
            ..Libp2pConfig::default()
        },
    ])
    .await
    .expect("network");
    let (sender, short, long) = (&nodes[0], &nodes[1], &nodes[2]);
    // A pipelined send's result comes once the receiver's delay is over.
    within(
        "a pipelined send",
        sender.send_pipelined(short.local_peer_id(), Bytes::from_static(b"p")),
    )
    .await
    .expect("accepted");
    assert_eq!(
        &within("recv", short.recv()).await.expect("frame").frame[..],
        b"p"
    );
    // A plain send is answered at once, however long the receiver may hold answers.
    within(
        "a plain send",
        sender.send(long.local_peer_id(), Bytes::from_static(b"s")),
    )
    .await
    .expect("accepted");
    assert_eq!(
        &within("recv", long.recv()).await.expect("frame").frame[..],
        b"s"
    );
}
