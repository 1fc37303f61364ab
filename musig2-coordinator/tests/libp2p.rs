//! Full sessions over libp2p on 127.0.0.1: the creator lists no peer but its own, so every other
//! signer must find the announcement in the DHT by session id; the signature must be identical
//! on every node and verify under the aggregate key with `secp256k1::schnorr::verify`.

use std::sync::Arc;
use std::time::Duration;

use musig2_coordinator::{
    Config, CoordinatorError, Node, SessionRequest, announcement_record_validator, dht_key,
};
use musig2_core::KeyAggContext;
use musig2_proto::{Limits, SessionId, SignedAnnouncement, Topology};
use musig2_transport::{Libp2pConfig, Libp2pTransport, RecordValidator, Transport};
use secp256k1::{Keypair, schnorr};

/// Generous bound on a whole test; a healthy run takes well under a second per session.
const TEST_TIMEOUT: Duration = Duration::from_secs(50);

struct Network {
    nodes: Vec<Node>,
    keypairs: Vec<Keypair>,
}

impl Network {
    async fn start(n: usize) -> Network {
        let config = Config::default();
        let transports = Libp2pTransport::spawn_local_network(
            n,
            Libp2pConfig {
                record_validator: Some(announcement_record_validator(config.limits)),
                ..Libp2pConfig::default()
            },
        )
        .await
        .expect("loopback network");
        for t in &transports {
            for addr in t.listen_addrs() {
                assert!(
                    addr.to_string().starts_with("/ip4/127.0.0.1/"),
                    "listening off loopback: {addr}"
                );
            }
        }
        let keypairs: Vec<Keypair> = (0..n).map(|_| Keypair::new(&mut rand::rng())).collect();
        let nodes = transports
            .into_iter()
            .zip(&keypairs)
            .map(|(t, kp)| Node::spawn(Arc::new(t) as Arc<dyn Transport>, *kp, config.clone()))
            .collect();
        Network { nodes, keypairs }
    }

    /// Node 0 creates a session listing only its own peer; the others get nothing but the id.
    async fn create(
        &self,
        topology: Topology,
        nonce_commitment: bool,
        message: &[u8],
    ) -> SessionId {
        let n = self.nodes.len();
        let mut peers = vec![None; n];
        peers[0] = Some(self.nodes[0].peer_id());
        let mut policy = self.nodes[0].default_policy();
        policy.topology = topology;
        policy.nonce_commitment = nonce_commitment;
        let request = SessionRequest {
            signers: self.keypairs.iter().map(Keypair::public_key).collect(),
            peers,
            messages: vec![musig2_proto::MessageToSign::new(message.to_vec())],
            document_digest: None,
            policy,
        };
        self.nodes[0]
            .create_session(request)
            .await
            .expect("create session")
    }

    /// Runs a whole session and checks the outcome on every node; returns the signature.
    async fn sign(&self, topology: Topology, nonce_commitment: bool) -> schnorr::Signature {
        let message = format!("libp2p test, {topology:?}, commitments {nonce_commitment}");
        let message = message.as_bytes();
        let session = self.create(topology, nonce_commitment, message).await;

        // Nobody was told about the session directly.
        for node in &self.nodes[1..] {
            assert!(
                matches!(
                    node.health(session).await,
                    Err(CoordinatorError::UnknownSession(id)) if id == session
                ),
                "a signer knew the session before looking it up"
            );
        }
        // The announcement is in the DHT, readable from any node with a strict validator.
        let limits = Limits::default();
        let strict = RecordValidator::new(move |key, value| {
            key == dht_key(&session).as_slice()
                && SignedAnnouncement::decode(value, &limits)
                    .and_then(|a| a.verify_id(&session, unix_now_ms(), &limits))
                    .is_ok()
        });
        let last = self.nodes.last().expect("nodes");
        let record = last
            .transport()
            .dht_get(dht_key(&session), strict)
            .await
            .expect("announcement in the DHT");
        let stored = SignedAnnouncement::decode(&record, &limits).expect("decodes");
        assert_eq!(stored.session_id(), session);

        // Every other signer discovers the session by id, then joins.
        let discovered = futures::future::join_all(
            self.nodes[1..]
                .iter()
                .map(|node| node.discover_session(session)),
        )
        .await;
        for (i, found) in discovered.into_iter().enumerate() {
            let found = found.expect("discovered through the DHT");
            assert_eq!(found.session_id(), session);
            assert_eq!(found.announcement().messages[0].message, message);
            assert!(found.index_of(&self.keypairs[i + 1].public_key()).is_some());
        }
        let joined = futures::future::join_all(
            self.nodes[1..]
                .iter()
                .map(|node| node.join_session(session)),
        )
        .await;
        for result in joined {
            result.expect("join");
        }

        let signatures =
            futures::future::join_all(self.nodes.iter().map(|n| n.wait_for_signatures(session)))
                .await;
        let signatures: Vec<schnorr::Signature> = signatures
            .into_iter()
            .map(|s| {
                let sigs = s.expect("signature");
                assert_eq!(sigs.len(), 1, "one message, one signature");
                sigs[0]
            })
            .collect();
        let first = signatures[0];
        assert!(
            signatures.iter().all(|s| *s == first),
            "nodes disagree on the signature"
        );
        let keys: Vec<_> = self.keypairs.iter().map(Keypair::public_key).collect();
        let aggregate = KeyAggContext::new(&keys).expect("key agg").x_only_key();
        schnorr::verify(&first, message, &aggregate).expect("valid BIP340 signature");
        assert!(
            schnorr::verify(&first, b"another message", &aggregate).is_err(),
            "the signature must not verify for another message"
        );
        first
    }

