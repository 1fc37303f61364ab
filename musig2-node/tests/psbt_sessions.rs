//! PSBTs signed over the network, one multi-message session per PSBT.
//!
//! On the in-memory network under a paused clock: the BIP373 vectors' three participants sign
//! each "participant pubkeys only" PSBT; a 24-input PSBT signs in one session; a member
//! refuses a session that is not the PSBT it reviewed; and (property) a k-message session
//! verifies exactly what k single-message sessions do. Through the binary on loopback libp2p:
//! `session create --psbt`, `session show/sign --psbt` and `psbt finalize --session`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::psbt::Psbt;
use bitcoin::{Amount, Transaction};
use musig2_bitcoin::fixtures::{multi_input_psbt, prevouts, verify_extracted};
use musig2_coordinator::{Config, Node};
use musig2_core::{KeyAggContext, Tweak};
use musig2_node::NodeError;
use musig2_node::bitcoin::finalize_with_signatures;
use musig2_node::psbt_session::{PsbtSession, SessionTerms};
use musig2_proto::{Limits, MessageToSign, Policy, SessionId, Topology};
use musig2_transport::MemoryNetwork;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use secp256k1::{Keypair, PublicKey, XOnlyPublicKey, schnorr};

mod common;

use common::{Running, bip373, cli_in, participant_keys, psbt_of, spend_cases};

/// Nodes on one in-memory network, by public key.
struct Signers {
    _network: MemoryNetwork,
    nodes: BTreeMap<PublicKey, Node>,
}

impl Signers {
    fn spawn(keypairs: &[Keypair], seed: u64) -> Signers {
        let network = MemoryNetwork::new(seed);
        let config = Config {
            dht_query_timeout: Duration::from_secs(5),
            ..Config::default()
        };
        let nodes = keypairs
            .iter()
            .map(|kp| {
                let node = Node::spawn(Arc::new(network.add_node()), *kp, config.clone());
                (kp.public_key(), node)
            })
            .collect();
        Signers {
            _network: network,
            nodes,
        }
    }

    fn node(&self, key: &PublicKey) -> &Node {
        &self.nodes[key]
    }

    fn policy(&self, topology: Topology) -> Policy {
        let any = self.nodes.values().next().expect("a node");
        Policy {
            topology,
            ..any.default_policy()
        }
    }

    /// `creator` announces `request`; every other signer checks the announcement against the
    /// PSBT it holds before joining. Returns the session and every node's signatures, which
    /// must be the same.
    async fn sign(
        &self,
        creator: &PublicKey,
        request: musig2_coordinator::SessionRequest,
        psbt: &Psbt,
    ) -> (SessionId, Vec<schnorr::Signature>) {
        let signers = request.signers.clone();
        let id = self
            .node(creator)
            .create_session(request)
            .await
            .expect("create");
        for key in signers.iter().filter(|k| *k != creator) {
            let node = self.node(key);
            let announcement = node.discover_session(id).await.expect("announced");
            let terms = SessionTerms::of_announcement(&announcement).expect("terms");
            PsbtSession::new(psbt, key, &Limits::default())
                .expect("plan")
                .check(&terms)
                .expect("the session is the PSBT this signer reviewed");
            node.join_session(id).await.expect("join");
        }
        let mut all = Vec::new();
        for key in &signers {
            all.push(
                self.node(key)
                    .wait_for_signatures(id)
                    .await
                    .expect("signatures"),
            );
        }
        assert!(
            all.iter().all(|s| *s == all[0]),
            "every signer holds the same"
        );
        (id, all.swap_remove(0))
    }

