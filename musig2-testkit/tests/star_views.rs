//! A star aggregator that shows different members different things (issue 11): each member
//! its own aggregate nonce, or one member an aggregate of another nonce set than the rest.
//! Honest members never blame an honest member: they sign validly or abort blaming the
//! aggregator. With and without nonce commitments, on the memory network under a paused clock.
//! Since ADR 0011 a member sees only the aggregate (one signature check) and signs under it:
//! what the aggregator hid shows only in the evidence it reveals on failure, so a lying
//! aggregator that reveals nothing is named only by the members' timeouts.

use musig2_proto::{AbortReason, ElectionMethod, SignerIndex, Topology};
use musig2_testkit::{Behaviour, Outcome, Report, Scenario};

fn signer(i: u16) -> SignerIndex {
    SignerIndex::new(i).expect("index")
}

/// Four signers in star topology whose aggregator (the last signer, elected by `LastSigner`) is
/// the adversary.
async fn adversarial_aggregator(seed: u64, commitments: bool, behaviour: Behaviour) -> Report {
    Scenario::new(seed, 4)
        .topology(Topology::Star)
        .commitments(commitments)
        .election(ElectionMethod::LastSigner)
        .adversary(3, behaviour)
        .run()
        .await
        .expect("scenario runs")
}

/// Partial signatures the adversary got in the first attempt, by member.
fn first_attempt_partial_sigs(report: &Report) -> Vec<usize> {
    let log = report.adversary_log.as_ref().expect("log");
    (0..3)
        .filter(|i| {
            log.partial_sigs_by_attempt
                .get(&(*i, 0))
                .is_some_and(|s| !s.is_empty())
        })
        .collect()
}

/// The aggregator gives each member an aggregate nonce of its own: the members' nonces plus a
/// fresh aggregator nonce per member, the aggregator's nonce envelopes all under one sequence
/// number. No member alone can tell (with commitments or without): each signs once, under what
/// it was shown; the partial signatures belong to three different challenges and add up to
/// nothing, and no member is shown a final signature that verifies. Nobody signs twice or
/// reuses a nonce, and nobody blames an honest member: the members time out on the aggregator.
#[tokio::test(start_paused = true)]
async fn star_aggregator_shows_each_member_a_different_aggregate_nonce() {
    for (seed, commitments) in [(1200, true), (1201, false)] {
        let report =
            adversarial_aggregator(seed, commitments, Behaviour::AggregateNoncePerMember).await;
        report.assert_signed_or_blamed_adversary();
        let log = report.adversary_log.as_ref().expect("log");
        assert_eq!(log.aggregate_nonces_sent, 3, "one per member: {log:?}");
        report.assert_aborted_blaming_adversary(&[AbortReason::Timeout]);
        report.assert_no_nonce_reuse();
        assert_eq!(
            first_attempt_partial_sigs(&report),
            vec![0, 1, 2],
            "commitments {commitments}: each member signed under the aggregate it was shown"
        );
        assert!(
            report
                .honest
                .iter()
                .all(|h| !matches!(h.outcome, Outcome::Signed(_))),
            "no final signature can verify"
        );
    }
}

/// The aggregator shows member 1 the aggregate of (and committing to) another nonce set than
/// members 0 and 2: member 0's nonce swapped for a fresh one under member 0's original
/// signature, or left out (both versions of its AggregateNonce under one sequence number).
/// Every member signs under what it was shown; member 1's partial signature names another
/// aggregate than the others', and the final signature cannot verify. Member 0, whose nonce
/// was tampered with, is never blamed: members time out blaming the aggregator.
#[tokio::test(start_paused = true)]
async fn star_aggregator_shows_one_member_different_relayed_nonces() {
    for (seed, commitments, omit) in [
        (1210, true, false),
        (1211, false, false),
        (1212, true, true),
        (1213, false, true),
    ] {
        let behaviour = Behaviour::RelayedNoncesPerMember {
            victim: signer(1),
            omit,
        };
        let report = adversarial_aggregator(seed, commitments, behaviour).await;
        report.assert_signed_or_blamed_adversary();
        report.assert_aborted_blaming_adversary(&[AbortReason::Timeout]);
        assert_eq!(
            first_attempt_partial_sigs(&report),
            vec![0, 1, 2],
            "commitments {commitments} omit {omit}: each member signed once"
        );
        assert!(report.honest.iter().any(|h| h.signer == signer(1)));
    }
}
