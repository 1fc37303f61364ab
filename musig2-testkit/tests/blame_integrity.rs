//! Deterministic repros of the malicious-signer attacks of issue 9 that get honest signers
//! blamed. Each asserts what must hold after the coordinator is fixed; on a coordinator without
//! the fix they fail, and the failure message says how.

use musig2_proto::{AbortReason, SignerIndex, Topology};
use musig2_testkit::{Behaviour, CreatorAnnouncement, Outcome, Report, Scenario};

fn signer(i: u16) -> SignerIndex {
    SignerIndex::new(i).expect("index")
}

async fn run(scenario: Scenario) -> Report {
    scenario.run().await.expect("scenario runs")
}

/// The randomized property, and then: every honest node signed, or every one aborted blaming
/// exactly the adversary for one of `reasons`.
fn signed_or_only_adversary_blamed(report: &Report, reasons: &[AbortReason]) {
    report.assert_randomized_safety();
    let all_signed = report
        .honest
        .iter()
        .all(|h| matches!(h.outcome, Outcome::Signed(_)));
    if !all_signed {
        report.assert_aborted_blaming_adversary(reasons);
    }
}

/// Issue 9, attack 7. Mesh, default policy (commitments on), four signers, adversary 3.
/// The adversary sends nonce N2 to signer 1 and N1 to signers 0 and 2, under two sequence
/// numbers and dated 59.5 s in the past (just inside the 60 s skew bound), then after a second
/// the matching commitments (C2 to signer 1, C1 to the others) and a partial signature valid
/// under N1. The honest nodes reveal and sign a second later; the copies of the adversary's
/// nonces they relay with their partial signatures are then outside the skew bound.
///
/// Today the relayed copies are dropped as `ClockSkew` before any contradiction check, signer 1
/// signs under N2 and the others under N1, and they blame each other (`InvalidPartialSig`).
/// Expected: every honest node that aborts blames only the adversary (`Equivocation`).
#[tokio::test(start_paused = true)]
async fn skew_edge_equivocation_blames_only_the_equivocator() {
    let report =
        run(Scenario::new(907, 4)
            .adversary(3, Behaviour::SkewEdgeEquivocation { victim: signer(1) }))
        .await;
    signed_or_only_adversary_blamed(
        &report,
        &[AbortReason::Equivocation, AbortReason::InvalidPartialSig],
    );
}

/// Issue 9, attack 8. Star with commitments, four signers, coordinator 0 (honest), adversary 2.
/// The adversary signs a second, harmless Join under the sequence number of its nonce
/// commitment and sends it to member 1 before the commitment goes to the coordinator.
///
/// Today member 1 drops the adversary's commitment, relayed by the coordinator, as a
/// `Duplicate` sequence number, never reveals its nonce, and the coordinator times out blaming
/// member 1 (and member 1 blames the coordinator). Expected: neither honest member 1 nor the
/// honest coordinator is ever blamed; the session signs (the adversary is otherwise honest) or
/// aborts blaming only the adversary.
#[tokio::test(start_paused = true)]
async fn reused_seq_for_commitment_blames_no_honest_member() {
    let report = run(Scenario::new(908, 4)
        .topology(Topology::Star)
        .adversary(2, Behaviour::ReuseSeqForCommitment { victim: signer(1) }))
    .await;
    signed_or_only_adversary_blamed(&report, &[AbortReason::Timeout, AbortReason::Equivocation]);
}

/// Issue 9, attack 9. The adversary (signer 3 of four) creates the session and lists its own
/// peer id at honest signer 1's index (and at its own), then plays honestly.
///
/// Today signer 1's node silently puts its own peer id in place of the announced one and joins;
/// the others reject its Join (peer id mismatch), route its messages to the adversary, and the
/// honest nodes time out blaming each other. Expected: signer 1's node refuses the announcement
/// (does not join; a typed error), and no honest node blames an honest signer.
#[tokio::test(start_paused = true)]
async fn hijacked_peer_id_is_refused_by_its_owner() {
    let report = run(Scenario::new(909, 4)
        .adversary(3, Behaviour::Honest)
        .adversary_creates(CreatorAnnouncement::PeerIdOf { victim: signer(1) }))
    .await;
    let victim = report
        .honest
        .iter()
        .find(|h| h.signer == signer(1))
        .expect("signer 1 is honest");
    assert!(
        victim.join_error.is_some(),
        "signer 1 joined a session that lists another peer id for it:\n{}",
        report.describe_violations(&report.randomized_violations())
    );
    report.assert_randomized_safety();
}

/// Control for attack 9: the same adversarial creator with an honest announcement; everyone
/// signs.
#[tokio::test(start_paused = true)]
async fn adversarial_creator_with_honest_announcement_signs() {
    for topology in [Topology::Mesh, Topology::Star] {
        let report = run(Scenario::new(910, 4)
            .topology(topology)
            .adversary(3, Behaviour::Honest)
            .adversary_creates(CreatorAnnouncement::Honest))
        .await;
        report.assert_all_signed();
        assert!(report.honest.iter().all(|h| h.join_error.is_none()));
    }
}

