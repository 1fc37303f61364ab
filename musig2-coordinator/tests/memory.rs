//! End-to-end sessions between `Node`s on the in-memory network, under a paused tokio clock.

use std::sync::Arc;
use std::time::Duration;

use musig2_coordinator::{
    AbortOrigin, Config, CoordinatorError, DhtAnnounce, Event, Node, SessionRequest, dht_key,
};
use musig2_proto::{AbortReason, ElectionMethod, Policy, SessionId, Topology};
use musig2_transport::{Bytes, LinkFault, MemoryNetwork, Transport, TransportError};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use secp256k1::{Keypair, schnorr};

struct Cluster {
    network: MemoryNetwork,
    keypairs: Vec<Keypair>,
    nodes: Vec<Node>,
}

fn test_config() -> Config {
    Config {
        dht_query_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

fn cluster(n: usize, seed: u64) -> Cluster {
    cluster_with(n, seed, test_config())
}

fn cluster_with(n: usize, seed: u64, config: Config) -> Cluster {
    let network = MemoryNetwork::new(seed);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let keypairs: Vec<Keypair> = (0..n).map(|_| Keypair::new(&mut rng)).collect();
    let nodes = keypairs
        .iter()
        .map(|kp| Node::spawn(Arc::new(network.add_node()), *kp, config.clone()))
        .collect();
    Cluster {
        network,
        keypairs,
        nodes,
    }
}

impl Cluster {
    fn request(
        &self,
        message: &[u8],
        topology: Topology,
        commit: bool,
        list_peers: bool,
    ) -> SessionRequest {
        SessionRequest {
            signers: self.keypairs.iter().map(|k| k.public_key()).collect(),
            peers: if list_peers {
                self.nodes.iter().map(|n| Some(n.peer_id())).collect()
            } else {
                Vec::new()
            },
            messages: vec![musig2_proto::MessageToSign::new(message.to_vec())],
            document_digest: None,
            policy: Policy {
                topology,
                nonce_commitment: commit,
                election: ElectionMethod::HashBased,
                ..self.nodes[0].default_policy()
            },
        }
    }

    /// Creates on node 0, joins everywhere else, and returns every node's signature.
    async fn sign(&self, request: SessionRequest) -> (SessionId, Vec<schnorr::Signature>) {
        let message = request.messages[0].message.clone();
        let id = self.nodes[0].create_session(request).await.expect("create");
        for node in &self.nodes[1..] {
            node.join_session(id).await.expect("join");
        }
        let sigs = self.verified_signatures(id, &message).await;
        let health = self.nodes[0].health(id).await.expect("health");
        assert_eq!(health.holdouts, Vec::new());
        (id, sigs)
    }

    /// Every node's signature of a one-message session: all equal, and valid under the
    /// session's aggregate key.
    async fn verified_signatures(&self, id: SessionId, message: &[u8]) -> Vec<schnorr::Signature> {
        let mut sigs = Vec::new();
        for node in &self.nodes {
            sigs.push(single(
                node.wait_for_signatures(id).await.expect("signature"),
            ));
        }
        verify_all(&sigs, message, &self.aggregate_key(id).await);
        sigs
    }

    /// Node 1 joins all these sessions at once.
    async fn join_all_on_node_1(&self, ids: &[(SessionId, Vec<u8>)]) {
        let joins = ids.iter().map(|(id, _)| self.nodes[1].join_session(*id));
        for joined in futures::future::join_all(joins).await {
            joined.expect("join");
        }
    }

    async fn aggregate_key(&self, id: SessionId) -> secp256k1::XOnlyPublicKey {
        let ann = self.nodes[0].discover_session(id).await.expect("known");
        let keys = ann.signer_keys();
        musig2_core::KeyAggContext::new(&keys)
            .expect("keyagg")
            .x_only_key()
    }
}

/// The one signature of a single-message session.
fn single(sigs: Vec<schnorr::Signature>) -> schnorr::Signature {
    assert_eq!(sigs.len(), 1, "one message, one signature");
    sigs[0]
}

fn verify_all(sigs: &[schnorr::Signature], message: &[u8], key: &secp256k1::XOnlyPublicKey) {
    for s in sigs {
        assert_eq!(*s, sigs[0], "every node holds the same signature");
    }
    schnorr::verify(&sigs[0], message, key).expect("BIP340 verification with libsecp256k1");
}

#[tokio::test(start_paused = true)]
async fn sessions_of_2_3_10_and_50_signers_in_both_topologies() {
    for n in [2, 3, 10, 50] {
        for topology in [Topology::Mesh, Topology::Star] {
            for commit in [false, true] {
                if n == 50 && topology == Topology::Mesh && !commit {
                    // Covered by the commitment-round run; keeps the suite short.
                    continue;
                }
                let c = cluster(n, n as u64);
                let msg = format!("{n} signers, {topology:?}, commit {commit}");
                c.sign(c.request(msg.as_bytes(), topology, commit, true))
                    .await;
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn others_find_the_session_through_the_dht() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_test_writer()
        .try_init();
    let c = cluster(4, 40);
    // No peer ids in the announcement: the others must look it up by id, and learn each other's
    // peers through the creator relaying their joins.
    c.sign(c.request(b"discovered", Topology::Mesh, true, false))
        .await;
    let c = cluster(4, 41);
    c.sign(c.request(b"discovered", Topology::Star, true, false))
        .await;
}

#[tokio::test(start_paused = true)]
async fn poisoned_dht_records_are_skipped() {
    let c = cluster(3, 50);
    let attacker = c.network.add_node();
    let request = c.request(b"real", Topology::Mesh, false, true);
    let id = c.nodes[0].create_session(request).await.unwrap();
    // Garbage, and a valid announcement of another session, under the real session's key.
    attacker
        .dht_put(dht_key(&id), vec![0xff; 100], Duration::from_secs(60))
        .await
        .unwrap();
    let other = c.request(b"other", Topology::Mesh, false, true);
    let other_id = c.nodes[1].create_session(other).await.unwrap();
    let other_record = c.nodes[1]
        .discover_session(other_id)
        .await
        .unwrap()
        .signed()
        .to_frame_bytes();
    attacker
        .dht_put(dht_key(&id), other_record, Duration::from_secs(60))
        .await
        .unwrap();
    let found = c.nodes[2].discover_session(id).await.unwrap();
    assert_eq!(found.session_id(), id);
    assert_eq!(found.announcement().messages[0].message, b"real");
    // A session id nobody announced is not found.
    let missing = SessionId::from_bytes([42; 32]);
    assert!(c.nodes[2].discover_session(missing).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn concurrent_sessions_on_the_same_nodes_including_the_same_message() {
    let c = cluster(3, 60);
    let mut ids = Vec::new();
    for (i, msg) in [&b"same"[..], b"same", b"third", b"fourth"]
        .iter()
        .enumerate()
    {
        let topology = if i % 2 == 0 {
            Topology::Mesh
        } else {
            Topology::Star
        };
        let id = c.nodes[0]
            .create_session(c.request(msg, topology, i < 2, true))
            .await
            .unwrap();
        ids.push((id, msg.to_vec()));
    }
    assert_ne!(
        ids[0].0, ids[1].0,
        "the salt separates sessions on the same message"
    );
    for (id, _) in &ids {
        for node in &c.nodes[1..] {
            node.join_session(*id).await.unwrap();
        }
    }
    let mut first_sigs = Vec::new();
    for (id, msg) in &ids {
        let mut sigs = Vec::new();
        for node in &c.nodes {
            sigs.push(single(node.wait_for_signatures(*id).await.unwrap()));
        }
        verify_all(&sigs, msg, &c.aggregate_key(*id).await);
        first_sigs.push(sigs[0]);
    }
    // Fresh nonces per session: two sessions on the same message give different signatures.
    assert_ne!(first_sigs[0], first_sigs[1]);
    assert_eq!(c.nodes[0].sessions().await.unwrap().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn loss_and_duplication_are_survived_by_retries() {
    let c = cluster(5, 70);
    c.network
        .set_default_fault(LinkFault::none().with_drop(0.2).with_duplicate(0.2));
    for topology in [Topology::Mesh, Topology::Star] {
        c.sign(c.request(b"lossy", topology, true, true)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_crashed_signer_is_named_after_the_timeout() {
    let c = cluster(3, 80);
    let mut events = c.nodes[0].events();
    let id = c.nodes[0]
        .create_session(c.request(b"crash", Topology::Mesh, true, true))
        .await
        .unwrap();
    c.nodes[1].join_session(id).await.unwrap();
    // Signer 2 never joins: its node crashes.
    c.network.crash(c.nodes[2].peer_id()).unwrap();
    let err = c.nodes[0].wait_for_signatures(id).await.unwrap_err();
    let signer2 = c.nodes[0]
        .discover_session(id)
        .await
        .unwrap()
        .index_of(&c.keypairs[2].public_key())
        .unwrap();
    match err {
        CoordinatorError::Aborted { reason, blamed, .. } => {
            assert_eq!(reason, AbortReason::Timeout);
            assert_eq!(blamed, vec![signer2]);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Both live nodes time out at the same paused instant, so node 0 may hear node 1's abort
    // before its own timer fires: either origin is honest, and the blame is the same.
    let signer1 = c.nodes[0]
        .discover_session(id)
        .await
        .unwrap()
        .index_of(&c.keypairs[1].public_key())
        .unwrap();
    let mut saw_abort = false;
    while let Ok(e) = events.try_recv() {
        if let Event::Aborted { origin, blamed, .. } = e {
            assert!(
                origin == AbortOrigin::Local || origin == AbortOrigin::Remote(signer1),
                "unexpected origin {origin:?}"
            );
            assert_eq!(blamed, vec![signer2]);
            saw_abort = true;
        }
    }
    assert!(saw_abort);
}

#[tokio::test(start_paused = true)]
async fn events_report_the_session_lifecycle() {
    let c = cluster(2, 90);
    let mut events = c.nodes[1].events();
    let (id, sigs) = c
        .sign(c.request(b"events", Topology::Star, false, true))
        .await;
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        assert_eq!(e.session(), id);
        seen.push(e);
    }
    assert!(matches!(seen[0], Event::SessionDiscovered { .. }));
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::SessionJoined { .. }))
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::NoncesComplete { .. }))
    );
    // The signature comes last, unless this node is the one asked to act on it.
    let last = seen
        .iter()
        .rev()
        .find(|e| !matches!(e, Event::FinalizeDue { .. }));
    assert_eq!(
        last,
        Some(&Event::SignatureReady {
            session: id,
            signatures: vec![sigs[1]]
        })
    );
}

#[tokio::test(start_paused = true)]
async fn requests_that_cannot_work_are_refused() {
    let c = cluster(2, 100);
    let mut bad = c.request(b"x", Topology::Mesh, false, true);
    bad.signers.remove(0);
    bad.peers.remove(0);
    assert!(matches!(
        c.nodes[0].create_session(bad).await,
        Err(CoordinatorError::InvalidRequest(_))
    ));
    let mut bad = c.request(b"x", Topology::Mesh, false, true);
    bad.peers.pop();
    assert!(matches!(
        c.nodes[0].create_session(bad).await,
        Err(CoordinatorError::InvalidRequest(_))
    ));
    // A node whose key is not in the session cannot join it.
    let outsider = Node::spawn(
        Arc::new(c.network.add_node()),
        Keypair::new(&mut rand::rng()),
        test_config(),
    );
    let id = c.nodes[0]
        .create_session(c.request(b"x", Topology::Mesh, false, true))
        .await
        .unwrap();
    assert!(matches!(
        outsider.join_session(id).await,
        Err(CoordinatorError::NotASigner(_))
    ));
    outsider.shutdown().await.unwrap();
    assert!(matches!(
        outsider.health(id).await,
        Err(CoordinatorError::Shutdown)
    ));
}

#[tokio::test(start_paused = true)]
async fn mesh_batches_split_into_several_frames_still_sign() {
    // Small batches force every partial-signature batch (one partial signature plus the nine
    // nonces it was made under) into several frames.
    let network = MemoryNetwork::new(41);
    let mut rng = ChaCha20Rng::seed_from_u64(41);
    let keypairs: Vec<Keypair> = (0..10).map(|_| Keypair::new(&mut rng)).collect();
    let mut config = test_config();
    config.limits.max_batch_entries = 3;
    let nodes = keypairs
        .iter()
        .map(|kp| Node::spawn(Arc::new(network.add_node()), *kp, config.clone()))
        .collect();
    let cluster = Cluster {
        network,
        keypairs,
        nodes,
    };
    // And the parts of a batch overtake each other.
    cluster
        .network
        .set_default_fault(LinkFault::none().with_reorder(0.5, Duration::from_millis(20)));
    for commit in [false, true] {
        let request = cluster.request(b"split batches", Topology::Mesh, commit, true);
        let (id, sigs) = cluster.sign(request).await;
        verify_all(&sigs, b"split batches", &cluster.aggregate_key(id).await);
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_keeps_sending_junk_is_blocked_and_later_let_back() {
    let c = cluster(3, 91);
    let junk = c.network.add_node();
    let target = c.nodes[0].peer_id();
    let limit = test_config().max_peer_offences;
    assert!(limit > 1);
    // One short of the limit: still heard.
    for _ in 1..limit {
        junk.send(target, Bytes::from_static(b"\xff not a frame"))
            .await
            .expect("delivered while under the limit");
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    junk.send(target, Bytes::from_static(b"\xff not a frame"))
        .await
        .expect("the last straw is still delivered");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let refused = junk.send(target, Bytes::from_static(b"more junk")).await;
    assert!(
        matches!(refused, Err(TransportError::Unreachable { .. })),
        "{refused:?}"
    );
    let blocked = c.nodes[0].blocked_peers().await.expect("blocked peers");
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].0, junk.local_peer_id());
    assert!(blocked[0].1 <= test_config().peer_block_duration);
    // The honest signers, the blocker among them, still sign.
    c.sign(c.request(b"despite the junk", Topology::Star, false, true))
        .await;
    // After the block runs out, the peer is heard again (and starts from a clean count).
    tokio::time::sleep(test_config().peer_block_duration + Duration::from_secs(1)).await;
    junk.send(target, Bytes::from_static(b"\xff not a frame"))
        .await
        .expect("unblocked");
    assert_eq!(
        c.nodes[0].blocked_peers().await.expect("blocked peers"),
        Vec::new()
    );
}

/// Whether the DHT holds session `id`'s announcement, asked from a fresh node.
async fn in_dht(network: &MemoryNetwork, id: SessionId) -> bool {
    let reader = network.add_node();
    reader
        .dht_get(
            dht_key(&id),
            musig2_transport::RecordValidator::new(|_, _| true),
        )
        .await
        .is_ok()
}

#[tokio::test(start_paused = true)]
async fn with_every_peer_listed_the_dht_holds_a_session_only_when_a_signer_needs_it() {
    let after = Duration::from_secs(2);
    assert_eq!(
        test_config().dht_announce,
        DhtAnnounce::IfNotJoinedWithin(after),
        "the default"
    );
    // Everyone gets the announcement directly and signs: the DHT is never written.
    let c = cluster(3, 60);
    let (id, sigs) = c
        .sign(c.request(b"direct", Topology::Star, false, true))
        .await;
    assert_eq!(sigs.len(), 3);
    tokio::time::sleep(after * 2).await;
    assert!(!in_dht(&c.network, id).await);
    let stats = c.nodes[0].stats();
    assert_eq!((stats.dht_puts, stats.dht_puts_not_needed), (0, 1));

    // Signer 2's direct copy is lost: it is not in the DHT at first, then it is, and signer 2
    // joins by id (its lookup asks again until the record appears) and the session signs.
    let c = cluster(3, 61);
    for from in [0, 1] {
        c.network.set_link_fault(
            c.nodes[from].peer_id(),
            c.nodes[2].peer_id(),
            LinkFault::none().with_drop(1.0),
        );
    }
    let request = c.request(b"missed", Topology::Mesh, false, true);
    let id = c.nodes[0].create_session(request).await.unwrap();
    c.nodes[1].join_session(id).await.unwrap();
    assert!(!in_dht(&c.network, id).await);
    let joining = {
        let node = c.nodes[2].clone();
        tokio::spawn(async move { node.join_session(id).await })
    };
    tokio::time::sleep(after + Duration::from_millis(500)).await;
    assert!(in_dht(&c.network, id).await);
    joining.await.unwrap().unwrap();
    for from in [0, 1] {
        c.network.set_link_fault(
            c.nodes[from].peer_id(),
            c.nodes[2].peer_id(),
            LinkFault::none(),
        );
    }
    let mut sigs = Vec::new();
    for node in &c.nodes {
        sigs.push(single(node.wait_for_signatures(id).await.unwrap()));
    }
    verify_all(&sigs, b"missed", &c.aggregate_key(id).await);
    let stats = c.nodes[0].stats();
    assert_eq!((stats.dht_puts, stats.dht_puts_not_needed), (1, 0));
}

/// A signer told the session id out of band joins while the direct announcement is still on
/// its way and the DHT does not hold it (ADR 0013): the lookup ends when the direct copy
/// arrives, not at its next DHT retry. Virtual time under the paused clock.
#[tokio::test(start_paused = true)]
async fn a_join_by_id_ends_when_the_direct_announcement_arrives_not_at_the_next_dht_retry() {
    // The first DHT retry comes 0.5 to 1.5 s after a miss.
    let c = cluster_with(
        3,
        64,
        Config {
            retry_base_delay: Duration::from_secs(1),
            ..test_config()
        },
    );
    let link_delay = Duration::from_millis(20);
    c.network.set_link_fault(
        c.nodes[0].peer_id(),
        c.nodes[2].peer_id(),
        LinkFault::none().with_delay(musig2_transport::Delay::Fixed(link_delay)),
    );
    let id = c.nodes[0]
        .create_session(c.request(b"by id", Topology::Mesh, false, true))
        .await
        .unwrap();
    assert!(!in_dht(&c.network, id).await, "the DHT does not hold it");
    let started = tokio::time::Instant::now();
    c.nodes[2].join_session(id).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= link_delay / 2 && waited < Duration::from_millis(200),
        "joined after {waited:?}"
    );
    c.nodes[1].join_session(id).await.unwrap();
    let mut sigs = Vec::new();
    for node in &c.nodes {
        sigs.push(single(node.wait_for_signatures(id).await.unwrap()));
    }
    verify_all(&sigs, b"by id", &c.aggregate_key(id).await);
}

#[tokio::test(start_paused = true)]
async fn the_dht_holds_the_session_when_create_returns_if_a_peer_is_unlisted_or_always_is_set() {
    // A signer without a listed peer can only find the session in the DHT.
    let c = cluster(3, 62);
    let mut request = c.request(b"unlisted", Topology::Mesh, false, true);
    request.peers[2] = None;
    let id = c.nodes[0].create_session(request).await.unwrap();
    assert!(in_dht(&c.network, id).await);
    assert_eq!(c.nodes[0].stats().dht_puts, 1);

    // `Always`: every peer listed, in the DHT all the same.
    let c = cluster_with(
        2,
        63,
        Config {
            dht_announce: DhtAnnounce::Always,
            ..test_config()
        },
    );
    let id = c.nodes[0]
        .create_session(c.request(b"always", Topology::Mesh, false, true))
        .await
        .unwrap();
    assert!(in_dht(&c.network, id).await);
}

#[tokio::test(start_paused = true)]
async fn many_sessions_in_flight_are_signed_in_batches_and_stay_verifiable_evidence() {
    // ADR 0016, ADR 0017: a node signs what it sends at once (envelopes and its announcements)
    // under one signature per batch; each keeps its path, so the transcripts still verify
    // piece by piece.
    // Node 1 holds every announcement until it joins (by default 8 per creator).
    let c = cluster_with(
        2,
        91,
        Config {
            max_unjoined_per_creator: 32,
            ..test_config()
        },
    );
    let mut ids = Vec::new();
    for i in 0..24u32 {
        let message = format!("batch {i}").into_bytes();
        let id = c.nodes[0]
            .create_session(c.request(&message, Topology::Mesh, i % 2 == 0, true))
            .await
            .expect("create");
        ids.push((id, message));
    }
    c.join_all_on_node_1(&ids).await;
    for (id, message) in &ids {
        c.verified_signatures(*id, message).await;
    }
    let limits = musig2_coordinator::TranscriptLimits::default();
    let mut batch_signed = 0;
    let mut announcements = std::collections::HashSet::new();
    for node in &c.nodes {
        let stats = node.stats();
        assert!(
            stats.batch_signed_envelopes > 2 * stats.batch_signatures && stats.batch_signatures > 0,
            "{} envelopes under {} batch signatures",
            stats.batch_signed_envelopes,
            stats.batch_signatures
        );
        for (id, _) in &ids {
            let transcript = node.export_transcript(*id).await.expect("transcript");
            transcript.verify(&limits).expect("transcript verifies");
            batch_signed += transcript
                .envelopes
                .iter()
                .filter(|e| !e.auth().is_direct())
                .count();
            // ADR 0017: the announcement went out in the creator's batch, and both nodes hold
            // the same authentication for it.
            assert!(
                !transcript.announcement.auth().is_direct(),
                "announcement batch-signed"
            );
            announcements.insert(transcript.announcement.auth().clone());
        }
    }
    assert!(
        batch_signed > 0,
        "the transcripts hold batch-signed envelopes"
    );
    assert_eq!(announcements.len(), ids.len(), "one authentication each");
}

#[tokio::test(start_paused = true)]
async fn what_a_signer_sends_at_once_to_several_peers_shares_one_signature() {
    // ADR 0018: fan-out does not split a batch. In a single 4-signer session, each signer's
    // first step (its join and its first round-1 envelope; the creator's announcement too)
    // goes to several peers under one batch signature, which every holder verifies.
    use musig2_proto::Body;
    let c = cluster(4, 92);
    let limits = musig2_coordinator::TranscriptLimits::default();
    let scenarios = [
        (Topology::Mesh, false),
        (Topology::Mesh, true),
        (Topology::Star, false),
        (Topology::Star, true),
    ];
    for (topology, commit) in scenarios {
        let (id, _) = c.sign(c.request(b"fan-out", topology, commit, true)).await;
        let coordinator = c.nodes[0].health(id).await.expect("health").coordinator;
        // Mesh: every node holds everyone's join; star: the coordinator holds its members'.
        let holders = match topology {
            Topology::Star => vec![coordinator.as_usize()],
            _ => (0..c.nodes.len()).collect(),
        };
        for holder in holders {
            let transcript = c.nodes[holder]
                .export_transcript(id)
                .await
                .expect("transcript");
            transcript.verify(&limits).expect("transcript verifies");
            let creator = transcript.announcement.announcement().creator;
            for signer in (0..c.nodes.len())
                .filter(|&s| topology == Topology::Mesh || s != coordinator.as_usize())
            {
                let first_step: Vec<_> = transcript
                    .envelopes
                    .iter()
                    .filter(|e| e.envelope().signer().as_usize() == signer)
                    .filter(|e| match e.envelope().body() {
                        Body::Join { .. } => true,
                        Body::NonceCommit { .. } => commit,
                        Body::Nonce { .. } => !commit,
                        _ => false,
                    })
                    .collect();
                let context =
                    format!("{topology:?} commit={commit} holder {holder} signer {signer}");
                assert_eq!(first_step.len(), 2, "{context}: join and round-1 envelope");
                assert!(
                    first_step.iter().all(|e| !e.auth().is_direct()),
                    "{context}"
                );
                assert_eq!(
                    first_step[0].auth().signature(),
                    first_step[1].auth().signature(),
                    "{context}: one signature"
                );
                if creator.as_usize() == signer {
                    assert_eq!(
                        transcript.announcement.auth().signature(),
                        first_step[0].auth().signature(),
                        "{context}: the announcement is in the creator's batch"
                    );
                }
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_signer_that_dropped_the_creators_commitment_before_joining_is_not_blamed() {
    // Twelve sessions announced at once to a node that holds 8 un-joined sessions per creator:
    // it drops the oldest announcements, and with them the creator's early nonce commitments.
    // It joins those sessions late (through the DHT); the creator's reveal then carries the
    // creator's own commitment, so nobody waits for it and no honest signer is blamed.
    let c = cluster(2, 91);
    assert_eq!(Config::default().max_unjoined_per_creator, 8);
    let mut ids = Vec::new();
    for i in 0..12u32 {
        let message = format!("late joiner {i}").into_bytes();
        let id = c.nodes[0]
            .create_session(c.request(&message, Topology::Mesh, true, true))
            .await
            .expect("create");
        ids.push((id, message));
    }
    c.join_all_on_node_1(&ids).await;
    assert!(
        c.nodes[0].stats().dht_puts > 0,
        "some joins needed the DHT: their announcement had been dropped"
    );
    for (id, message) in &ids {
        c.verified_signatures(*id, message).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_creator_over_the_announcement_budget_is_not_blocked() {
    // An honest creator running many sessions goes over a peer's announcement budget: its
    // announcements are dropped there (it must be found in the DHT), but it is no offence, so
    // the creator is not blocked and its other sessions with that peer go on.
    let config = Config {
        announcement_bytes_per_peer_per_sec: 1024,
        ..test_config()
    };
    let c = cluster_with(2, 97, config);
    let blocking_needs = Config::default().max_peer_offences as usize * 8;
    for i in 0..blocking_needs + 20 {
        let message = format!("burst {i}").into_bytes();
        c.nodes[0]
            .create_session(c.request(&message, Topology::Mesh, false, true))
            .await
            .expect("create");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = c.nodes[1].stats();
    assert_eq!(stats.peers_blocked, 0, "the creator is not blocked");
    assert!(
        stats
            .rejected
            .get("announcement_over_budget")
            .copied()
            .unwrap_or(0)
            > blocking_needs as u64,
        "{:?}",
        stats.rejected
    );
    // Later, within budget, a session between them signs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.sign(c.request(b"after the burst", Topology::Mesh, false, true))
        .await;
    assert_eq!(c.nodes[1].stats().peers_blocked, 0);
}

/// A node that sets every announcement aside (any one is over a one-byte budget), and a
/// creator that puts its sessions in the DHT only after a minute: a join by id that finishes
/// sooner found the set-aside copy (ADR 0025).
fn set_aside_config() -> Config {
    Config {
        announcement_bytes_per_peer_per_sec: 1,
        dht_announce: DhtAnnounce::IfNotJoinedWithin(Duration::from_secs(60)),
        ..test_config()
    }
}

/// How many of `ids` the node holds (joined, un-joined or finished).
async fn holds(node: &Node, ids: &[SessionId]) -> usize {
    let list = node.sessions().await.expect("list");
    ids.iter()
        .filter(|id| list.iter().any(|h| h.session == **id))
        .count()
}

fn rejected(node: &Node, reason: &str) -> u64 {
    node.stats().rejected.get(reason).copied().unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn a_join_by_id_takes_an_announcement_set_aside_over_budget() {
    let c = cluster_with(3, 131, set_aside_config());
    for topology in [Topology::Mesh, Topology::Star] {
        let message = format!("set aside, {topology:?}").into_bytes();
        let id = c.nodes[0]
            .create_session(c.request(&message, topology, true, true))
            .await
            .expect("create");
        tokio::time::sleep(Duration::from_millis(50)).await;
        for node in &c.nodes[1..] {
            // Dropped over budget: not discovered, only held, undecoded.
            assert!(rejected(node, "announcement_over_budget") >= 1);
            assert_eq!(holds(node, &[id]).await, 0, "not taken in");
            assert_eq!(
                node.usage().await.expect("usage").set_aside_announcements,
                1
            );
        }
        let started = tokio::time::Instant::now();
        for node in &c.nodes[1..] {
            node.join_session(id).await.expect("join");
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "joined from the set-aside copy, not through the DHT ({:?})",
            started.elapsed()
        );
        c.verified_signatures(id, &message).await;
        assert_eq!(c.nodes[0].stats().dht_puts, 0, "nobody needed the DHT");
        for node in &c.nodes[1..] {
            assert_eq!(
                node.usage().await.expect("usage").set_aside_announcements,
                0
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_joiner_already_waiting_takes_the_announcement_as_it_is_set_aside() {
    // The announcement is late (a slow link) and over budget when it comes; the joiner has been
    // waiting for it since before it arrived.
    let c = cluster_with(2, 137, set_aside_config());
    let slow = Duration::from_millis(300);
    c.network.set_link_fault(
        c.nodes[0].peer_id(),
        c.nodes[1].peer_id(),
        LinkFault::none().with_delay(musig2_transport::Delay::Fixed(slow)),
    );
    let message = b"a waiting joiner".to_vec();
    let id = c.nodes[0]
        .create_session(c.request(&message, Topology::Mesh, false, true))
        .await
        .expect("create");
    let started = tokio::time::Instant::now();
    c.nodes[1].join_session(id).await.expect("join");
    let waited = started.elapsed();
    assert!(
        waited >= slow && waited < Duration::from_secs(1),
        "joined when the copy came, not from the DHT ({waited:?})"
    );
    assert!(rejected(&c.nodes[1], "announcement_over_budget") >= 1);
    c.verified_signatures(id, &message).await;
    assert_eq!(c.nodes[0].stats().dht_puts, 0);
}

#[tokio::test(start_paused = true)]
async fn set_aside_frames_cost_nothing_until_a_lookup_and_forgeries_are_offences() {
    // Outsiders' frames set aside are not decoded, let alone checked, on arrival. A lookup by
    // id names the undecodable ones and the forged copy of the session it looks for, and still
    // takes the genuine copy another peer sent.
    let c = cluster_with(2, 139, set_aside_config());
    let node = &c.nodes[1];
    let junk_sender = c.network.add_node();
    let forger = c.network.add_node();
    let relay = c.network.add_node();
    let creator = c.keypairs[0];
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");
    let signed = musig2_proto::Announcement::new(
        c.keypairs.iter().map(|k| k.public_key()).collect(),
        b"forged and genuine".to_vec(),
        musig2_proto::SignerIndex::new(0).expect("index"),
        now_ms,
        now_ms + 600_000,
    )
    .sign(&creator, &musig2_proto::Limits::default())
    .expect("sign");
    let id = signed.session_id();
    let genuine = signed.to_frame_bytes();
    // The signature is the frame's last 64 bytes: another one, same content, same id.
    let mut forged = genuine.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(
        musig2_proto::SignedAnnouncement::decode(&forged, &musig2_proto::Limits::default())
            .expect("decodes")
            .session_id(),
        id
    );
    junk_sender
        .send(node.peer_id(), Bytes::from_static(&[0, 0xff, 0xff, 0xff]))
        .await
        .expect("send");
    forger
        .send(node.peer_id(), Bytes::from(forged))
        .await
        .expect("send");
    relay
        .send(node.peer_id(), Bytes::from(genuine))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        node.usage().await.expect("usage").set_aside_announcements,
        3
    );
    assert_eq!(rejected(node, "undecodable_frame"), 0);
    assert_eq!(rejected(node, "invalid_announcement"), 0);

    let found = node.discover_session(id).await.expect("found");
    assert_eq!(found.session_id(), id);
    assert_eq!(rejected(node, "undecodable_frame"), 1);
    assert_eq!(rejected(node, "invalid_announcement"), 1);
    assert_eq!(
        node.usage().await.expect("usage").set_aside_announcements,
        0
    );
}

#[tokio::test(start_paused = true)]
async fn known_session_never_asks_the_dht() {
    // `known_session` answers from memory (or the set-aside copies) at once; a session nobody
    // sent here is `None`, not a DHT lookup that waits out `dht_query_timeout`.
    let c = cluster_with(2, 149, set_aside_config());
    let message = b"known or not".to_vec();
    let id = c.nodes[0]
        .create_session(c.request(&message, Topology::Mesh, false, true))
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = tokio::time::Instant::now();
    let unknown = SessionId::from_bytes([7; 32]);
    assert!(
        c.nodes[1]
            .known_session(unknown)
            .await
            .expect("asked")
            .is_none()
    );
    let set_aside = c.nodes[1].known_session(id).await.expect("asked");
    assert_eq!(set_aside.map(|a| a.session_id()), Some(id));
    assert!(started.elapsed() < Duration::from_millis(1));
    c.nodes[1].join_session(id).await.expect("join");
    c.verified_signatures(id, &message).await;
}

#[tokio::test(start_paused = true)]
async fn set_aside_announcements_are_taken_in_as_the_budget_refills() {
    // A burst over the per-peer budget is not lost: each set-aside announcement is taken in (and
    // discovered, e.g. by an auto-joining node) once the sender's budget has room for it, at the
    // budget's pace and no faster.
    let config = Config {
        announcement_bytes_per_peer_per_sec: 1024,
        dht_announce: DhtAnnounce::IfNotJoinedWithin(Duration::from_secs(600)),
        ..test_config()
    };
    let c = cluster_with(2, 151, config);
    let mut events = c.nodes[1].events();
    let mut ids = Vec::new();
    for i in 0..8u32 {
        let message = format!("burst {i}").into_bytes();
        let id = c.nodes[0]
            .create_session(c.request(&message, Topology::Mesh, true, true))
            .await
            .expect("create");
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let at_once = holds(&c.nodes[1], &ids).await;
    assert!(at_once < ids.len(), "the burst went over the budget");
    let set_aside = c.nodes[1]
        .usage()
        .await
        .expect("usage")
        .set_aside_announcements;
    assert_eq!(
        at_once + set_aside,
        ids.len(),
        "every copy is held or set aside"
    );
    // One second refills about 1 KiB: a few more, not all.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_a_second = holds(&c.nodes[1], &ids).await;
    assert!(after_a_second > at_once, "{after_a_second} > {at_once}");
    assert!(after_a_second < ids.len(), "no faster than the budget");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(holds(&c.nodes[1], &ids).await, ids.len());
    assert_eq!(
        c.nodes[1]
            .usage()
            .await
            .expect("usage")
            .set_aside_announcements,
        0
    );
    let mut discovered = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event, Event::SessionDiscovered { session } if ids.contains(&session)) {
            discovered += 1;
        }
    }
    assert_eq!(discovered, ids.len(), "each one discovered, as on arrival");
    // And they sign.
    for id in &ids {
        c.nodes[1].join_session(*id).await.expect("join");
    }
    for (i, id) in ids.iter().enumerate() {
        c.verified_signatures(*id, format!("burst {i}").as_bytes())
            .await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_busy_node_still_takes_in_its_set_aside_announcements() {
    // Frames arriving more often than the draining interval must not keep postponing it.
    let config = Config {
        announcement_bytes_per_peer_per_sec: 1024,
        dht_announce: DhtAnnounce::IfNotJoinedWithin(Duration::from_secs(600)),
        max_peer_offences: 0,
        ..test_config()
    };
    let c = cluster_with(2, 157, config);
    let chatter = c.network.add_node();
    let target = c.nodes[1].peer_id();
    let noise = tokio::spawn(async move {
        loop {
            let _ = chatter
                .send(target, Bytes::from_static(&[0x7f, 1, 2, 3]))
                .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut ids = Vec::new();
    for i in 0..8u32 {
        let message = format!("busy {i}").into_bytes();
        ids.push(
            c.nodes[0]
                .create_session(c.request(&message, Topology::Mesh, true, true))
                .await
                .expect("create"),
        );
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let held = holds(&c.nodes[1], &ids).await;
    noise.abort();
    assert!(
        c.nodes[1]
            .stats()
            .rejected
            .get("undecodable_frame")
            .copied()
            .unwrap_or(0)
            > 300
    );
    assert_eq!(held, ids.len(), "every set-aside announcement taken in");
}

#[tokio::test(start_paused = true)]
async fn a_replayed_announcement_does_not_bring_a_forgotten_session_back() {
    // With room for one finished session, the second session's end forgets the first. Its
    // announcement is still valid; replayed to a signer by anyone who saw it, it must not come
    // back as a new session (an auto-joining node would join it and, at the deadline, name the
    // other signers, who finished long ago, as holdouts).
    let config = Config {
        max_finished_sessions: 1,
        ..test_config()
    };
    let c = cluster_with(2, 163, config);
    let (first, _) = c
        .sign(c.request(b"finished first", Topology::Mesh, true, true))
        .await;
    let frame = c.nodes[1]
        .known_session(first)
        .await
        .expect("asked")
        .expect("held while finished")
        .signed()
        .to_frame_bytes();
    c.sign(c.request(b"finished second", Topology::Mesh, true, true))
        .await;
    assert_eq!(holds(&c.nodes[1], &[first]).await, 0, "forgotten");
    assert_eq!(
        c.nodes[1].usage().await.expect("usage").forgotten_sessions,
        1
    );
    let mut events = c.nodes[1].events();
    let replayer = c.network.add_node();
    replayer
        .send(c.nodes[1].peer_id(), Bytes::from(frame))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(holds(&c.nodes[1], &[first]).await, 0, "not back");
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, Event::SessionDiscovered { session } if session == first),
            "rediscovered"
        );
    }
    assert!(matches!(
        c.nodes[1].join_session(first).await,
        Err(CoordinatorError::SessionFinished(s)) if s == first
    ));
    // Not an offence: an honest relay may hold a late copy.
    assert_eq!(c.nodes[1].stats().peers_blocked, 0);
}
