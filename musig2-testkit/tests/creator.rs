//! The adversary as the session's creator (issue 11): it announces and then withholds
//! everything, equivocates, aborts falsely, or shows different signers different
//! announcements under one id. Mesh and star, with and without nonce commitments, on the
//! memory network under a paused clock.

use std::sync::Arc;
use std::time::Duration;

use musig2_coordinator::{AbortOrigin, CoordinatorError, Node, dht_key};
use musig2_proto::{
    AbortReason, Announcement, ElectionMethod, PeerIdBytes, Policy, SessionId, SignedAnnouncement,
    SignerIndex, SignerInfo, Topology,
};
use musig2_testkit::{
    Adversary, AdversarySetup, Behaviour, CreatorAnnouncement, Outcome, Report, Scenario,
    WallClock, keypairs_from_seed, test_config,
};
use musig2_transport::{MemoryNetwork, PeerId, Transport};
use secp256k1::{Keypair, schnorr};

/// Every shape of session: topology and nonce commitments.
const SHAPES: [(Topology, bool); 4] = [
    (Topology::Mesh, true),
    (Topology::Mesh, false),
    (Topology::Star, true),
    (Topology::Star, false),
];

fn signer(i: u16) -> SignerIndex {
    SignerIndex::new(i).expect("index")
}

/// Four signers; the adversary in `slot` creates the session (an honest announcement) and
/// plays `behaviour`. With the default first-signer election an adversary in slot 0 is also
/// the star coordinator.
async fn run_creator(
    seed: u64,
    (topology, commitments): (Topology, bool),
    slot: u16,
    behaviour: Behaviour,
) -> Report {
    Scenario::new(seed, 4)
        .topology(topology)
        .commitments(commitments)
        .adversary(slot, behaviour)
        .adversary_creates(CreatorAnnouncement::Honest)
        .run()
        .await
        .expect("scenario runs")
}

/// The creator announces (to every signer and in the DHT) and then sends nothing: no join, no
/// commitment, no nonce. Every honest node joins, waits out the round, and aborts blaming
/// exactly the creator; nobody signs. As star coordinator (slot 0) it is every member's only
/// holdout; as a member (slot 3) the honest coordinator names it.
#[tokio::test(start_paused = true)]
async fn adversarial_creator_announces_then_withholds_everything() {
    for (k, shape) in (0u64..).zip(SHAPES) {
        for slot in [0, 3] {
            let report = run_creator(
                1100 + k * 2 + u64::from(slot),
                shape,
                slot,
                Behaviour::Silent,
            )
            .await;
            report.assert_signed_or_blamed_adversary();
            assert!(
                report.honest.iter().all(|h| h.join_error.is_none()),
                "{shape:?} slot {slot}: every honest node joined the announced session"
            );
            for h in &report.honest {
                assert!(
                    matches!(h.outcome, Outcome::Aborted { .. }),
                    "{shape:?} slot {slot}: signer {} cannot sign without the creator: {:?}",
                    h.signer,
                    h.outcome
                );
            }
            let log = report.adversary_log.as_ref().expect("log");
            assert_eq!(
                log.frames_sent, 3,
                "{shape:?} slot {slot}: only the announcement: {log:?}"
            );
        }
    }
}

/// The creator equivocates: two different nonces under one sequence number (to two halves of
/// its targets, or both to a star coordinator), or a valid partial signature to half of its
/// targets and an invalid one, under the same sequence number, to the rest. Honest nodes sign
/// (those that only ever saw the valid half may finish) or abort blaming only the creator; no
/// honest nonce is used twice.
#[tokio::test(start_paused = true)]
async fn adversarial_creator_equivocates() {
    for (k, shape) in (0u64..).zip(SHAPES) {
        for (j, behaviour) in (0u64..).zip([Behaviour::Equivocate, Behaviour::EquivocatePartialSig])
        {
            let report = run_creator(1120 + k * 2 + j, shape, 3, behaviour).await;
            report.assert_signed_or_blamed_adversary();
            let aborted = report
                .honest
                .iter()
                .filter(|h| matches!(h.outcome, Outcome::Aborted { .. }))
                .count();
            match (behaviour, shape.0) {
                // It never sends a partial signature, and nobody can sign without one.
                (Behaviour::Equivocate, _) => {
                    assert_eq!(aborted, 3, "{shape:?} {behaviour:?}: {:?}", report.honest);
                }
                // Two of the three honest nodes got the invalid one.
                (_, Topology::Mesh) => {
                    assert!(aborted >= 2, "{shape:?} {behaviour:?}: {:?}", report.honest);
                }
                // The coordinator may finish on the valid one before the other arrives.
                _ => {}
            }
        }
    }
}