    /// Signs every input `creator` signs in `psbt` in one session, then finalizes, extracts
    /// and checks the transaction with `bitcoin`'s and `miniscript`'s own code.
    async fn sign_psbt(
        &self,
        creator: &PublicKey,
        psbt: &Psbt,
        topology: Topology,
    ) -> (PsbtSession, Transaction) {
        let session = PsbtSession::new(psbt, creator, &Limits::default()).expect("plan");
        let peers = session
            .terms
            .signers
            .iter()
            .map(|k| Some(self.node(k).peer_id()))
            .collect();
        let request = session
            .request(peers, self.policy(topology))
            .expect("request");
        let (_, signatures) = self.sign(creator, request, psbt).await;
        assert_eq!(signatures.len(), session.entries.len(), "one per input");
        for (sig, entry) in signatures.iter().zip(&session.entries) {
            schnorr::verify(sig, &entry.message, &entry.verify_key)
                .expect("the input's signature verifies under its own key and sighash");
        }
        let bytes: Vec<[u8; 64]> = signatures.iter().map(|s| s.to_byte_array()).collect();
        let spent = prevouts(psbt).expect("prevouts");
        let (_, tx) =
            finalize_with_signatures(psbt.clone(), &session.entries, &bytes).expect("finalize");
        verify_extracted(&tx, &spent, &session.entries).expect("the transaction verifies");
        (session, tx)
    }
}

