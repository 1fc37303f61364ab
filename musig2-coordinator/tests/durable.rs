//! Crashes, restarts, graceful shutdown, a failing store and retention, between `Node`s on the
//! in-memory network under a paused tokio clock. Each node keeps its sessions in a
//! `MemoryStore` that outlives it, as a process's store file outlives the process.

use std::sync::Arc;
use std::time::Duration;

use musig2_coordinator::{
    AbortOrigin, Config, CoordinatorError, Event, MemoryStore, Node, Record, SessionRequest,
    SessionStore, StoredSession, store::StoreUsage,
};
use musig2_proto::{AbortReason, Body, SessionId, Topology};
use musig2_transport::{LinkFault, MemoryNetwork, PeerId};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use secp256k1::{Keypair, schnorr};

struct Cluster {
    config: Config,
    network: MemoryNetwork,
    keypairs: Vec<Keypair>,
    stores: Vec<MemoryStore>,
    nodes: Vec<Node>,
    peers: Vec<PeerId>,
}

fn config() -> Config {
    Config {
        dht_query_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

fn cluster(n: usize, seed: u64) -> Cluster {
    cluster_with(n, seed, config())
}

fn cluster_with(n: usize, seed: u64, config: Config) -> Cluster {
    let network = MemoryNetwork::new(seed);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let keypairs: Vec<Keypair> = (0..n).map(|_| Keypair::new(&mut rng)).collect();
    let stores: Vec<MemoryStore> = (0..n).map(|_| MemoryStore::new()).collect();
    let nodes: Vec<Node> = keypairs
        .iter()
        .zip(&stores)
        .map(|(kp, store)| {
            Node::spawn_with_store(
                Arc::new(network.add_node()),
                *kp,
                config.clone(),
                store.clone(),
            )
            .unwrap()
        })
        .collect();
    let peers = nodes.iter().map(Node::peer_id).collect();
    Cluster {
        config,
        network,
        keypairs,
        stores,
        nodes,
        peers,
    }
}

impl Cluster {
    fn request(&self, message: &[u8], topology: Topology, commit: bool) -> SessionRequest {
        let mut policy = self.nodes[0].default_policy();
        policy.topology = topology;
        policy.nonce_commitment = commit;
        policy.election = musig2_proto::ElectionMethod::FirstSigner;
        SessionRequest {
            signers: self.keypairs.iter().map(|k| k.public_key()).collect(),
            peers: self.peers.iter().map(|p| Some(*p)).collect(),
            messages: vec![musig2_proto::MessageToSign::new(message.to_vec())],
            document_digest: None,
            policy,
        }
    }

    /// Kills node `i` without shutdown (its frames in flight are lost) and starts it again on
    /// the same store.
    async fn crash_and_restart(&mut self, i: usize) {
        self.network.crash(self.peers[i]).unwrap();
        // Let the old node task see its transport close and stop.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let store = self.stores[i].clone();
        self.respawn(i, store);
    }

    /// Starts crashed node `i` again (same peer id and key) on `store`.
    fn respawn(&mut self, i: usize, store: impl SessionStore) {
        let transport = self.network.restart(self.peers[i]).unwrap();
        self.nodes[i] = Node::spawn_with_store(
            Arc::new(transport),
            self.keypairs[i],
            self.config.clone(),
            store,
        )
        .unwrap();
    }

    /// Node 2 hears nothing from the others: it joins, sends its round-1 message (if the round
    /// starts) and waits, mid-session. Returns the session.
    async fn start_with_node2_deaf(
        &self,
        message: &[u8],
        topology: Topology,
        commit: bool,
    ) -> SessionId {
        for from in [0, 1] {
            self.network.set_link_fault(
                self.peers[from],
                self.peers[2],
                LinkFault::none().with_drop(1.0),
            );
        }
        let id = self.nodes[0]
            .create_session(self.request(message, topology, commit))
            .await
            .unwrap();
        self.nodes[1].join_session(id).await.unwrap();
        self.nodes[2].join_session(id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        id
    }

    async fn aggregate_key(&self, id: SessionId) -> secp256k1::XOnlyPublicKey {
        let ann = self.nodes[0].discover_session(id).await.unwrap();
        musig2_core::KeyAggContext::new(&ann.signer_keys())
            .unwrap()
            .x_only_key()
    }
}

/// Every nonce and partial signature any node signed in a session, from the stores: no signer
/// sent two in one attempt.
fn assert_no_nonce_reuse(stored: &[StoredSession]) {
    use std::collections::{HashMap, HashSet};
    let mut nonces: HashMap<(u16, u16), HashSet<Vec<u8>>> = HashMap::new();
    let mut psigs: HashMap<(u16, u16), HashSet<Vec<u8>>> = HashMap::new();
    for s in stored {
        for e in &s.envelopes {
            let env = e.envelope();
            let signer = env.signer().as_usize() as u16;
            match env.body() {
                Body::Nonce {
                    attempt,
                    pub_nonces,
                } => {
                    nonces
                        .entry((signer, attempt.get()))
                        .or_default()
                        .insert(pub_nonces.iter().flat_map(|n| n.to_bytes()).collect());
                }
                Body::PartialSig {
                    attempt,
                    partial_sigs,
                    ..
                } => {
                    psigs
                        .entry((signer, attempt.get()))
                        .or_default()
                        .insert(partial_sigs.iter().flat_map(|p| p.to_bytes()).collect());
                }
                _ => {}
            }
        }
    }
    for (k, v) in nonces.iter().chain(psigs.iter()) {
        assert_eq!(v.len(), 1, "signer/attempt {k:?} signed {} values", v.len());
    }
}

#[tokio::test(start_paused = true)]
async fn a_signer_that_crashes_after_sending_its_nonce_restarts_and_the_session_signs() {
    for topology in [Topology::Mesh, Topology::Star] {
        for commit in [false, true] {
            let mut c = cluster(3, 7);
            let mut events = c.nodes[0].events();
            let id = c
                .start_with_node2_deaf(b"crash after nonce", topology, commit)
                .await;
            let before = c.stores[2]
                .load(&id)
                .unwrap()
                .expect("stored from the join on");
            assert!(
                before
                    .envelopes
                    .iter()
                    .any(|e| e.envelope().signer().as_usize() == 2
                        && matches!(
                            e.envelope().body(),
                            Body::Nonce { .. } | Body::NonceCommit { .. }
                        )),
                "node 2 had sent round-1 material before its crash"
            );
            c.network.clear_faults();
            c.crash_and_restart(2).await;
            let mut sigs = Vec::new();
            for node in &c.nodes {
                sigs.push(node.wait_for_signatures(id).await.unwrap());
            }
            assert!(sigs.iter().all(|s| *s == sigs[0]));
            schnorr::verify(
                &sigs[0][0],
                b"crash after nonce",
                &c.aggregate_key(id).await,
            )
            .unwrap();
            let mut restarted_by_2 = false;
            while let Ok(e) = events.try_recv() {
                assert!(!matches!(e, Event::Aborted { .. }), "{topology:?}: {e:?}");
                if let Event::AttemptStarted { signer, .. } = e {
                    restarted_by_2 |= signer.as_usize() == 2;
                }
            }
            assert!(restarted_by_2, "{topology:?} commit={commit}");
            let stored: Vec<StoredSession> = c
                .stores
                .iter()
                .filter_map(|s| s.load(&id).unwrap())
                .collect();
            assert_no_nonce_reuse(&stored);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_graceful_shutdown_ends_the_session_at_once_blaming_no_one() {
    let c = cluster(3, 8);
    // Node 2 never receives anything, so the session waits for the others' contributions.
    let id = c
        .start_with_node2_deaf(b"shutdown", Topology::Mesh, true)
        .await;
    let started = tokio::time::Instant::now();
    c.nodes[2].shutdown().await.unwrap();
    for node in &c.nodes[..2] {
        match node.wait_for_signatures(id).await {
            Err(CoordinatorError::Aborted {
                reason,
                blamed,
                origin,
                ..
            }) => {
                assert_eq!(reason, AbortReason::Cancelled);
                assert!(blamed.is_empty(), "{blamed:?}");
                assert_eq!(
                    origin,
                    AbortOrigin::Remote(musig2_proto::SignerIndex::new(2).unwrap())
                );
            }
            other => panic!("expected the shutdown's abort, got {other:?}"),
        }
    }
    // Well before the 30 s round deadline that would otherwise have ended it.
    assert!(started.elapsed() < Duration::from_secs(5));
    let stored = c.stores[2].load(&id).unwrap().unwrap();
    assert!(
        stored.outcome.is_some(),
        "the outcome is stored before the node stops"
    );
}

#[tokio::test(start_paused = true)]
async fn a_node_restarted_after_the_others_aborted_learns_the_end_and_blames_no_one() {
    let mut c = cluster(3, 9);
    let id = c
        .start_with_node2_deaf(b"dead session", Topology::Mesh, false)
        .await;
    c.network.crash(c.peers[2]).unwrap();
    // The others time out (node 2 was down: naming it is right).
    let err = c.nodes[0].wait_for_signatures(id).await.unwrap_err();
    assert!(matches!(err, CoordinatorError::Aborted { .. }));
    c.network.clear_faults();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let store = c.stores[2].clone();
    c.respawn(2, store);
    let mut events = c.nodes[2].events();
    match c.nodes[2].wait_for_signatures(id).await {
        Err(CoordinatorError::Aborted { origin, .. }) => {
            assert!(
                matches!(origin, AbortOrigin::Remote(_)),
                "the restarted node takes the others' word, it finds nothing itself: {origin:?}"
            );
        }
        other => panic!("expected the others' abort, got {other:?}"),
    }
    while let Ok(e) = events.try_recv() {
        if let Event::Aborted { origin, blamed, .. } = e {
            assert!(
                origin != AbortOrigin::Local || blamed.is_empty(),
                "the restarted node blamed {blamed:?} by its own finding"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_restarted_node_still_refuses_a_replayed_announcement_of_a_session_it_forgot() {
    // With room for one finished session, the second session's end forgets the first; the store
    // remembers its id. After a restart the announcement, still valid, replayed by anyone who
    // saw it, must not bring the session back (an auto-joining node would join it and, at the
    // deadline, name the other signers, who finished long ago, as holdouts).
    let cfg = Config {
        max_finished_sessions: 1,
        ..config()
    };
    let mut c = cluster_with(2, 41, cfg);
    let mut ids = Vec::new();
    for message in [b"first".as_slice(), b"second"] {
        let id = c.nodes[0]
            .create_session(c.request(message, Topology::Mesh, true))
            .await
            .unwrap();
        c.nodes[1].join_session(id).await.unwrap();
        c.nodes[1].wait_for_signatures(id).await.unwrap();
        if ids.is_empty() {
            let frame = c.nodes[1]
                .known_session(id)
                .await
                .unwrap()
                .expect("held while finished")
                .signed()
                .to_frame_bytes();
            ids.push((id, frame));
        }
    }
    let (first, frame) = ids.pop().expect("the first session");
    // Committed (a store read waits for the deferred commit).
    c.nodes[1].store_usage().await.unwrap();
    assert!(c.stores[1].load(&first).unwrap().is_none(), "forgotten");
    let remembered = c.stores[1].load_forgotten().unwrap();
    assert_eq!(remembered.len(), 1);
    assert_eq!(remembered[0].0, first);

    c.crash_and_restart(1).await;
    assert_eq!(c.nodes[1].usage().await.unwrap().forgotten_sessions, 1);
    let replayer = c.network.add_node();
    musig2_transport::Transport::send(&replayer, c.peers[1], frame.into())
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let held = c.nodes[1].sessions().await.unwrap();
    assert!(held.iter().all(|h| h.session != first), "not back");
    assert!(matches!(
        c.nodes[1].join_session(first).await,
        Err(CoordinatorError::SessionFinished(s)) if s == first
    ));

    // Once its announcement expires (plus the clock skew allowed) the id is dropped, in memory
    // and in the store.
    let expires_at_ms = remembered[0].1;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let wait = expires_at_ms.saturating_sub(now_ms) + c.config.max_clock_skew.as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(wait + 5_000)).await;
    assert_eq!(c.nodes[1].usage().await.unwrap().forgotten_sessions, 0);
    c.nodes[1].store_usage().await.unwrap();
    assert!(c.stores[1].load_forgotten().unwrap().is_empty());
}

mockall::mock! {
    Store {}
    impl SessionStore for Store {
        fn commit(&mut self, records: &[Record]) -> musig2_coordinator::Result<()>;
        fn load_all(&self) -> musig2_coordinator::Result<Vec<StoredSession>>;
        fn load(&self, session: &SessionId) -> musig2_coordinator::Result<Option<StoredSession>>;
        fn remove(&mut self, sessions: &[SessionId]) -> musig2_coordinator::Result<()>;
        fn usage(&self) -> musig2_coordinator::Result<StoreUsage>;
        fn is_durable(&self) -> bool;
    }
}

#[tokio::test(start_paused = true)]
async fn retention_keeps_memory_and_store_flat_over_many_sessions() {
    let network = MemoryNetwork::new(10);
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let keypairs: Vec<Keypair> = (0..2).map(|_| Keypair::new(&mut rng)).collect();
    let stores: Vec<MemoryStore> = (0..2).map(|_| MemoryStore::new()).collect();
    let cfg = Config {
        max_finished_sessions: 32,
        // Shorter than the DHT records' lifetime (join window + session), so their removal is
        // the node's doing.
        finished_session_retention: Duration::from_secs(60),
        ..config()
    };
    let nodes: Vec<Node> = keypairs
        .iter()
        .zip(&stores)
        .map(|(kp, s)| {
            Node::spawn_with_store(Arc::new(network.add_node()), *kp, cfg.clone(), s.clone())
                .unwrap()
        })
        .collect();
    let mut policy = nodes[0].default_policy();
    policy.nonce_commitment = false;
    let mut peak = 0;
    let mut last = SessionId::from_bytes([0; 32]);
    for round in 0..2000u32 {
        let request = SessionRequest {
            signers: keypairs.iter().map(|k| k.public_key()).collect(),
            peers: nodes.iter().map(|n| Some(n.peer_id())).collect(),
            messages: vec![musig2_proto::MessageToSign::new(
                round.to_be_bytes().to_vec(),
            )],
            document_digest: None,
            policy,
        };
        // Paced as a busy honest creator (announcements have a byte budget per peer).
        tokio::time::sleep(Duration::from_millis(20)).await;
        let id = nodes[0].create_session(request).await.unwrap();
        nodes[1].join_session(id).await.unwrap();
        nodes[0].wait_for_signatures(id).await.unwrap();
        nodes[1].wait_for_signatures(id).await.unwrap();
        last = id;
        for (node, store) in nodes.iter().zip(&stores) {
            let usage = node.usage().await.unwrap();
            peak = peak.max(usage.sessions);
            assert!(usage.sessions <= 33, "round {round}: {usage:?}");
            assert!(store.usage().unwrap().sessions <= 33, "round {round}");
        }
    }
    assert!(peak >= 32, "the bound was reached: {peak}");
    // Past the retention time everything finished is forgotten: in memory, in the store, and
    // the creator's DHT records.
    tokio::time::sleep(Duration::from_secs(61)).await;
    for (node, store) in nodes.iter().zip(&stores) {
        assert_eq!(node.usage().await.unwrap().sessions, 0);
        assert_eq!(store.usage().unwrap().sessions, 0);
    }
    let probe = network.add_node();
    let found = musig2_transport::Transport::dht_get(
        &probe,
        musig2_coordinator::dht_key(&last),
        musig2_transport::RecordValidator::new(|_, _| true),
    )
    .await;
    assert!(found.is_err(), "the creator's record is gone from the DHT");
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_commit_sends_nothing_and_aborts_locally() {
    let network = MemoryNetwork::new(11);
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let keypairs: Vec<Keypair> = (0..2).map(|_| Keypair::new(&mut rng)).collect();
    let node0 = Node::spawn(Arc::new(network.add_node()), keypairs[0], config());
    let mut store = MockStore::new();
    store
        .expect_load_all()
        .times(1)
        .returning(|| Ok(Vec::new()));
    store.expect_is_durable().return_const(false);
    // Exactly one commit is tried: the join's records. It fails; nothing else is stored after.
    store
        .expect_commit()
        .withf(|records| matches!(records.first(), Some(Record::Session { .. })))
        .times(1)
        .returning(|_| Err(CoordinatorError::Store("disk full".into())));
    let node1 =
        Node::spawn_with_store(Arc::new(network.add_node()), keypairs[1], config(), store).unwrap();
    let mut policy = node0.default_policy();
    policy.nonce_commitment = false;
    let id = node0
        .create_session(SessionRequest {
            signers: keypairs.iter().map(|k| k.public_key()).collect(),
            peers: vec![Some(node0.peer_id()), Some(node1.peer_id())],
            messages: vec![musig2_proto::MessageToSign::new(b"no disk".to_vec())],
            document_digest: None,
            policy,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The caller is told its join was not stored, not "joined".
    match node1.join_session(id).await {
        Err(CoordinatorError::Store(e)) => assert!(e.contains("disk full"), "{e}"),
        other => panic!("expected the join to fail on the store, got {other:?}"),
    }
    match node1.wait_for_signatures(id).await {
        Err(CoordinatorError::Store(_))
        | Err(CoordinatorError::Aborted {
            reason: AbortReason::Internal,
            ..
        }) => {}
        other => panic!("expected a store failure, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Node 0 never heard node 1's join (it would have been sent with the failed records).
    let health = node0.health(id).await.unwrap();
    assert_eq!(health.joined, 1, "{health:?}");
    assert_eq!(node1.stats().frames_out, 0);
    // The node is alive (an unexpected store call would have panicked its task).
    assert!(node1.usage().await.is_ok());
}

/// A store that kills its node at its `crash_at`-th commit: the transport goes down and that
/// commit's records are lost, as when a process dies mid-write.
#[derive(Clone)]
struct CrashingStore {
    inner: MemoryStore,
    commits: Arc<std::sync::atomic::AtomicUsize>,
    crash_at: usize,
    network: MemoryNetwork,
    peer: PeerId,
}

impl SessionStore for CrashingStore {
    fn commit(&mut self, records: &[Record]) -> musig2_coordinator::Result<()> {
        let n = self
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if n == self.crash_at {
            let _ = self.network.crash(self.peer);
            return Err(CoordinatorError::Store("killed".into()));
        }
        self.inner.commit(records)
    }
    fn load_all(&self) -> musig2_coordinator::Result<Vec<StoredSession>> {
        self.inner.load_all()
    }
    fn load(&self, session: &SessionId) -> musig2_coordinator::Result<Option<StoredSession>> {
        self.inner.load(session)
    }
    fn remove(&mut self, sessions: &[SessionId]) -> musig2_coordinator::Result<()> {
        self.inner.remove(sessions)
    }
    fn usage(&self) -> musig2_coordinator::Result<StoreUsage> {
        self.inner.usage()
    }
}

/// One session in which `victim` dies at its `crash_at`-th store commit and restarts from its
/// store (its operator joins again if the store never got the session). Returns whether the
/// crash happened.
async fn run_with_crash(
    topology: Topology,
    commit: bool,
    victim: usize,
    crash_at: usize,
    seed: u64,
) -> bool {
    let mut c = cluster(3, seed);
    let commits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // The victim runs on a crashing wrapper around its store.
    c.network.crash(c.peers[victim]).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let crashing = CrashingStore {
        inner: c.stores[victim].clone(),
        commits: commits.clone(),
        crash_at,
        network: c.network.clone(),
        peer: c.peers[victim],
    };
    c.respawn(victim, crashing);
    let message = format!("crash {topology:?} {commit} {victim} {crash_at}");
    let id = c.nodes[0]
        .create_session(c.request(message.as_bytes(), topology, commit))
        .await;
    let id = match id {
        Ok(id) => id,
        // The creator died before its session existed anywhere: nothing to check.
        Err(_) => return true,
    };
    for i in 1..3 {
        let _ = c.nodes[i].join_session(id).await;
    }
    // Wait until the victim died or everyone finished.
    for _ in 0..200 {
        if commits.load(std::sync::atomic::Ordering::SeqCst) >= crash_at {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let crashed = commits.load(std::sync::atomic::Ordering::SeqCst) >= crash_at;
    if crashed {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let store = c.stores[victim].clone();
        c.respawn(victim, store);
        if c.stores[victim].load(&id).unwrap().is_none() {
            c.nodes[victim].join_session(id).await.unwrap();
        }
    }
    let what = format!("{topology:?} commit={commit} victim={victim} crash_at={crash_at}");
    let mut sigs = Vec::new();
    let mut events: Vec<_> = c.nodes.iter().map(|n| n.events()).collect();
    for (i, node) in c.nodes.iter().enumerate() {
        match node.wait_for_signatures(id).await {
            Ok(sig) => sigs.push(sig),
            Err(e) => {
                for (j, rx) in events.iter_mut().enumerate() {
                    while let Ok(ev) = rx.try_recv() {
                        eprintln!("node {j}: {ev:?}");
                    }
                }
                for s in &c.stores {
                    if let Some(st) = s.load(&id).unwrap() {
                        eprintln!("store: attempt {:?} outcome {:?}", st.attempt, st.outcome);
                        for e in &st.envelopes {
                            eprintln!(
                                "   {} {} {}",
                                e.envelope().signer().as_usize(),
                                e.envelope().seq().get(),
                                e.envelope().body().kind()
                            );
                        }
                    }
                }
                panic!("{what}: node {i}: {e}")
            }
        }
    }
    assert!(sigs.iter().all(|s| *s == sigs[0]), "{what}");
    schnorr::verify(&sigs[0][0], message.as_bytes(), &c.aggregate_key(id).await).unwrap();
    let stored: Vec<StoredSession> = c
        .stores
        .iter()
        .filter_map(|s| s.load(&id).unwrap())
        .collect();
    assert_no_nonce_reuse(&stored);
    crashed
}

#[tokio::test(start_paused = true)]
async fn a_node_killed_at_every_store_commit_restarts_and_the_session_signs() {
    let mut runs = 0;
    for topology in [Topology::Mesh, Topology::Star] {
        for commit in [false, true] {
            for victim in [0, 2] {
                let mut crash_at = 1;
                // Until a run no longer reaches the crash point: every commit boundary tried.
                while run_with_crash(topology, commit, victim, crash_at, 100 + crash_at as u64)
                    .await
                {
                    crash_at += 1;
                    runs += 1;
                    assert!(crash_at < 64, "a session should need few commits");
                }
            }
        }
    }
    assert!(runs >= 16, "{runs} crash points tried");
}

#[tokio::test(start_paused = true)]
async fn a_transcript_exports_verifies_offline_and_imports_finished_or_resumes_unfinished() {
    let mut c = cluster(3, 12);
    // Node 2 hears nothing, so the session is unfinished when node 2 exports it.
    let id = c
        .start_with_node2_deaf(b"transcripts", Topology::Mesh, true)
        .await;
    let unfinished = c.nodes[2].export_transcript(id).await.unwrap();
    let file = unfinished.encode();
    let limits = musig2_coordinator::TranscriptLimits::default();
    let decoded = musig2_coordinator::Transcript::decode(&file, &limits).unwrap();
    let report = decoded.verify(&limits).unwrap();
    assert!(report.proofs.is_empty(), "{report}");
    // Node 2 loses its store entirely and comes back from the transcript alone.
    c.network.crash(c.peers[2]).unwrap();
    c.network.clear_faults();
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.stores[2] = MemoryStore::new();
    let store = c.stores[2].clone();
    c.respawn(2, store);
    assert_eq!(c.nodes[2].import_transcript(decoded).await.unwrap(), id);
    let mut sigs = Vec::new();
    for node in &c.nodes {
        sigs.push(node.wait_for_signatures(id).await.unwrap());
    }
    assert!(sigs.iter().all(|s| *s == sigs[0]));
    let stored: Vec<StoredSession> = c
        .stores
        .iter()
        .filter_map(|s| s.load(&id).unwrap())
        .collect();
    assert_no_nonce_reuse(&stored);
    // The finished transcript verifies with a valid signature and imports as finished.
    let finished = c.nodes[1].export_transcript(id).await.unwrap();
    let report = finished.verify(&limits).unwrap();
    assert_eq!(
        report.signatures.as_ref().map(|(_, valid)| *valid),
        Some(true),
        "{report}"
    );
    let network = MemoryNetwork::new(13);
    let auditor = Node::spawn(Arc::new(network.add_node()), c.keypairs[1], config());
    assert_eq!(
        auditor.import_transcript(finished.clone()).await.unwrap(),
        id
    );
    assert_eq!(auditor.wait_for_signatures(id).await.unwrap(), sigs[0]);
    // Twice is refused; a node whose key is not in the session refuses it.
    assert!(matches!(
        auditor.import_transcript(finished.clone()).await,
        Err(CoordinatorError::SessionExists(_))
    ));
    let stranger = Node::spawn(
        Arc::new(network.add_node()),
        Keypair::new(&mut ChaCha20Rng::seed_from_u64(99)),
        config(),
    );
    assert!(matches!(
        stranger.import_transcript(finished).await,
        Err(CoordinatorError::NotASigner(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_sign_on_redb_stores_and_survive_a_reopen() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("musig2_coordinator=warn")
        .with_test_writer()
        .try_init();
    let network = MemoryNetwork::new(14);
    let mut rng = ChaCha20Rng::seed_from_u64(14);
    let keypairs: Vec<Keypair> = (0..2).map(|_| Keypair::new(&mut rng)).collect();
    let dir = std::env::temp_dir().join(format!("musig2-durable-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let paths: Vec<_> = (0..2).map(|i| dir.join(format!("node{i}.redb"))).collect();
    let limits = config().limits;
    // 60 sessions of one creator announced at once wait to be joined together.
    let cfg = Config {
        max_unjoined_per_creator: 64,
        ..config()
    };
    let nodes: Vec<Node> = keypairs
        .iter()
        .zip(&paths)
        .map(|(kp, path)| {
            let store = musig2_coordinator::RedbStore::open(path, limits).unwrap();
            Node::spawn_with_store(Arc::new(network.add_node()), *kp, cfg.clone(), store).unwrap()
        })
        .collect();
    let mut policy = nodes[0].default_policy();
    policy.nonce_commitment = false;
    let mut tasks = Vec::new();
    for round in 0..60u32 {
        let request = SessionRequest {
            signers: keypairs.iter().map(|k| k.public_key()).collect(),
            peers: nodes.iter().map(|n| Some(n.peer_id())).collect(),
            messages: vec![musig2_proto::MessageToSign::new(
                round.to_be_bytes().to_vec(),
            )],
            document_digest: None,
            policy,
        };
        let nodes = nodes.clone();
        tasks.push(tokio::spawn(async move {
            let id = nodes[0].create_session(request).await.unwrap();
            nodes[1].join_session(id).await.unwrap();
            let a = nodes[0].wait_for_signatures(id).await.unwrap();
            let b = nodes[1].wait_for_signatures(id).await.unwrap();
            assert_eq!(a, b);
            id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
    drop(nodes);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Reopened, each store holds every session, finished and signed.
    for path in &paths {
        let store = musig2_coordinator::RedbStore::open(path, limits).unwrap();
        for id in &ids {
            let stored = store.load(id).unwrap().expect("stored");
            assert!(matches!(
                stored.outcome,
                Some((musig2_coordinator::Outcome::Signed(_), _))
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A creator that restarts before its deferred DHT put (ADR 0013) schedules it again from its
/// store: signer 2, whose direct copy was lost, still finds the session by id and it signs.
#[tokio::test(start_paused = true)]
async fn a_creator_restarted_before_its_deferred_dht_put_still_puts_it() {
    use musig2_transport::{RecordValidator, Transport};
    let in_dht = |network: MemoryNetwork, id: SessionId| async move {
        network
            .add_node()
            .dht_get(
                musig2_coordinator::dht_key(&id),
                RecordValidator::new(|_, _| true),
            )
            .await
            .is_ok()
    };
    let mut c = cluster(3, 70);
    for from in [0, 1] {
        c.network
            .set_link_fault(c.peers[from], c.peers[2], LinkFault::none().with_drop(1.0));
    }
    let id = c.nodes[0]
        .create_session(c.request(b"restart before the put", Topology::Mesh, false))
        .await
        .unwrap();
    c.nodes[1].join_session(id).await.unwrap();
    c.crash_and_restart(0).await;
    // The old node's put never happens (it is gone); the restarted one's comes `after` its start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!in_dht(c.network.clone(), id).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(in_dht(c.network.clone(), id).await);
    assert_eq!(c.nodes[0].stats().dht_puts, 1);
    for from in [0, 1] {
        c.network
            .set_link_fault(c.peers[from], c.peers[2], LinkFault::none());
    }
    c.nodes[2].join_session(id).await.unwrap();
    let mut sigs = Vec::new();
    for node in &c.nodes {
        sigs.push(node.wait_for_signatures(id).await.unwrap()[0]);
    }
    assert!(sigs.iter().all(|s| *s == sigs[0]));
    schnorr::verify(
        &sigs[0],
        b"restart before the put",
        &c.aggregate_key(id).await,
    )
    .unwrap();
}