/// The creator follows the protocol up to its nonce and then sends a validly signed Abort
/// accusing honest signer 1. Every honest node ends on that abort and reports it as the
/// creator's claim (origin `Remote(creator)`), never as a finding of its own; the accusation is
/// carried as sent.
#[tokio::test(start_paused = true)]
async fn adversarial_creator_aborts_falsely() {
    for (k, shape) in (0u64..).zip(SHAPES) {
        let report = run_creator(
            1140 + k,
            shape,
            3,
            Behaviour::FalseAbort { accuse: signer(1) },
        )
        .await;
        report.assert_aborted_by_adversary();
        for h in &report.honest {
            assert!(
                matches!(
                    &h.outcome,
                    Outcome::Aborted { blamed, origin: AbortOrigin::Remote(from), .. }
                        if blamed == &vec![signer(1)] && *from == signer(3)
                ),
                "{shape:?}: signer {}: {:?}",
                h.signer,
                h.outcome
            );
        }
    }
}

/// How the second announcement of a split view differs from the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SplitBy {
    /// Another message.
    Message,
    /// Another salt, the content otherwise the same.
    Salt,
    /// Another signer list: each announcement lists only the signers shown it and the creator.
    Keys,
}

/// One signed announcement by the adversary (signer `creator` of `listed`).
fn announce(
    keys: &[Keypair],
    listed: &[(usize, PeerId)],
    creator: usize,
    message: &[u8],
    salt: u8,
    policy: Policy,
) -> SignedAnnouncement {
    let now = WallClock::new().now_ms();
    let position = listed
        .iter()
        .position(|&(i, _)| i == creator)
        .expect("creator listed");
    let announcement = Announcement {
        signers: listed
            .iter()
            .map(|&(i, peer)| SignerInfo {
                key: keys[i].public_key(),
                peer_id: PeerIdBytes::new(peer.to_bytes()).ok(),
            })
            .collect(),
        messages: vec![musig2_proto::MessageToSign::new(message.to_vec())],
        document_digest: None,
        creator: SignerIndex::try_from(position).expect("index"),
        policy,
        salt: [salt; 32],
        created_at_ms: now,
        expires_at_ms: now + 120_000,
    };
    announcement
        .sign(&keys[creator], &test_config().limits)
        .expect("announcement signs")
}

/// What one honest node made of a split view.
#[derive(Debug)]
struct SplitOutcome {
    /// Whether the adversary's DHT record claiming the first id let it join.
    joined_claimed_id: Result<(), String>,
    /// The session it joined (the one whose announcement it was shown).
    session: SessionId,
    outcome: Result<Vec<schnorr::Signature>, CoordinatorError>,
    /// Every session it knows, with the message its node holds for it.
    known: Vec<(SessionId, Vec<u8>)>,
}

/// The adversary (signer 3 of four) signs two announcements A and B that differ as `by` says,
/// shows A only to signers 0 and 1 and B only to signer 2, and claims that both are one
/// session: it stores B in the DHT under A's id, and signer 2's operator is told to join A's
/// id. The adversary then takes part honestly in both sessions (one adversary actor each).
async fn split_view(
    seed: u64,
    (topology, commitments): (Topology, bool),
    by: SplitBy,
) -> (SignedAnnouncement, SignedAnnouncement, Vec<SplitOutcome>) {
    let network = MemoryNetwork::new(seed);
    let keys = keypairs_from_seed(seed, 4);
    let config = test_config();
    let nodes: Vec<Node> = keys[..3]
        .iter()
        .map(|k| Node::spawn(Arc::new(network.add_node()), *k, config.clone()))
        .collect();
    let (ta, tb) = (network.add_node(), network.add_node());
    // The first listed signer coordinates a star: an honest one in both sessions.
    let policy = Policy {
        topology,
        nonce_commitment: commitments,
        election: ElectionMethod::FirstSigner,
        ..nodes[0].default_policy()
    };
    let peer = |i: usize| nodes[i].peer_id();
    let listed_a = match by {
        SplitBy::Keys => vec![(0, peer(0)), (1, peer(1)), (3, ta.local_peer_id())],
        _ => vec![
            (0, peer(0)),
            (1, peer(1)),
            (2, peer(2)),
            (3, ta.local_peer_id()),
        ],
    };
    let a = announce(&keys, &listed_a, 3, b"pay Alice", 1, policy);
    let everyone_b = [
        (0, peer(0)),
        (1, peer(1)),
        (2, peer(2)),
        (3, tb.local_peer_id()),
    ];
    let b = match by {
        SplitBy::Message => announce(&keys, &everyone_b, 3, b"pay Mallory", 1, policy),
        SplitBy::Salt => announce(&keys, &everyone_b, 3, b"pay Alice", 2, policy),
        SplitBy::Keys => announce(
            &keys,
            &[(2, peer(2)), (3, tb.local_peer_id())],
            3,
            b"pay Alice",
            1,
            policy,
        ),
    };
    // The claim: B under A's id in the DHT (and A under it too would give the game away).
    tb.dht_put(
        dht_key(&a.session_id()),
        b.to_frame_bytes(),
        Duration::from_secs(600),
    )
    .await
    .expect("dht put");
    let setup = |announcement: &SignedAnnouncement, to: Vec<PeerId>, salt: u64| AdversarySetup {
        limits: config.limits,
        seed: seed ^ salt,
        max_clock_skew: config.max_clock_skew,
        announcement: Some(announcement.clone()),
        announce_to: Some(to),
    };
    let adversaries = [
        Adversary::spawn_on(
            Arc::new(ta),
            keys[3],
            Behaviour::Honest,
            setup(&a, vec![peer(0), peer(1)], 0xa),
        ),
        Adversary::spawn_on(
            Arc::new(tb),
            keys[3],
            Behaviour::Honest,
            setup(&b, vec![peer(2)], 0xb),
        ),
    ];
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut outcomes = Vec::new();
    let mut joined = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        // Every operator is told to join A's id.
        let claimed = node
            .join_session(a.session_id())
            .await
            .map_err(|e| e.to_string());
        // Signer 2 then joins the session its node was shown.
        let session = if i == 2 {
            b.session_id()
        } else {
            a.session_id()
        };
        if claimed.is_err() {
            node.join_session(session)
                .await
                .expect("joins what it was shown");
        }
        joined.push((claimed, session));
    }
    for (node, (claimed, session)) in nodes.iter().zip(joined) {
        let outcome = node.wait_for_signatures(session).await;
        let mut known = Vec::new();
        for health in node.sessions().await.expect("sessions") {
            let ann = node
                .discover_session(health.session)
                .await
                .expect("a known session's announcement");
            known.push((
                health.session,
                ann.announcement().messages[0].message.clone(),
            ));
        }
        outcomes.push(SplitOutcome {
            joined_claimed_id: claimed,
            session,
            outcome,
            known,
        });
    }
    for adversary in adversaries {
        adversary.stop().await;
    }
    (a, b, outcomes)
}

