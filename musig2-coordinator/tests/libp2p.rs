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
            message: message.to_vec(),
            tweaks: Vec::new(),
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
            assert_eq!(found.announcement().message, message);
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
            futures::future::join_all(self.nodes.iter().map(|n| n.wait_for_signature(session)))
                .await;
        let signatures: Vec<schnorr::Signature> = signatures
            .into_iter()
            .map(|s| s.expect("signature"))
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
