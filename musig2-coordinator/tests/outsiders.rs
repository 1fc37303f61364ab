//! What an outsider (a member of no honest session) and a lying creator can do to a node, on the
//! in-memory network under a paused clock: every table it can reach stays within its bound, the
//! node keeps answering, and honest sessions still sign.

use std::sync::Arc;
use std::time::Duration;

use musig2_coordinator::{
    AbortOrigin, Config, CoordinatorError, Event, Node, NodeUsage, SessionRequest,
};
use musig2_proto::{
    AbortReason, Announcement, Body, Envelope, Frame, Limits, PeerIdBytes, Policy, SeqNo,
    SessionId, SignedAnnouncement, SignerIndex, SignerInfo, Timeouts,
};
use musig2_transport::{Bytes, LinkFault, MemoryNetwork, MemoryTransport, Transport};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use secp256k1::{Keypair, PublicKey};

const T_HOUR_MS: u64 = 3_600_000;

fn small_config() -> Config {
    Config {
        max_concurrent_sessions: 8,
        max_unjoined_sessions: 16,
        max_unjoined_per_creator: 4,
        max_buffered_messages_per_peer: 8,
        max_pending_bytes_per_peer: 4096,
        max_pending_frames: 32,
        max_pending_bytes: 16 * 1024,
        dht_query_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

/// Milliseconds on the node's clock (which follows tokio's paused clock from the real time at
/// the start).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn announcement(
    creator: &Keypair,
    signers: &[PublicKey],
    peers: &[Option<musig2_transport::PeerId>],
    lifetime_ms: u64,
    timeouts: Option<Timeouts>,
) -> SignedAnnouncement {
    let now = now_ms();
    let mut policy = Policy::default();
    if let Some(t) = timeouts {
        policy.timeouts = t;
    }
    Announcement {
        signers: signers
            .iter()
            .enumerate()
            .map(|(i, key)| SignerInfo {
                key: *key,
                peer_id: peers
                    .get(i)
                    .copied()
                    .flatten()
                    .map(|p| PeerIdBytes::new(p.to_bytes()).unwrap()),
            })
            .collect(),
        messages: vec![musig2_proto::MessageToSign::new(b"outsider".to_vec())],
        document_digest: None,
        creator: SignerIndex::try_from(
            signers
                .iter()
                .position(|k| *k == creator.public_key())
                .unwrap(),
        )
        .unwrap(),
        policy,
        salt: rand::random(),
        created_at_ms: now,
        expires_at_ms: now + lifetime_ms,
    }
    .sign(creator, &Limits::default())
    .unwrap()
}

async fn usage(node: &Node) -> NodeUsage {
    node.usage().await.expect("usage")
}

/// Lets the node task drain its inbound queue.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Sends announcement `a` from `from` to each of `to`, lets the nodes take it in, and returns its
/// session id.
async fn announce(
    from: &MemoryTransport,
    to: &[musig2_transport::PeerId],
    a: &SignedAnnouncement,
) -> SessionId {
    for peer in to {
        from.send(*peer, Bytes::from(a.to_frame_bytes()))
            .await
            .unwrap();
    }
    settle().await;
    a.verify(now_ms(), &Limits::default()).unwrap().session_id()
}

fn request(
    signers: &[&Keypair],
    nodes: &[&Node],
    message: &[u8],
    policy: Policy,
) -> SessionRequest {
    SessionRequest {
        signers: signers.iter().map(|k| k.public_key()).collect(),
        peers: nodes.iter().map(|n| Some(n.peer_id())).collect(),
        messages: vec![musig2_proto::MessageToSign::new(message.to_vec())],
        document_digest: None,
        policy,
    }
}

/// Issue 9, finding 1: announcements naming [victim, attacker] with lifetimes years long used to
/// lock the victim out of signing (`TooManySessions`).
#[tokio::test(start_paused = true)]
async fn announcement_flood_cannot_lock_a_node_out_of_signing() {
    let net = MemoryNetwork::new(11);
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let (victim_key, honest_key) = (Keypair::new(&mut rng), Keypair::new(&mut rng));
    let victim = Node::spawn(Arc::new(net.add_node()), victim_key, small_config());
    let honest = Node::spawn(Arc::new(net.add_node()), honest_key, small_config());
    let attacker = net.add_node();
    let mut events = victim.events();

    // Years-long announcements are refused outright.
    let forever = 10 * 365 * 24 * T_HOUR_MS;
    let mut long_timeouts = Policy::default().timeouts;
    long_timeouts.nonce_ms = forever;
    let mut long_join = Policy::default().timeouts;
    long_join.join_ms = forever;
    for _ in 0..4 {
        let sybil = Keypair::new(&mut rng);
        let keys = [victim_key.public_key(), sybil.public_key()];
        for (lifetime, timeouts) in [
            (forever, None),
            (T_HOUR_MS, Some(long_timeouts)),
            (T_HOUR_MS, Some(long_join)),
        ] {
            let a = announcement(&sybil, &keys, &[], lifetime, timeouts);
            attacker
                .send(victim.peer_id(), Bytes::from(a.to_frame_bytes()))
                .await
                .unwrap();
        }
    }
    settle().await;
    assert_eq!(usage(&victim).await.unjoined_sessions, 0);

    // Within the node's limits, one key and a crowd of keys fill only the un-joined pool.
    let one = Keypair::new(&mut rng);
    let mut crowd: Vec<Keypair> = (0..30).map(|_| Keypair::new(&mut rng)).collect();
    crowd.push(one);
    for creator in crowd.iter().chain(std::iter::repeat_n(&one, 40)) {
        let keys = [victim_key.public_key(), creator.public_key()];
        let a = announcement(creator, &keys, &[], T_HOUR_MS, None);
        attacker
            .send(victim.peer_id(), Bytes::from(a.to_frame_bytes()))
            .await
            .unwrap();
        settle().await;
        let u = usage(&victim).await;
        assert!(u.unjoined_sessions <= 16, "{u:?}");
        assert_eq!(u.active_sessions, 0, "{u:?}");
    }
    let (mut discovered, mut evicted) = (0, 0);
    while let Ok(e) = events.try_recv() {
        discovered += usize::from(matches!(e, Event::SessionDiscovered { .. }));
        evicted += usize::from(matches!(e, Event::SessionEvicted { .. }));
    }
    assert!(
        discovered >= 16,
        "the flood did reach the pool ({discovered})"
    );
    // Nothing is dropped silently: every session that left the pool was reported.
    assert_eq!(discovered - evicted, usage(&victim).await.unjoined_sessions);

    // Honest sessions, created by the victim and by the other signer, still sign.
    let pair = [&victim_key, &honest_key];
    let by_victim = victim
        .create_session(request(
            &pair,
            &[&victim, &honest],
            b"one",
            victim.default_policy(),
        ))
        .await
        .expect("the victim can create");
    honest.join_session(by_victim).await.expect("join");
    let by_honest = honest
        .create_session(request(
            &pair,
            &[&victim, &honest],
            b"two",
            honest.default_policy(),
        ))
        .await
        .expect("create");
    victim
        .join_session(by_honest)
        .await
        .expect("the victim can join");
    for id in [by_victim, by_honest] {
        let sig = victim.wait_for_signatures(id).await.expect("signed");
        assert_eq!(honest.wait_for_signatures(id).await.expect("signed"), sig);
    }

    // Un-joined sessions are dropped after the node's own lifetime for them.
    tokio::time::sleep(small_config().unjoined_session_lifetime + Duration::from_secs(1)).await;
    assert_eq!(usage(&victim).await.unjoined_sessions, 0);
}

fn junk_envelope(sender: &Keypair, session: SessionId, seq: u64, pad: usize) -> SignedEnvelope {
    Envelope::sign(
        session,
        SignerIndex::try_from(1usize).unwrap(),
        SeqNo::new(seq).unwrap(),
        now_ms(),
        Body::BroadcastConfirmed {
            attempt: musig2_proto::Attempt::FIRST,
            receipt: vec![0xAB; pad],
        },
        sender,
    )
}

use musig2_proto::SignedEnvelope;

/// Issue 9, finding 2: envelopes for unknown sessions were buffered without a byte cap, a cap
/// across peers or an expiry.
#[tokio::test(start_paused = true)]
async fn frames_for_unknown_sessions_are_bounded_per_peer_and_overall_and_expire() {
    let net = MemoryNetwork::new(12);
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let victim = Node::spawn(
        Arc::new(net.add_node()),
        Keypair::new(&mut rng),
        small_config(),
    );
    let signer = Keypair::new(&mut rng);
    let attackers: Vec<MemoryTransport> = (0..10).map(|_| net.add_node()).collect();
    // Each attacker: fresh session ids (one entry per id would be 1,000 entries), single frames
    // and batches, small and large bodies.
    for (a, attacker) in attackers.iter().enumerate() {
        for i in 0..100u64 {
            let session = SessionId::from_bytes(rand::random());
            let frame = if i % 10 == 0 {
                let batch: Vec<SignedEnvelope> = (0..8)
                    .map(|k| junk_envelope(&signer, session, 1 + k, 200))
                    .collect();
                Frame::encode_batch(&batch)
            } else {
                junk_envelope(&signer, session, 1, if i % 3 == 0 { 256 } else { 16 })
                    .to_frame_bytes()
            };
            let _ = attacker.send(victim.peer_id(), Bytes::from(frame)).await;
            if i % 25 == 0 {
                settle().await;
                let u = usage(&victim).await;
                assert!(
                    u.pending_frames <= 32 && u.pending_bytes <= 16 * 1024,
                    "{u:?}"
                );
                assert!(
                    u.pending_frames <= (a + 1) * 8,
                    "per-peer share exceeded: {u:?}"
                );
            }
        }
    }
    settle().await;
    let u = usage(&victim).await;
    assert!(u.pending_frames > 0 && u.pending_frames <= 32, "{u:?}");
    assert!(u.pending_bytes <= 16 * 1024, "{u:?}");
    // Nothing outlives the clock-skew bound.
    tokio::time::sleep(small_config().max_clock_skew + Duration::from_secs(1)).await;
    let u = usage(&victim).await;
    assert_eq!((u.pending_frames, u.pending_bytes), (0, 0), "{u:?}");
}

/// Issue 9, finding 5: a node joining a session that lists many unreachable peers used to wait
/// for send permits inside its own task and answer no command.
#[tokio::test(start_paused = true)]
async fn unreachable_peers_never_stall_the_node_task() {
    let net = MemoryNetwork::new(13);
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let victim_key = Keypair::new(&mut rng);
    let config = Config {
        max_inflight_sends: 2,
        ..small_config()
    };
    let victim = Node::spawn(Arc::new(net.add_node()), victim_key, config);
    // Peers that swallow every frame: a send to them hangs until the transport's timeout.
    let dead: Vec<MemoryTransport> = (0..40).map(|_| net.add_node()).collect();
    for d in &dead {
        net.set_node_fault(d.local_peer_id(), LinkFault::none().with_drop(1.0));
    }
    let creator = Keypair::new(&mut rng);
    let mut keys = vec![victim_key.public_key(), creator.public_key()];
    let mut peers = vec![Some(victim.peer_id()), Some(dead[0].local_peer_id())];
    for d in &dead[1..] {
        keys.push(Keypair::new(&mut rng).public_key());
        peers.push(Some(d.local_peer_id()));
    }
    let sender = net.add_node();
    for _ in 0..3 {
        let a = announcement(&creator, &keys, &peers, T_HOUR_MS, None);
        let id = announce(&sender, &[victim.peer_id()], &a).await;
        victim.join_session(id).await.expect("joined");
    }
    // 3 × 40 join frames are stuck on dead links; the node still answers at once.
    for _ in 0..5 {
        let answered = tokio::time::timeout(Duration::from_millis(100), victim.sessions()).await;
        assert!(answered.is_ok(), "the node task is waiting on sends");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(usage(&victim).await.outbound_peers <= small_config().max_outbound_peers);
}

/// Issue 9, finding 9: a creator listing its own peer id at an honest signer's index. The
/// signer refuses (typed error and event) instead of silently correcting it, and tells the other
/// signers, who report it as that signer's claim rather than blaming anyone themselves.
#[tokio::test(start_paused = true)]
async fn a_misrouted_signer_refuses_and_the_others_hear_its_claim() {
    let net = MemoryNetwork::new(14);
    let mut rng = ChaCha20Rng::seed_from_u64(14);
    let keys: Vec<Keypair> = (0..3).map(|_| Keypair::new(&mut rng)).collect();
    let victim = Node::spawn(Arc::new(net.add_node()), keys[1], small_config());
    let witness = Node::spawn(Arc::new(net.add_node()), keys[2], small_config());
    let creator = net.add_node();
    let mut victim_events = victim.events();
    let mut witness_events = witness.events();
    let pubkeys: Vec<PublicKey> = keys.iter().map(|k| k.public_key()).collect();
    // The creator lists its own peer at the victim's index.
    let peers = [
        Some(creator.local_peer_id()),
        Some(creator.local_peer_id()),
        Some(witness.peer_id()),
    ];
    let a = announcement(&keys[0], &pubkeys, &peers, T_HOUR_MS, None);
    let id = announce(&creator, &[victim.peer_id(), witness.peer_id()], &a).await;
    let refused = victim.join_session(id).await;
    assert!(
        matches!(refused, Err(CoordinatorError::Misrouted { listed, .. }) if listed == creator.local_peer_id()),
        "{refused:?}"
    );
    let mut saw_refusal = false;
    while let Ok(e) = victim_events.try_recv() {
        saw_refusal |= matches!(e, Event::SessionRefused { session, .. } if session == id);
    }
    assert!(saw_refusal);
    // The witness joins and then hears the victim's signed abort: a claim naming the creator.
    let _ = witness.join_session(id).await;
    let outcome = witness.wait_for_signatures(id).await;
    match outcome {
        Err(CoordinatorError::Aborted {
            reason,
            blamed,
            origin,
            ..
        }) => {
            assert_eq!(reason, AbortReason::Misrouted);
            assert_eq!(blamed, vec![SignerIndex::try_from(0usize).unwrap()]);
            assert_eq!(
                origin,
                AbortOrigin::Remote(SignerIndex::try_from(1usize).unwrap())
            );
        }
        other => panic!("expected the victim's claim, got {other:?}"),
    }
    let mut local_blame = false;
    while let Ok(e) = witness_events.try_recv() {
        if let Event::Aborted {
            origin: AbortOrigin::Local,
            blamed,
            ..
        } = e
        {
            local_blame |= blamed.contains(&SignerIndex::try_from(1usize).unwrap());
        }
    }
    assert!(
        !local_blame,
        "the witness's own finding blamed the misrouted signer"
    );
}

/// A lying signer cannot get an honest relay blocked: what is wrong with an envelope its author
/// signed counts against the author's own peer, never against a peer that relays it.
/// A victim node (signer 0) that joined a three-signer session, and raw transports at the
/// listed peers of signers 1 and 2 (signer 1's delivered the announcement).
struct Joined {
    net: MemoryNetwork,
    keys: Vec<Keypair>,
    victim: Node,
    peers: [MemoryTransport; 2],
    id: SessionId,
    rng: ChaCha20Rng,
}

async fn victim_joined(seed: u64) -> Joined {
    let net = MemoryNetwork::new(seed);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let keys: Vec<Keypair> = (0..3).map(|_| Keypair::new(&mut rng)).collect();
    let victim = Node::spawn(Arc::new(net.add_node()), keys[0], small_config());
    let peers = [net.add_node(), net.add_node()];
    let pubkeys: Vec<PublicKey> = keys.iter().map(|k| k.public_key()).collect();
    let listed = [
        Some(victim.peer_id()),
        Some(peers[0].local_peer_id()),
        Some(peers[1].local_peer_id()),
    ];
    let a = announcement(&keys[0], &pubkeys, &listed, T_HOUR_MS, None);
    let id = announce(&peers[0], &[victim.peer_id()], &a).await;
    victim.join_session(id).await.expect("join");
    Joined {
        net,
        keys,
        victim,
        peers,
        id,
        rng,
    }
}

#[tokio::test(start_paused = true)]
async fn a_relay_is_not_blocked_for_what_an_author_signed() {
    let Joined {
        keys,
        victim,
        peers: [relay, liar],
        id,
        mut rng,
        ..
    } = victim_joined(15).await;
    let envelope = |kp: &Keypair, index: usize, seq: u64, body: Body| {
        Envelope::sign(
            id,
            SignerIndex::try_from(index).unwrap(),
            SeqNo::new(seq).unwrap(),
            now_ms(),
            body,
            kp,
        )
    };
    let nonce = {
        let (_, pubnonce) = musig2_core::NonceGen::new(keys[2].public_key())
            .generate(&mut rng)
            .unwrap();
        musig2_proto::PubNonceBytes::from_bytes(pubnonce.to_bytes()).unwrap()
    };
    let nonce_body = || Body::Nonce {
        attempt: musig2_proto::Attempt::FIRST,
        pub_nonces: vec![nonce],
    };
    liar.send(
        victim.peer_id(),
        Bytes::from(envelope(&keys[2], 2, 1, nonce_body()).to_frame_bytes()),
    )
    .await
    .unwrap();
    // The liar re-signs its nonce again and again; the relay (bound to signer 1) forwards
    // each copy, as an honest relay forwards what verifies.
    for seq in 2..40 {
        let copy = envelope(&keys[2], 2, seq, nonce_body()).to_frame_bytes();
        relay
            .send(victim.peer_id(), Bytes::from(copy))
            .await
            .unwrap();
        settle().await;
    }
    let blocked: Vec<_> = victim
        .blocked_peers()
        .await
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert!(
        !blocked.contains(&relay.local_peer_id()),
        "the relay was blocked"
    );
    // The same copies sent by the liar's own peer are its offences.
    for seq in 40..80 {
        let copy = envelope(&keys[2], 2, seq, nonce_body()).to_frame_bytes();
        let _ = liar.send(victim.peer_id(), Bytes::from(copy)).await;
        settle().await;
    }
    let blocked: Vec<_> = victim
        .blocked_peers()
        .await
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert!(
        blocked.contains(&liar.local_peer_id()),
        "the liar was not blocked"
    );
    assert!(!blocked.contains(&relay.local_peer_id()));
}

/// A node that joins whatever is announced to it (as `--auto-join` does) still cannot have all
/// its session slots taken by one creator key.
#[tokio::test(start_paused = true)]
async fn one_creator_cannot_take_every_session_slot() {
    let net = MemoryNetwork::new(16);
    let mut rng = ChaCha20Rng::seed_from_u64(16);
    let (victim_key, honest_key) = (Keypair::new(&mut rng), Keypair::new(&mut rng));
    let config = Config {
        max_active_per_creator: 3,
        ..small_config()
    };
    let victim = Node::spawn(Arc::new(net.add_node()), victim_key, config.clone());
    let honest = Node::spawn(Arc::new(net.add_node()), honest_key, config);
    let attacker = net.add_node();
    let greedy = Keypair::new(&mut rng);
    let keys = [victim_key.public_key(), greedy.public_key()];
    let mut joined = 0;
    let mut refused = 0;
    for _ in 0..8 {
        let a = announcement(&greedy, &keys, &[], T_HOUR_MS, None);
        let id = announce(&attacker, &[victim.peer_id()], &a).await;
        match victim.join_session(id).await {
            Ok(()) => joined += 1,
            Err(CoordinatorError::TooManySessionsFromCreator { max: 3, .. }) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((joined, refused), (3, 5));
    // Another creator's session still gets a slot, and signs.
    let pair = [&victim_key, &honest_key];
    let id = honest
        .create_session(request(
            &pair,
            &[&victim, &honest],
            b"mine",
            honest.default_policy(),
        ))
        .await
        .expect("create");
    victim.join_session(id).await.expect("a slot is left");
    assert_eq!(
        victim.wait_for_signatures(id).await.expect("signed"),
        honest.wait_for_signatures(id).await.expect("signed")
    );
}

/// Unsigned final signatures (ADR 0015) end a session only if they verify, and only a signer's
/// peer can make a node check them: forged ones, from an outsider or from a bound liar, are
/// offences, and the session goes on.
#[tokio::test(start_paused = true)]
async fn forged_final_signatures_end_nothing_and_their_senders_are_blocked() {
    let Joined {
        net,
        keys,
        victim,
        peers: [liar, _],
        id,
        ..
    } = victim_joined(16).await;
    let outsider = net.add_node();
    // A signature by signer 1's own key over the message: valid BIP340, but not under the
    // session's aggregate key.
    let wrong = secp256k1::schnorr::sign(b"outsider", &keys[1]);
    let forged = musig2_proto::FinalSignatures::new(
        id,
        musig2_proto::Attempt::FIRST,
        vec![musig2_proto::Signature64(wrong.to_byte_array())],
    )
    .to_frame_bytes();
    let blocked = |list: Vec<(musig2_transport::PeerId, Duration)>| -> Vec<_> {
        list.into_iter().map(|(p, _)| p).collect()
    };
    for _ in 0..40 {
        let _ = outsider
            .send(victim.peer_id(), Bytes::from(forged.clone()))
            .await;
        let _ = liar
            .send(victim.peer_id(), Bytes::from(forged.clone()))
            .await;
        settle().await;
    }
    let list = blocked(victim.blocked_peers().await.unwrap());
    assert!(
        list.contains(&outsider.local_peer_id()),
        "outsider not blocked"
    );
    assert!(list.contains(&liar.local_peer_id()), "liar not blocked");
    let health = victim.health(id).await.expect("health");
    assert!(
        !health.phase.is_terminal(),
        "forged final signatures ended the session: {:?}",
        health.phase
    );
}

/// ADR 0025: announcements over their budget are set aside undecoded. A crowd of outsiders
/// flooding junk announcement frames keeps the set-aside buffer within its bounds, costs the
/// node no decoding until a local lookup, and cannot push out an honest creator's one
/// announcement, which a join by id then takes without the DHT.
#[tokio::test(start_paused = true)]
async fn a_crowd_cannot_flood_the_set_aside_announcements() {
    let config = Config {
        announcement_bytes_per_peer_per_sec: 1,
        max_set_aside_announcements: 8,
        max_set_aside_announcements_per_peer: 4,
        max_set_aside_announcement_bytes: 8 * 1024,
        dht_announce: musig2_coordinator::DhtAnnounce::IfNotJoinedWithin(Duration::from_secs(60)),
        ..small_config()
    };
    let net = MemoryNetwork::new(23);
    let mut rng = ChaCha20Rng::seed_from_u64(23);
    let (victim_key, creator_key) = (Keypair::new(&mut rng), Keypair::new(&mut rng));
    let victim = Node::spawn(Arc::new(net.add_node()), victim_key, config.clone());
    let creator = Node::spawn(Arc::new(net.add_node()), creator_key, config);
    let message = b"past the crowd";
    let id = creator
        .create_session(request(
            &[&creator_key, &victim_key],
            &[&creator, &victim],
            message,
            creator.default_policy(),
        ))
        .await
        .expect("create");
    settle().await;
    assert_eq!(usage(&victim).await.set_aside_announcements, 1);
    let junk = Bytes::from([&[0u8][..], &[0xee; 1000][..]].concat());
    for _ in 0..5 {
        let outsider = net.add_node();
        for _ in 0..6 {
            let _ = outsider.send(victim.peer_id(), junk.clone()).await;
            settle().await;
            let u = usage(&victim).await;
            assert!(u.set_aside_announcements <= 8, "{u:?}");
            assert!(u.set_aside_bytes <= 8 * 1024, "{u:?}");
        }
    }
    let rejected = |reason: &str| victim.stats().rejected.get(reason).copied().unwrap_or(0);
    assert_eq!(rejected("undecodable_frame"), 0, "nothing decoded yet");
    let started = tokio::time::Instant::now();
    victim.join_session(id).await.expect("join");
    assert!(started.elapsed() < Duration::from_secs(1), "no DHT needed");
    assert!(
        rejected("undecodable_frame") > 0,
        "junk named at the lookup"
    );
    let signatures = victim.wait_for_signatures(id).await.expect("signed");
    assert_eq!(
        signatures,
        creator.wait_for_signatures(id).await.expect("signed")
    );
}