    async fn shutdown(self) {
        for node in &self.nodes {
            node.shutdown().await.expect("shutdown");
        }
    }
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn within_timeout(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_signers_mesh_over_dht() {
    within_timeout(async {
        let net = Network::start(3).await;
        net.sign(Topology::Mesh, true).await;
        // A second session on the same network gets a fresh nonce, hence a fresh signature.
        let a = net.sign(Topology::Mesh, false).await;
        let b = net.sign(Topology::Mesh, false).await;
        assert_ne!(a, b, "two sessions produced the same signature");
        net.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_signers_mesh_over_dht() {
    within_timeout(async {
        let net = Network::start(10).await;
        net.sign(Topology::Mesh, true).await;
        net.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_signers_star_over_dht() {
    within_timeout(async {
        let net = Network::start(10).await;
        net.sign(Topology::Star, true).await;
        net.sign(Topology::Star, false).await;
        net.shutdown().await;
    })
    .await;
}

/// An announcement naming `signers`, created by `creator` (which must be among them), valid for
/// an hour.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn announcement_by(creator: &Keypair, signers: Vec<secp256k1::PublicKey>) -> SignedAnnouncement {
    let now = unix_ms();
    let creator_index = signers
        .iter()
        .position(|k| *k == creator.public_key())
        .unwrap();
    musig2_proto::Announcement {
        signers: signers
            .into_iter()
            .map(|key| musig2_proto::SignerInfo { key, peer_id: None })
            .collect(),
        messages: vec![musig2_proto::MessageToSign::new(b"flood".to_vec())],
        document_digest: None,
        creator: musig2_proto::SignerIndex::try_from(creator_index).unwrap(),
        policy: musig2_proto::Policy::default(),
        salt: rand::random(),
        created_at_ms: now,
        expires_at_ms: now + 3_600_000,
    }
    .sign(creator, &Limits::default())
    .unwrap()
}

/// Outsiders storing records with a ten-year TTL cannot fill the node's DHT store: each creator
/// key gets a small share, other peers' records never take the room kept for the node's own
/// puts, and the node can still announce its own session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_record_flood_cannot_stop_a_node_announcing() {
    within_timeout(async {
        let config = Config::default();
        let victim_transport = Libp2pConfig {
            record_validator: Some(announcement_record_validator(config.limits)),
            max_records: 64,
            reserved_local_records: 16,
            max_records_per_owner: 4,
            ..Libp2pConfig::default()
        };
        let mut transports = Libp2pTransport::spawn_local_network_with(vec![
            victim_transport,
            Libp2pConfig::default(),
        ])
        .await
        .expect("loopback network");
        let attacker = Arc::new(transports.pop().unwrap());
        let victim_key = Keypair::new(&mut rand::rng());
        let victim = Node::spawn(
            Arc::new(transports.pop().unwrap()) as Arc<dyn Transport>,
            victim_key,
            config,
        );
        // 20 creator keys × 6 records each = 120 records, far more than the 64 the store holds.
        let ten_years = Duration::from_secs(10 * 365 * 24 * 3600);
        let mut stored = 0;
        for _ in 0..20 {
            let sybil = Keypair::new(&mut rand::rng());
            for _ in 0..6 {
                let signed =
                    announcement_by(&sybil, vec![victim_key.public_key(), sybil.public_key()]);
                let id = signed
                    .verify(unix_ms(), &Limits::default())
                    .expect("a valid announcement")
                    .session_id();
                if attacker
                    .dht_put(dht_key(&id), signed.to_frame_bytes(), ten_years)
                    .await
                    .is_ok()
                {
                    stored += 1;
                }
            }
        }
        assert!(stored > 0, "the attacker's own store takes its records");
        // The victim still announces (its local put has room kept for it) and the attacker's
        // store holds a copy, so the put reaches its quorum.
        let helper = Keypair::new(&mut rand::rng());
        let request = SessionRequest {
            signers: vec![victim_key.public_key(), helper.public_key()],
            peers: Vec::new(),
            messages: vec![musig2_proto::MessageToSign::new(
                b"still announcing".to_vec(),
            )],
            document_digest: None,
            policy: victim.default_policy(),
        };
        let session = victim
            .create_session(request)
            .await
            .expect("the flood did not fill the room kept for our own records");
        let found = attacker
            .dht_get(dht_key(&session), RecordValidator::accept_all())
            .await
            .expect("the announcement is in the DHT");
        assert!(!found.is_empty());
    })
    .await;
}