/// Found by the randomized adversary (cause 2 in the README). Mesh, commitments on, four
/// signers, adversary 3 sends its commitment to signers 0 and 1 but not to signer 2, then its
/// nonce and partial signature to everyone.
///
/// Signers 0 and 1 have every commitment and reveal; signer 2 waits for the adversary's
/// commitment (no honest node relays commitments in mesh). Today signers 0 and 1 time out in
/// the nonce phase blaming signer 2 as well as the adversary. Expected: no honest signer
/// blamed (signer 2 blames the adversary; the others blame only the adversary or take signer
/// 2's abort).
#[tokio::test(start_paused = true)]
async fn commitment_to_a_subset_blames_no_honest_signer() {
    let report =
        run(Scenario::new(911, 4).adversary(3, Behaviour::CommitmentToAllBut { skip: signer(2) }))
            .await;
    report.assert_randomized_safety();
}

/// Found by the randomized adversary (cause 1 in the README). Mesh, commitments on, four
/// signers, adversary 1 shows signer 3 — the last honest node the scenario joins — two
/// different nonces under one sequence number, before signer 3's node has joined.
///
/// Today signer 3's node finds the equivocation and aborts while it has not joined, so it tells
/// nobody (`SessionMachine::abort` sends an Abort only once joined) and its join is then
/// refused; the other honest nodes time out blaming signer 3. Expected: no honest signer
/// blamed (e.g. the finding goes out as a signed Abort, or waits until the node joins).
#[tokio::test(start_paused = true)]
async fn equivocation_seen_before_joining_blames_no_honest_signer() {
    let report =
        run(Scenario::new(912, 4)
            .adversary(1, Behaviour::EquivocateBeforeJoin { victim: signer(3) }))
        .await;
    report.assert_randomized_safety();
}

/// ADR 0022. Four signers, adversary 2 (a star member, or a mesh peer). Its partial signature
/// reaches every node that aggregates from its own peer, but under an envelope signature that
/// does not verify. Those nodes take it before checking the envelope: a valid partial signature
/// lets the session sign (the final signature proves it); an invalid one is checked once the
/// aggregation fails, dropped without naming anyone for it, and the session ends at the
/// deadline naming the adversary alone, never an honest signer.
#[tokio::test(start_paused = true)]
async fn a_badly_signed_partial_signature_signs_if_valid_and_blames_only_its_author_if_not() {
    for topology in [Topology::Star, Topology::Mesh] {
        let report = run(Scenario::new(922, 4)
            .topology(topology)
            .adversary(2, Behaviour::BadlySignedPartialSig { valid: true }))
        .await;
        report.assert_safe();
        for h in &report.honest {
            assert!(
                matches!(h.outcome, Outcome::Signed(_)),
                "{topology:?} signer {}: {:?}",
                h.signer,
                h.outcome
            );
        }

        let report = run(Scenario::new(923, 4)
            .topology(topology)
            .adversary(2, Behaviour::BadlySignedPartialSig { valid: false }))
        .await;
        let reasons = report.assert_aborted_blaming_adversary(&[AbortReason::Timeout]);
        assert!(!reasons.is_empty(), "{topology:?}");
    }
}

/// ADR 0026. Star, four signers, adversary 3 coordinating (last-signer election). Its
/// aggregate nonce reaches every member from its own peer under an envelope signature that
/// does not verify. Members sign under it before checking it: a correct aggregate lets the
/// session sign. A wrong one makes the final signature fail; the coordinator then reveals its
/// set with an abort blaming a member. Each member checks the aggregate it signed under first,
/// finds the signature bad, and ends the session itself blaming nobody: never an honest
/// signer, and not on the coordinator's word.
#[tokio::test(start_paused = true)]
async fn a_badly_signed_aggregate_nonce_signs_if_valid_and_blames_no_honest_signer_if_not() {
    for (seed, commitments) in [(924, true), (925, false)] {
        let coordinated_by_3 = |seed: u64, valid: bool| {
            Scenario::new(seed, 4)
                .topology(Topology::Star)
                .commitments(commitments)
                .election(musig2_proto::ElectionMethod::LastSigner)
                .adversary(3, Behaviour::BadlySignedAggregateNonce { valid })
        };
        let report = run(coordinated_by_3(seed, true)).await;
        report.assert_safe();
        for h in &report.honest {
            assert!(
                matches!(h.outcome, Outcome::Signed(_)),
                "commitments {commitments}, signer {}: {:?}",
                h.signer,
                h.outcome
            );
        }

        let report = run(coordinated_by_3(seed + 10, false)).await;
        report.assert_safe();
        report.assert_randomized_safety();
        let log = report.adversary_log.as_ref().expect("log");
        assert_eq!(log.partial_sigs_seen.len(), 3, "every member signed once");
        assert_eq!(log.nonce_sets_sent, 3, "{log:?}");
        for h in &report.honest {
            assert_eq!(
                h.outcome,
                Outcome::Aborted {
                    reason: AbortReason::InvalidAggregateNonce,
                    blamed: Vec::new(),
                    origin: musig2_coordinator::AbortOrigin::Local,
                },
                "commitments {commitments}, signer {}",
                h.signer
            );
        }
    }
}
