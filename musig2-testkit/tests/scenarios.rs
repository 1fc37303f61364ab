//! Adversarial scenarios on the memory network under a paused clock: the honest nodes either
//! sign with a valid signature or abort blaming exactly the adversary.

use musig2_proto::{AbortReason, ElectionMethod, SignerIndex, Topology};
use std::time::Duration;

use musig2_coordinator::AbortOrigin;
use musig2_testkit::{Behaviour, Outcome, Report, Scenario};
use musig2_transport::LinkFault;

async fn run(scenario: Scenario) -> Report {
    scenario.run().await.expect("scenario runs")
}

/// Runs `behaviour` in signer slot 2 of four, in mesh (`seeds[0]`) and star (`seeds[1]`), and
/// asserts that both sessions sign.
async fn signs_in_both_topologies(seeds: [u64; 2], behaviour: Behaviour) -> Vec<Report> {
    let mut reports = Vec::new();
    for (seed, topology) in seeds.into_iter().zip([Topology::Mesh, Topology::Star]) {
        let report = run(Scenario::new(seed, 4)
            .topology(topology)
            .adversary(2, behaviour))
        .await;
        report.assert_all_signed();
        reports.push(report);
    }
    reports
}

fn signer(i: u16) -> SignerIndex {
    SignerIndex::new(i).expect("index")
}