fn vector_keypairs() -> Vec<Keypair> {
    bip373()
        .participants
        .iter()
        .map(|p| {
            let (secret, _) = participant_keys(p);
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(secret, &mut bytes).expect("hex");
            Keypair::from_secret_bytes(bytes).expect("key")
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_bip373_participants_sign_each_pubkeys_only_psbt_over_the_network() {
    let v = bip373();
    let keypairs = vector_keypairs();
    let signers = Signers::spawn(&keypairs, 373);
    for (n, case) in spend_cases(&v, "With participant pubkeys only")
        .into_iter()
        .enumerate()
    {
        let psbt = psbt_of(case);
        let topology = [Topology::Mesh, Topology::Star][n % 2];
        // Each participant in turn creates the session.
        let creator = keypairs[n % keypairs.len()].public_key();
        let (session, tx) = signers.sign_psbt(&creator, &psbt, topology).await;
        assert!(!session.entries.is_empty(), "{}", case.case);
        for entry in &session.entries {
            assert!(
                !tx.input[entry.input_index].witness.is_empty(),
                "{}: input {} has its witness",
                case.case,
                entry.input_index
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_24_input_psbt_signs_in_one_session() {
    let mut rng = ChaCha20Rng::seed_from_u64(24);
    let keypairs: Vec<Keypair> = (0..3).map(|_| Keypair::new(&mut rng)).collect();
    let keys: Vec<PublicKey> = keypairs.iter().map(Keypair::public_key).collect();
    let psbt = multi_input_psbt(&keys, 24).expect("fixture").psbt;
    for topology in [Topology::Star, Topology::Mesh] {
        let signers = Signers::spawn(&keypairs, 24);
        let (session, tx) = signers.sign_psbt(&keys[1], &psbt, topology).await;
        assert_eq!(session.entries.len(), 24);
        assert_eq!(tx.input.len(), 24);
        for key in &keys {
            let held = signers.node(key).sessions().await.expect("sessions");
            assert_eq!(
                held.len(),
                1,
                "{topology:?}: one session signed every input"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_member_refuses_a_session_that_is_not_the_psbt_it_reviewed() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let keypairs: Vec<Keypair> = (0..3).map(|_| Keypair::new(&mut rng)).collect();
    let keys: Vec<PublicKey> = keypairs.iter().map(Keypair::public_key).collect();
    let reviewed = multi_input_psbt(&keys, 12).expect("fixture").psbt;
    let signers = Signers::spawn(&keypairs, 7);
    let limits = Limits::default();
    let honest = PsbtSession::new(&reviewed, &keys[0], &limits).expect("plan");
    let member = PsbtSession::new(&reviewed, &keys[2], &limits).expect("plan");

    // Each forgery the creator could announce, and what the member's check names.
    let mut paying_more = reviewed.clone();
    paying_more.unsigned_tx.output[0].value += Amount::from_sat(1);
    let other_psbt = PsbtSession::new(&paying_more, &keys[0], &limits).expect("plan");
    let mut swapped = honest.clone();
    swapped.terms.messages[3].0 = other_psbt.terms.messages[3].0.clone();
    let mut retweaked = honest.clone();
    retweaked.terms.messages[0].1.pop();
    let mut dropped = honest.clone();
    dropped.terms.messages.pop();
    let mut undigested = honest.clone();
    undigested.terms.document_digest = None;
    let cases = [
        (other_psbt, "document digest"),
        (swapped, "input 3 is not the input's sighash"),
        (retweaked, "tweaks for input 0"),
        (dropped, "signs 11 messages"),
        (undigested, "no document digest"),
    ];
    // What the member sees of a session the creator announces with these terms.
    let announce = |terms: &PsbtSession| {
        let request = terms
            .request(Vec::new(), signers.policy(Topology::Mesh))
            .expect("request");
        let (creator, member) = (signers.node(&keys[0]), signers.node(&keys[2]));
        async move {
            let id = creator.create_session(request).await.expect("create");
            let announced = member.discover_session(id).await.expect("announced");
            SessionTerms::of_announcement(&announced).expect("terms")
        }
    };
    for (forged, named) in &cases {
        match member.check(&announce(forged).await) {
            Err(NodeError::Rejected(why)) => assert!(why.contains(named), "{named}: {why}"),
            other => panic!("{named}: the forgery passed the check: {other:?}"),
        }
    }
    // The honest session passes the same check.
    member
        .check(&announce(&honest).await)
        .expect("the reviewed PSBT's session");
}

/// For every signature and every (message, key) pair: whether it verifies.
fn verification_matrix(
    signatures: &[schnorr::Signature],
    messages: &[(Vec<u8>, XOnlyPublicKey)],
) -> Vec<Vec<bool>> {
    signatures
        .iter()
        .map(|sig| {
            messages
                .iter()
                .map(|(m, key)| schnorr::verify(sig, m, key).is_ok())
                .collect()
        })
        .collect()
}

/// A message and its tweaks, each tweak as a repeated byte and whether it is x-only.
type MessageCase = (Vec<u8>, Vec<(u8, bool)>);

fn arbitrary_messages() -> impl Strategy<Value = Vec<MessageCase>> {
    prop::collection::vec(
        (
            prop::collection::vec(any::<u8>(), 0..48),
            prop::collection::vec((1u8..=0xfe, any::<bool>()), 0..3),
        ),
        1..=5,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    /// One k-message session and k single-message sessions of the same messages verify the
    /// same way: each signature under its own message and key, and never under another's.
    #[test]
    fn a_k_message_session_verifies_like_k_single_sessions(
        messages in arbitrary_messages(),
        seed in any::<u64>(),
        star in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let keypairs: Vec<Keypair> = (0..3).map(|_| Keypair::new(&mut rng)).collect();
        let keys: Vec<PublicKey> = keypairs.iter().map(Keypair::public_key).collect();
        let topology = if star { Topology::Star } else { Topology::Mesh };
        let wire: Vec<MessageToSign> = messages
            .iter()
            .map(|(message, tweaks)| MessageToSign {
                message: message.clone(),
                tweaks: tweaks
                    .iter()
                    .map(|(b, x)| musig2_proto::Tweak::new([*b; 32], *x).expect("tweak"))
                    .collect(),
            })
            .collect();
        // The key each message's signature must verify under, computed here, not by a node.
        let expected: Vec<(Vec<u8>, XOnlyPublicKey)> = messages
            .iter()
            .map(|(message, tweaks)| {
                let tweaks: Vec<Tweak> = tweaks
                    .iter()
                    .map(|(b, x)| Tweak::new([*b; 32], *x).expect("tweak"))
                    .collect();
                let key = KeyAggContext::new(&keys)
                    .and_then(|c| c.with_tweaks(&tweaks))
                    .expect("keyagg")
                    .x_only_key();
                (message.clone(), key)
            })
            .collect();
        let (together, one_by_one) = runtime.block_on(async {
            let signers = Signers::spawn(&keypairs, seed);
            let request = |messages: Vec<MessageToSign>| musig2_coordinator::SessionRequest {
                signers: keys.clone(),
                peers: Vec::new(),
                messages,
                document_digest: None,
                policy: signers.policy(topology),
            };
            let joined = sign_plain(&signers, &keys, request(wire.clone())).await;
            let mut single = Vec::new();
            for m in &wire {
                let sigs = sign_plain(&signers, &keys, request(vec![m.clone()])).await;
                assert_eq!(sigs.len(), 1);
                single.push(sigs[0]);
            }
            (joined, single)
        });
        prop_assert_eq!(together.len(), messages.len());
        let a = verification_matrix(&together, &expected);
        let b = verification_matrix(&one_by_one, &expected);
        prop_assert_eq!(&a, &b);
        for (i, row) in a.iter().enumerate() {
            prop_assert!(row[i], "signature {} verifies under its own message and key", i);
            for (j, verifies) in row.iter().enumerate() {
                if expected[j] != expected[i] {
                    prop_assert!(!verifies, "signature {} verifies for message {}", i, j);
                }
            }
        }
    }
}

/// Signs `request` on the first signer, every other joining without a PSBT check.
async fn sign_plain(
    signers: &Signers,
    keys: &[PublicKey],
    request: musig2_coordinator::SessionRequest,
) -> Vec<schnorr::Signature> {
    let id = signers
        .node(&keys[0])
        .create_session(request)
        .await
        .expect("create");
    for key in &keys[1..] {
        signers.node(key).join_session(id).await.expect("join");
    }
    let mut all = Vec::new();
    for key in keys {
        all.push(
            signers
                .node(key)
                .wait_for_signatures(id)
                .await
                .expect("signatures"),
        );
    }
    assert!(all.iter().all(|s| *s == all[0]));
    all.swap_remove(0)
}

/// A node directory whose signing key is `secret_hex` (a vector participant's).
fn node_dir_with_key(base: &std::path::Path, name: &str, secret_hex: &str) -> std::path::PathBuf {
    let dir = base.join(name);
    let keys = cli_in(Some(&dir), &["--json", "keygen"], None).ok();
    assert!(keys["public_key"].is_string());
    let key_file = dir.join(musig2_node::keys::SIGNING_KEY_FILE);
    std::fs::write(&key_file, format!("{secret_hex}\n")).expect("replace the signing key");
    dir
}

/// Three `run` processes on 127.0.0.1 with the BIP373 participants' keys: for each vector
/// "participant pubkeys only" PSBT one signer runs `session create --psbt`, the others
/// `session show --psbt` and `session sign --psbt`, and the creator `psbt finalize --session`;
/// the transaction verifies. A signer given another PSBT refuses to join.
#[test]
fn the_cli_signs_the_bip373_psbts_over_libp2p() {
    let v = bip373();
    let base = common::temp_dir("psbt-net", "libp2p");
    let dirs: Vec<_> = v
        .participants
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (secret, public) = participant_keys(p);
            let dir = node_dir_with_key(&base, &format!("p{i}"), &secret);
            let info = cli_in(Some(&dir), &["--json", "info"], None).ok();
            assert_eq!(
                info["public_key"],
                public.as_str(),
                "the vector key is in use"
            );
            dir
        })
        .collect();
    let (first, started) = Running::start(&dirs[0], &["--listen", "/ip4/127.0.0.1/tcp/0"], None);
    let bootstrap = started["addresses"]
        .as_array()
        .and_then(|a| a.iter().find_map(|a| a.as_str()))
        .expect("an address")
        .to_owned();
    let mut running = vec![first];
    let mut peers = vec![started["peer_id"].as_str().expect("peer").to_owned()];
    for dir in &dirs[1..] {
        let (node, started) = Running::start(
            dir,
            &[
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--bootstrap",
                &bootstrap,
            ],
            None,
        );
        peers.push(started["peer_id"].as_str().expect("peer").to_owned());
        running.push(node);
    }
    let cli = |i: usize, args: &[&str]| cli_in(Some(&dirs[i]), args, None);
    let cases = spend_cases(&v, "With participant pubkeys only");
    let files: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(n, case)| {
            let path = base.join(format!("case{n}.psbt"));
            std::fs::write(&path, &case.psbt_hex).expect("write psbt");
            path
        })
        .collect();
    for (n, case) in cases.iter().enumerate() {
        let psbt = psbt_of(case);
        let file = files[n].to_str().expect("utf-8");
        let other = files[(n + 1) % files.len()].to_str().expect("utf-8");
        let creator = n % 3;
        // `--peer` in the PSBT's participant order, which is the vector's order.
        let mut args = vec!["--json", "session", "create", "--psbt", file];
        for p in &peers {
            args.extend(["--peer", p.as_str()]);
        }
        if n % 2 == 1 {
            args.extend(["--topology", "star"]);
        }
        let created = cli(creator, &args).ok();
        let session = created["session"].as_str().expect("session id").to_owned();
        let digest = created["document_digest"]
            .as_str()
            .expect("digest")
            .to_owned();
        assert_eq!(
            digest,
            hex::encode(musig2_bitcoin::psbt_digest(&psbt)),
            "{}",
            case.case
        );
        let members: Vec<usize> = (0..3).filter(|i| *i != creator).collect();
        // A member handed another PSBT refuses, and does not join.
        let refused = cli(
            members[0],
            &["--json", "session", "sign", &session, "--psbt", other],
        );
        let error = refused.error(7, "rejected");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("does not sign this PSBT")),
            "{error}"
        );
        let status = cli(members[0], &["--json", "session", "status", &session]).ok();
        assert_eq!(
            status["phase"], "created",
            "the refusing member did not join"
        );
        for &m in &members {
            let shown = cli(m, &["--json", "session", "show", &session, "--psbt", file]).ok();
            assert_eq!(shown["document_digest"], digest.as_str());
            assert_eq!(shown["psbt"]["digest"], digest.as_str());
            assert!(!shown["psbt"]["sign"].as_array().expect("sign").is_empty());
        }
        // One member joins, the other joins and waits for the signatures (`sign`).
        let joined = cli(
            members[0],
            &["--json", "session", "join", &session, "--psbt", file],
        )
        .ok();
        assert_eq!(joined["joined"], true);
        let signed = cli(
            members[1],
            &[
                "--json",
                "session",
                "sign",
                &session,
                "--psbt",
                file,
                "--timeout",
                "60",
            ],
        )
        .ok();
        let signatures = signed["signatures"].as_array().expect("signatures").clone();
        for i in [creator, members[0]] {
            let done = cli(
                i,
                &["--json", "session", "wait", &session, "--timeout", "60"],
            )
            .ok();
            assert_eq!(done["signatures"].as_array(), Some(&signatures));
        }
        let tx_file = base.join(format!("case{n}.tx"));
        let done = cli(
            creator,
            &[
                "--json",
                "psbt",
                "finalize",
                file,
                "--session",
                &session,
                "--tx",
                tx_file.to_str().expect("utf-8"),
            ],
        )
        .ok();
        let tx: Transaction = bitcoin::consensus::encode::deserialize_hex(
            std::fs::read_to_string(&tx_file).expect("tx file").trim(),
        )
        .expect("a transaction");
        assert_eq!(done["txid"], tx.compute_txid().to_string().as_str());
        let me = musig2_node::bitcoin::parse_public_key("key", &v.participants[creator].pubkey)
            .expect("key");
        let entries = PsbtSession::new(&psbt, &me, &Limits::default())
            .expect("plan")
            .entries;
        verify_extracted(&tx, &prevouts(&psbt).expect("prevouts"), &entries)
            .unwrap_or_else(|e| panic!("{}: {e}", case.case));
    }
    for node in running {
        node.stop();
    }
    let _ = std::fs::remove_dir_all(&base);
}