/// Different announcements for different signers under one id cannot exist: the session id is
/// a tagged hash of the announcement's canonical encoding, and the announcement carries the
/// creator's signature over it. So the adversary's second announcement B (another message,
/// another salt, or another signer list) has an id of its own; stored in the DHT under A's id,
/// it fails verification and signer 2's node refuses to join A's id with it. The honest nodes
/// end up in two different sessions (0 and 1 in A, 2 in B), every node holds for each id the
/// one content that hashes to it, and a node signs only the message of the announcement it
/// verified. With disjoint signer lists both sessions complete and sign (each its own message
/// under its own key). With the same signer list each session lacks the signers shown the
/// other one: it times out naming only those signers, who never joined it (a creator decides
/// who learns of its session; nobody can tell such a signer from one that withholds), and no
/// honest node is blamed in a session it joined.
#[tokio::test(start_paused = true)]
async fn adversarial_creator_cannot_show_two_announcements_under_one_id() {
    for (k, shape) in (0u64..).zip(SHAPES) {
        for (j, by) in (0u64..).zip([SplitBy::Message, SplitBy::Salt, SplitBy::Keys]) {
            let (a, b, outcomes) = split_view(1160 + k * 3 + j, shape, by).await;
            let what = format!("{shape:?} {by:?}");
            assert_ne!(
                a.session_id(),
                b.session_id(),
                "{what}: one id, two contents"
            );
            let content = |id: SessionId| {
                if id == a.session_id() {
                    &a
                } else {
                    assert_eq!(id, b.session_id(), "{what}: a third session");
                    &b
                }
            };
            for (i, out) in outcomes.iter().enumerate() {
                assert_eq!(
                    out.joined_claimed_id.is_ok(),
                    i < 2,
                    "{what}: signer {i} joining A's id: {:?}",
                    out.joined_claimed_id
                );
                for (id, message) in &out.known {
                    assert_eq!(
                        message,
                        &content(*id).announcement().messages[0].message,
                        "{what}: signer {i} holds another content under {id}"
                    );
                }
                let ann = content(out.session).announcement();
                let key = musig2_core::KeyAggContext::new(
                    &ann.signers.iter().map(|s| s.key).collect::<Vec<_>>(),
                )
                .expect("key aggregation")
                .x_only_key();
                match &out.outcome {
                    Ok(sigs) => schnorr::verify(&sigs[0], &ann.messages[0].message, &key)
                        .unwrap_or_else(|e| panic!("{what}: signer {i}: {e}")),
                    Err(CoordinatorError::Aborted { reason, blamed, .. }) => {
                        assert_ne!(by, SplitBy::Keys, "{what}: signer {i}: {:?}", out.outcome);
                        assert_eq!(*reason, AbortReason::Timeout, "{what}: signer {i}");
                        // Only signers that never joined this session: in A signer 2, in B
                        // signers 0 and 1 (the adversary took part in both).
                        let absent: &[u16] = if i < 2 { &[2] } else { &[0, 1] };
                        assert!(
                            !blamed.is_empty()
                                && blamed
                                    .iter()
                                    .all(|x| absent.contains(&(x.as_usize() as u16))),
                            "{what}: signer {i} blamed {blamed:?}"
                        );
                    }
                    Err(e) => panic!("{what}: signer {i}: {e}"),
                }
            }
        }
    }
}