#[tokio::test(start_paused = true)]
async fn baseline() {
    // Honest nodes only, and the adversary type playing honestly: the harness itself must let
    // every shape of session sign, or the adversarial results below would mean nothing.
    run(Scenario::new(1, 3)).await.assert_all_signed();
    for (seed, topology, commitments) in [
        (2, Topology::Mesh, true),
        (3, Topology::Mesh, false),
        (4, Topology::Star, true),
        (5, Topology::Star, false),
    ] {
        let report = run(Scenario::new(seed, 4)
            .topology(topology)
            .commitments(commitments)
            .adversary(2, Behaviour::Honest))
        .await;
        report.assert_all_signed();
        let log = report.adversary_log.as_ref().expect("log");
        assert!(
            log.sent_partial_sig,
            "{topology:?}: the adversary took part"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn withholding() {
    for (seed, behaviour) in [
        (10, Behaviour::WithholdNonce),
        (11, Behaviour::WithholdPartialSig),
    ] {
        let report = run(Scenario::new(seed, 4).adversary(3, behaviour)).await;
        report.assert_aborted_blaming_adversary(&[AbortReason::Timeout]);
    }
    // Star: the coordinator (signer 0) sees who withheld and blames exactly that member, and the
    // other members, who wait for the coordinator a little longer than it waits for them, take
    // its verdict instead of blaming the coordinator.
    for (seed, behaviour) in [
        (12, Behaviour::WithholdNonce),
        (13, Behaviour::WithholdPartialSig),
    ] {
        let report = run(Scenario::new(seed, 4)
            .topology(Topology::Star)
            .adversary(3, behaviour))
        .await;
        report.assert_aborted_blaming_adversary(&[AbortReason::Timeout]);
    }
}

#[tokio::test(start_paused = true)]
async fn invalid_partial_signature() {
    for (seed, topology) in [(20, Topology::Mesh), (21, Topology::Star)] {
        let report = run(Scenario::new(seed, 4)
            .topology(topology)
            .adversary(1, Behaviour::InvalidPartialSig))
        .await;
        report.assert_aborted_blaming_adversary(&[AbortReason::InvalidPartialSig]);
        let log = report.adversary_log.as_ref().expect("log");
        assert!(log.sent_partial_sig);
        if topology == Topology::Star {
            // Star members never see the nonces in a session that signs; here the coordinator
            // revealed them with every partial signature, and each member judged the evidence
            // itself (ADR 0011): its own finding, not the coordinator's word.
            for h in &report.honest {
                assert!(
                    matches!(
                        h.outcome,
                        Outcome::Aborted {
                            origin: AbortOrigin::Local,
                            ..
                        }
                    ),
                    "signer {}: {:?}",
                    h.signer,
                    h.outcome
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn bad_nonces() {
    let report = run(Scenario::new(30, 4).adversary(2, Behaviour::CommitmentMismatch)).await;
    report.assert_aborted_blaming_adversary(&[AbortReason::CommitmentMismatch]);

    // A nonce that is not a valid point does not even decode: to the honest nodes the
    // adversary simply never revealed, and the nonce phase times out on it.
    let report = run(Scenario::new(31, 4).adversary(2, Behaviour::InvalidNonce)).await;
    report.assert_aborted_blaming_adversary(&[AbortReason::Timeout]);
    let log = report.adversary_log.as_ref().expect("log");
    assert!(
        log.frames_delivered >= 3 * 3,
        "join, commit and bad nonce reached everyone"
    );
}

#[tokio::test(start_paused = true)]
async fn equivocation() {
    // Without commitments, signer 2 shows signer 0 one nonce and signers 1 and 3 another. Each
    // honest partial signature travels with the nonces it was made under, so the conflict
    // surfaces and the equivocator is blamed; no honest nonce is used twice.
    let report = run(Scenario::new(40, 4)
        .commitments(false)
        .adversary(2, Behaviour::Equivocate))
    .await;
    report.assert_aborted_blaming_adversary(&[AbortReason::Equivocation]);
    report.assert_no_nonce_reuse();
    let log = report.adversary_log.as_ref().expect("log");
    assert!(
        !log.nonces_seen.is_empty(),
        "the adversary saw honest nonces"
    );
}

#[tokio::test(start_paused = true)]
async fn impersonation() {
    // Envelopes signed with the adversary's key that claim signer 1's index: a join rebinding
    // it, an abort blaming it, a nonce and a partial signature. All fail authentication.
    let report =
        run(Scenario::new(50, 4).adversary(3, Behaviour::Impersonate { victim: signer(1) })).await;
    report.assert_all_signed();
    let log = report.adversary_log.as_ref().expect("log");
    assert_eq!(
        log.forged,
        4 * 3,
        "four forged envelopes to each honest node"
    );
    for (h, rejected) in report.honest.iter().zip(report.rejected_messages()) {
        assert!(
            rejected >= 4,
            "signer {} rejected only {rejected} messages",
            h.signer
        );
    }
}

#[tokio::test(start_paused = true)]
async fn replay() {
    // The adversary re-sends every envelope it sees or sends, to everyone, repeatedly.
    for report in signs_in_both_topologies([60, 61], Behaviour::Replay).await {
        let log = report.adversary_log.as_ref().expect("log");
        assert!(
            log.frames_delivered > 3 * log.envelopes_received,
            "replays were delivered: {log:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn malformed_frames() {
    let report = run(Scenario::new(70, 4).adversary(1, Behaviour::MalformedFrames)).await;
    report.assert_all_signed();
    let log = report.adversary_log.as_ref().expect("log");
    // Nine malformed frames per honest node; all but the one over the transport limit arrive.
    assert!(log.frames_delivered >= 8 * 3, "{log:?}");
    assert_eq!(log.frames_sent - log.frames_delivered, 3, "{log:?}");
    // The frame with a bad signature decodes and is rejected by the session.
    assert!(report.rejected_messages().iter().all(|&r| r >= 1));
}

#[tokio::test(start_paused = true)]
async fn flood() {
    // A signer that floods junk is cut off by every honest node (blocked after repeated
    // offences), so its own contributions never arrive: it is blamed as the holdout.
    let report = run(Scenario::new(80, 4).adversary(2, Behaviour::Flood { frames: 500 })).await;
    report.assert_aborted_blaming_adversary(&[AbortReason::Timeout]);
    let log = report.adversary_log.as_ref().expect("log");
    assert!(
        log.frames_delivered >= 3 * 16,
        "heard up to the offence limit: {log:?}"
    );
    assert!(
        log.send_errors.get("unreachable").copied().unwrap_or(0) > 0,
        "blocked: {log:?}"
    );

    // Junk from a peer outside the session does not stop the signers.
    let report = run(Scenario::new(81, 4).outsider_flood(500)).await;
    report.assert_all_signed();
    let stats = report.outsider_flood.expect("flood stats");
    assert!(stats.delivered >= 4 * 16, "{stats:?}");
    assert!(
        stats.delivered < stats.sent,
        "the outsider was blocked: {stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn false_abort() {
    // Any signer may refuse to sign; a signed Abort ends the session. Its blame is the sender's
    // claim: the report attributes the abort to the adversary, and no honest node's own finding
    // blames anyone honest.
    let report =
        run(Scenario::new(90, 4).adversary(2, Behaviour::FalseAbort { accuse: signer(1) })).await;
    report.assert_aborted_by_adversary();
    for h in &report.honest {
        assert!(
            matches!(&h.outcome, Outcome::Aborted { blamed, .. } if blamed == &vec![signer(1)]),
            "the claim is carried as sent: {:?}",
            h.outcome
        );
    }
}

/// Four signers in star topology whose coordinator (the last signer, elected by
/// `LastSigner`) is the adversary; signer 0 is honest and creates the session.
fn adversarial_coordinator(seed: u64, behaviour: Behaviour) -> Scenario {
    Scenario::new(seed, 4)
        .topology(Topology::Star)
        .election(ElectionMethod::LastSigner)
        .adversary(3, behaviour)
}

#[tokio::test(start_paused = true)]
async fn star_coordinator_adversary() {
    // Control: the adversary coordinates honestly, with and without commitments.
    for (seed, commitments) in [(100, true), (101, false)] {
        let report =
            run(adversarial_coordinator(seed, Behaviour::Honest).commitments(commitments)).await;
        report.assert_all_signed();
        let log = report.adversary_log.as_ref().expect("log");
        assert_eq!(log.aggregate_nonces_sent, 3, "{log:?}");
        assert_eq!(log.final_signatures_sent, 3, "{log:?}");
        for h in &report.honest {
            let health = h.health.as_ref().expect("health");
            assert_eq!(health.coordinator, signer(3), "the adversary coordinated");
        }
    }
}

/// A coordinator that withholds the aggregate nonce or the final signature, sends a final
/// signature that does not verify, or reveals a forged nonce set (a relayed nonce whose
/// signature does not verify), is the only holdout of every member: each member rejects the bad
/// message (it fails verification, so it never moves the member on) and times out blaming
/// exactly the coordinator. None signs twice.
#[tokio::test(start_paused = true)]
async fn star_coordinator_lies_or_withholds() {
    // (seed, behaviour, aggregate nonces sent, final signatures sent, members that signed)
    for (seed, behaviour, aggregates, finals, signed) in [
        (110, Behaviour::WithholdAggregateNonce, 0, 0, 0),
        (112, Behaviour::ForgedRelayedNonce, 3, 0, 3),
        (113, Behaviour::WithholdFinalSig, 3, 0, 3),
        (114, Behaviour::InvalidFinalSig, 3, 3, 3),
    ] {
        let report = run(adversarial_coordinator(seed, behaviour)).await;
        report.assert_aborted_blaming_adversary(&[AbortReason::Timeout]);
        let log = report.adversary_log.as_ref().expect("log");
        assert_eq!(
            log.aggregate_nonces_sent, aggregates,
            "{behaviour:?}: {log:?}"
        );
        assert_eq!(log.final_signatures_sent, finals, "{behaviour:?}: {log:?}");
        // A member signs under the aggregate it is given, without seeing the nonces (ADR
        // 0011): BIP327's aggregator is untrusted, a wrong aggregate only spoils the result.
        assert_eq!(
            log.partial_sigs_seen.len(),
            signed,
            "{behaviour:?}: members sign under the aggregate nonce they are given"
        );
        if matches!(
            behaviour,
            Behaviour::ForgedRelayedNonce | Behaviour::InvalidFinalSig
        ) {
            // The forged nonce set (a relayed signature that does not verify) and the bad
            // final signature are refused.
            assert!(
                report.rejected_messages().iter().all(|&r| r >= 1),
                "{behaviour:?}: every member rejected the bad message"
            );
        }
    }
}

/// A star coordinator whose aggregate nonce is not the sum of the nonces it committed to
/// (ADR 0011): every member signs under it (at most one signature check, whatever n), the final
/// signature cannot verify, and the coordinator reveals the set it committed to, with an abort
/// blaming a member. Each member finds from the set itself that the aggregate is not its sum and
/// aborts blaming the coordinator (its own finding, before the coordinator's false abort); no
/// honest member is blamed.
#[tokio::test(start_paused = true)]
async fn star_coordinator_lying_about_the_aggregate_is_proven_by_its_own_nonce_set() {
    for (seed, commitments) in [(115, true), (116, false)] {
        let report =
            run(adversarial_coordinator(seed, Behaviour::BadAggregateNonce)
                .commitments(commitments))
            .await;
        report.assert_aborted_blaming_adversary(&[AbortReason::InvalidAggregateNonce]);
        for h in &report.honest {
            assert!(
                matches!(
                    h.outcome,
                    Outcome::Aborted {
                        origin: AbortOrigin::Local,
                        ..
                    }
                ),
                "member {}: its own finding: {:?}",
                h.signer,
                h.outcome
            );
        }
        let log = report.adversary_log.as_ref().expect("log");
        assert_eq!(log.aggregate_nonces_sent, 3, "{log:?}");
        assert_eq!(log.nonce_sets_sent, 3, "{log:?}");
        assert_eq!(log.final_signatures_sent, 0, "{log:?}");
        assert_eq!(log.partial_sigs_seen.len(), 3, "every member signed once");
        report.assert_no_nonce_reuse();
    }
}

/// After collecting every partial signature, the coordinator sends a second aggregate nonce with
/// a fresh nonce of its own, hoping for a second partial signature under a new challenge. The
/// members see the coordinator contradict its own signed nonce and abort for equivocation,
/// blaming it; none signs a second time.
#[tokio::test(start_paused = true)]
async fn star_coordinator_second_aggregate_nonce() {
    let report = run(adversarial_coordinator(
        120,
        Behaviour::SecondAggregateNonce,
    ))
    .await;
    report.assert_aborted_blaming_adversary(&[AbortReason::Equivocation]);
    report.assert_no_nonce_reuse();
    let log = report.adversary_log.as_ref().expect("log");
    assert_eq!(log.aggregate_nonces_sent, 6, "two rounds to three members");
    assert_eq!(log.partial_sigs_seen.len(), 3, "each member signed once");
}

/// A star coordinator that never relays the members' nonce commitments: each member, which
/// gets the others' commitments only from the coordinator, blames only the coordinator.
#[tokio::test(start_paused = true)]
async fn star_coordinator_withholds_commitments() {
    let report = run(adversarial_coordinator(130, Behaviour::WithholdCommitments)).await;
    let log = report.adversary_log.as_ref().expect("log");
    assert_eq!(log.aggregate_nonces_sent, 0, "{log:?}");
    assert!(log.nonces_seen.is_empty(), "no member revealed: {log:?}");
    report.assert_aborted_blaming_adversary(&[AbortReason::Timeout]);
}

/// 15% drop, 10% duplication and 10% reordering on every link (seeded).
fn lossy() -> LinkFault {
    LinkFault::none()
        .with_drop(0.15)
        .with_duplicate(0.10)
        .with_reorder(0.10, Duration::from_millis(200))
}

/// Link faults on every link do not change the outcome: dropped frames fail their send and are
/// retried, duplicates are ignored, reordered frames are buffered until they apply. Honest runs
/// sign; an adversary is blamed exactly as on a clean network.
#[tokio::test(start_paused = true)]
async fn link_faults_with_adversary() {
    for (seed, topology) in [(140, Topology::Mesh), (141, Topology::Star)] {
        run(Scenario::new(seed, 4)
            .topology(topology)
            .link_fault(lossy()))
        .await
        .assert_all_signed();
    }
    let mut dropped = 0;
    for (seed, topology, behaviour, reason) in [
        (
            142,
            Topology::Mesh,
            Behaviour::InvalidPartialSig,
            AbortReason::InvalidPartialSig,
        ),
        (
            143,
            Topology::Star,
            Behaviour::InvalidPartialSig,
            AbortReason::InvalidPartialSig,
        ),
        (
            144,
            Topology::Mesh,
            Behaviour::WithholdPartialSig,
            AbortReason::Timeout,
        ),
        (
            145,
            Topology::Star,
            Behaviour::WithholdPartialSig,
            AbortReason::Timeout,
        ),
        (
            146,
            Topology::Mesh,
            Behaviour::WithholdNonce,
            AbortReason::Timeout,
        ),
        (
            147,
            Topology::Star,
            Behaviour::WithholdNonce,
            AbortReason::Timeout,
        ),
    ] {
        let report = run(Scenario::new(seed, 4)
            .topology(topology)
            .link_fault(lossy())
            .adversary(2, behaviour))
        .await;
        report.assert_aborted_blaming_adversary(&[reason]);
        dropped += report.adversary_log.as_ref().expect("log").dropped_sends;
    }
    // A lying star coordinator on lossy links.
    for (seed, behaviour) in [
        (148, Behaviour::InvalidFinalSig),
        (149, Behaviour::WithholdAggregateNonce),
        (150, Behaviour::SecondAggregateNonce),
    ] {
        let report = run(adversarial_coordinator(seed, behaviour).link_fault(lossy())).await;
        let reason = if behaviour == Behaviour::SecondAggregateNonce {
            AbortReason::Equivocation
        } else {
            AbortReason::Timeout
        };
        report.assert_aborted_blaming_adversary(&[reason]);
        dropped += report.adversary_log.as_ref().expect("log").dropped_sends;
    }
    let report = run(adversarial_coordinator(151, Behaviour::Honest).link_fault(lossy())).await;
    report.assert_all_signed();
    dropped += report.adversary_log.as_ref().expect("log").dropped_sends;
    assert!(dropped >= 5, "the links did drop frames: {dropped}");
}

/// The adversary, a listed signer, tampers with the creator's signed announcement: it announces
/// its own message in the creator's name (creator's signature kept) and re-routes another
/// signer's peer id to itself, sends both to every honest node and stores them in the DHT under
/// their ids and the real one. No honest node takes either in or joins it when asked by id; the
/// real session signs.
#[tokio::test(start_paused = true)]
async fn forged_announcement() {
    for report in signs_in_both_topologies([160, 161], Behaviour::ForgeAnnouncement).await {
        report.assert_no_forged_session();
        let log = report.adversary_log.as_ref().expect("log");
        assert_eq!(
            log.forged_sessions.len(),
            2,
            "both forgeries were made: {log:?}"
        );
        assert!(
            !log.forged_sessions.contains(&report.session),
            "a forgery has its own session id"
        );
        for h in &report.honest {
            assert_eq!(
                h.known_sessions,
                vec![report.session],
                "signer {}",
                h.signer
            );
        }
    }
}

/// A member that joins and then never commits to a nonce is the only signer whose commitment is
/// missing. In mesh every honest node sees exactly that and blames it.
#[tokio::test(start_paused = true)]
async fn withheld_commitment() {
    let report = run(Scenario::new(170, 4).adversary(2, Behaviour::WithholdCommitment)).await;
    report.assert_aborted_blaming_adversary(&[AbortReason::Timeout]);
    let log = report.adversary_log.as_ref().expect("log");
    assert!(log.nonces_seen.is_empty(), "nobody revealed: {log:?}");
}

/// In star, a member that never commits: the honest coordinator blames it, and the other
/// members, who wait for the coordinator a little longer than it waits for them, take the
/// coordinator's verdict instead of blaming anyone honest.
#[tokio::test(start_paused = true)]
async fn withheld_commitment_star() {
    let report = run(Scenario::new(171, 4)
        .topology(Topology::Star)
        .adversary(2, Behaviour::WithholdCommitment))
    .await;
    report.assert_aborted_blaming_adversary(&[AbortReason::Timeout]);
}
