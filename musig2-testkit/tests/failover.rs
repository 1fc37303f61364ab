//! Star aggregator failover (ADR 0008, issue 11) between honest nodes: a crashed, partitioned or
//! doubly lost aggregator, exhausted failover, claimants split by a partition, partitions healed
//! mid-phase. Star topology, election `FirstSigner` (position `k` is signer `k`), with and
//! without nonce commitments, on the memory network under a paused clock; test deadlines
//! (`test_config`): join window 20 s, phase timeouts 10 s, so a claim window W is 5 s.
//!
//! Every run asserts the safety property (`Report::assert_safe`: one valid signature, blame
//! only of dishonest or cut-off signers and only for a timeout, claims told apart from
//! findings, no nonce used twice by the stores) and its specific outcome.

use std::time::Duration;

use musig2_proto::{AbortReason, SignerIndex, Topology};
use musig2_testkit::{CrashPoint, FailoverSeen, Outcome, Report, Scenario};

const SECOND: Duration = Duration::from_secs(1);

fn star(seed: u64, signers: usize, commitments: bool, failovers: u16) -> Scenario {
    Scenario::new(seed, signers)
        .topology(Topology::Star)
        .commitments(commitments)
        .max_failovers(failovers)
}

fn idx(i: u16) -> SignerIndex {
    SignerIndex::new(i).expect("index")
}

/// A star run of `signers` with `max_failovers(failovers)` and one partition window of `groups`
/// from the start until `until` (`None`: for good).
async fn partitioned(
    seed: u64,
    (signers, commitments, failovers): (usize, bool, u16),
    groups: &[&[u16]],
    until: Option<Duration>,
) -> Report {
    star(seed, signers, commitments, failovers)
        .partition(groups, Duration::ZERO, until)
        .run()
        .await
        .expect("scenario runs")
}

/// Every honest node signed, and ends with aggregator `coordinator` at `attempt`.
fn assert_signed_under(report: &Report, coordinator: u16, attempt: u16, what: &str) {
    for h in &report.honest {
        assert!(
            matches!(h.outcome, Outcome::Signed(_)),
            "{what}: signer {}: {:?}\n{}",
            h.signer,
            h.outcome,
            report.describe_violations(&[])
        );
        let health = h.health.as_ref().expect("health");
        assert_eq!(
            (health.coordinator, health.attempt.get()),
            (idx(coordinator), attempt),
            "{what}: signer {} ended under another aggregator (failovers {:?})",
            h.signer,
            h.failovers
        );
    }
    report.assert_all_signed();
}

/// Every honest node signed under signer 1 in attempt 1, each having reported exactly one
/// failover: attempt 1, signer 0 replaced by signer 1.
fn assert_signed_after_one_failover(report: &Report, what: &str) {
    assert_signed_under(report, 1, 1, what);
    for h in &report.honest {
        let i = u16::try_from(h.signer.as_usize()).expect("index");
        assert_eq!(
            failovers_of(report, i),
            vec![(1, 0, 1)],
            "{what}: signer {i}"
        );
    }
}

/// The failovers signer `i` reported, as `(attempt, replaced, new aggregator)`.
fn failovers_of(report: &Report, i: u16) -> Vec<(u16, u16, u16)> {
    let h = report
        .honest
        .iter()
        .find(|h| h.signer == idx(i))
        .expect("honest");
    h.failovers
        .iter()
        .map(|f: &FailoverSeen| {
            (
                f.attempt,
                u16::try_from(f.replaced.as_usize()).unwrap_or(u16::MAX),
                u16::try_from(f.coordinator.as_usize()).unwrap_or(u16::MAX),
            )
        })
        .collect()
}

/// The round a crash at `point` falls in ends at the join window's end (20 s) when it is round
/// 1 (with announced peers round 1 starts at the join), else one phase timeout (10 s) after it
/// started (just after the crash).
fn first_aggregator_deadline(point: CrashPoint, commitments: bool) -> Duration {
    let round_one = match point {
        CrashPoint::Joined | CrashPoint::CommitSent => true,
        CrashPoint::NonceSent => !commitments,
        _ => false,
    };
    if round_one { 20 * SECOND } else { 10 * SECOND }
}

/// The star aggregator (signer 0) crashes after each of its steps and stays down past its
/// deadline: signer 1 claims the role, every node follows into attempt 1 with fresh nonces, and
/// once the aggregator restarts (5 s later, inside attempt 1's first phase) it catches up and
/// the session signs under signer 1 in attempt 1. The other nodes reported the failover
/// (`CoordinatorFailover`, 0 → 1) before the restart, the restarted one after it. A crash once
/// it holds the outcome costs nothing (control).
#[tokio::test(start_paused = true)]
async fn crashed_aggregator_is_replaced_and_signs_under_the_next_after_its_restart() {
    let mut seed = 1100;
    for commitments in [true, false] {
        for point in CrashPoint::ALL {
            if !commitments && point == CrashPoint::CommitSent {
                continue;
            }
            seed += 1;
            let what = format!("commitments {commitments} {point:?} (seed {seed})");
            let down = first_aggregator_deadline(point, commitments) + 5 * SECOND;
            let report = star(seed, 4, commitments, 2)
                .crash_restart(0, point)
                .restart_after(down)
                .run()
                .await
                .expect("scenario runs");
            let crash = report.crash.as_ref().expect("crash record");
            assert!(crash.crashed, "{what}: no crash");
            report.assert_safe();
            if point == CrashPoint::Finished {
                assert_signed_under(&report, 0, 0, &what);
                continue;
            }
            assert_signed_after_one_failover(&report, &what);
            for (i, h) in report.honest.iter().enumerate() {
                let at = h.failovers[0].at;
                // The crash came within the first half second; the restart `down` later.
                if i == 0 {
                    assert!(at >= down, "{what}: the victim followed before its restart");
                } else {
                    assert!(
                        at < down,
                        "{what}: signer {i} failed over after the restart"
                    );
                }
            }
        }
    }
}

/// Two consecutive aggregators down: signer 1 crashes right after joining and stays down
/// until 27 s (so it never claims), and signer 0 is cut off from the start until 25.5 s. Signer 2
/// claims attempt 1 at D + W = 25 s (signer 1's turn passed unclaimed), signer 3 follows, signer
/// 0 follows once back (the claim's retries reach it), signer 1 catches up after its restart;
/// the session signs under position 2.
#[tokio::test(start_paused = true)]
async fn two_consecutive_aggregators_down_sign_under_position_two() {
    for (seed, commitments) in [(1201, true), (1202, false)] {
        let what = format!("commitments {commitments}");
        let report = star(seed, 4, commitments, 2)
            .crash_restart(1, CrashPoint::Joined)
            .restart_after(27 * SECOND)
            .partition(&[&[0]], Duration::ZERO, Some(Duration::from_millis(25_500)))
            .run()
            .await
            .expect("scenario runs");
        let health = report.honest[2].health.as_ref().expect("health");
        assert_signed_under(&report, 2, health.attempt.get(), &what);
        for i in [2, 3] {
            assert_eq!(
                failovers_of(&report, i).first(),
                Some(&(1, 0, 2)),
                "{what}: signer {i} went straight to position 2"
            );
        }
    }
}

/// Signers 0 and 1 both cut off (from everyone and each other) until 25.5 s: signer 1 claims
/// attempt 1 alone at 20 s, signer 2 claims it at 25 s and signer 3 follows; at the heal the
/// retries of signer 2's claim reach signers 0 and 1, and the two claims of attempt 1 settle on
/// the lower position (nobody signed in it yet): everyone signs under signer 1. Signers 2 and 3
/// report 0 → 2, then 2 → 1.
#[tokio::test(start_paused = true)]
async fn two_aggregators_cut_off_then_back_settle_on_the_lower_claimant() {
    for (seed, commitments) in [(1221, true), (1222, false)] {
        let what = format!("commitments {commitments}");
        let report = partitioned(
            seed,
            (4, commitments, 2),
            &[&[0], &[1]],
            Some(Duration::from_millis(25_500)),
        )
        .await;
        assert_signed_under(&report, 1, 1, &what);
        for i in [2, 3] {
            assert_eq!(
                failovers_of(&report, i),
                vec![(1, 0, 2), (1, 2, 1)],
                "{what}: signer {i}"
            );
        }
    }
}

/// Failover bounded to one position (`max_failovers(1)`), signers 0 and 1 cut off for good:
/// nobody can take over, and signers 2 and 3 abort `FailoverExhausted` naming only signers
/// that were down (the first aggregator: they never saw a claim). The cut-off signers end
/// without blaming anyone they could reach.
#[tokio::test(start_paused = true)]
async fn exhausted_failover_aborts_naming_only_signers_that_were_down() {
    for (seed, commitments) in [(1301, true), (1302, false)] {
        let what = format!("commitments {commitments}");
        let report = partitioned(seed, (4, commitments, 1), &[&[0], &[1]], None).await;
        report.assert_safe();
        for h in &report.honest[2..] {
            match &h.outcome {
                Outcome::Aborted {
                    reason: AbortReason::FailoverExhausted,
                    blamed,
                    ..
                } => assert!(
                    !blamed.is_empty() && blamed.iter().all(|b| b.as_usize() < 2),
                    "{what}: signer {} blames {blamed:?}",
                    h.signer
                ),
                other => panic!("{what}: signer {}: {other:?}", h.signer),
            }
        }
        for h in &report.honest[..2] {
            assert!(
                matches!(h.outcome, Outcome::Aborted { .. }),
                "{what}: signer {}: {:?}",
                h.signer,
                h.outcome
            );
        }
    }
}

/// The aggregator is cut off from the start; signer 1 takes over at 20 s; the aggregator comes
/// back at 20.5 s, still in attempt 0 (its deadline passed alone: it asked, by sending its
/// join again, whether it was replaced; the retries of that frame, at least 775 ms after it,
/// reach the others after the heal).
/// It is shown the claim, catches up and the session signs under signer 1; its late attempt-0
/// messages are ignored, not blamed.
#[tokio::test(start_paused = true)]
async fn partitioned_aggregator_back_after_being_replaced_signs() {
    for (seed, commitments) in [(1401, true), (1402, false)] {
        let what = format!("commitments {commitments}");
        let report = partitioned(
            seed,
            (4, commitments, 2),
            &[&[0]],
            Some(Duration::from_millis(20_500)),
        )
        .await;
        assert_signed_after_one_failover(&report, &what);
    }
}

/// The same, but the aggregator comes back at 25 s, after the retries of its question at 20 s
/// have lapsed (about 2 s) and before it gives up (D + 2W = 30 s): it asks again at 25 s, is
/// shown the claim, follows and everyone signs under signer 1 (this was a coordinator bug: it
/// gave up at 30 s naming every member, and the others took that stale attempt-0 abort).
#[tokio::test(start_paused = true)]
async fn partitioned_aggregator_back_late_after_being_replaced_signs() {
    for (seed, commitments) in [(1411, true), (1412, false)] {
        let what = format!("commitments {commitments}");
        let report = partitioned(seed, (4, commitments, 2), &[&[0]], Some(25 * SECOND)).await;
        assert_signed_under(&report, 1, 1, &what);
    }
}

/// Liveness limit, safety kept: signers 0 and 1 cut off (from everyone and each other) until
/// 27 s, past signer 2's claim at 25 s and its retries, and less than a claim window before the
/// first aggregator gives up (30 s): the aggregator's last question (25 s) is lost too, so it
/// gives up without having seen a claim, naming the members it could not hear. The others,
/// who followed a claim, take that timeout as stale (ADR 0008) and nobody reachable is blamed;
/// the session does not sign (MuSig2 is n-of-n and signer 0 has ended it).
#[tokio::test(start_paused = true)]
async fn two_aggregators_cut_off_until_just_before_the_end_stay_safe() {
    for (seed, commitments) in [(1211, true), (1212, false)] {
        let report = partitioned(seed, (4, commitments, 2), &[&[0], &[1]], Some(27 * SECOND)).await;
        report.assert_safe();
    }
}

/// Five signers; the aggregator is cut off, and the rest split into {1, 3} and {2, 4}: signer 1
/// claims attempt 1 at 20 s (followed by 3), signer 2, not hearing it, claims attempt 1 at
/// 25 s (followed by 4). Healed at 25.5 s (the retries of signer 2's claim then reach the
/// other side; signer 1's, from 20 s, are over),
/// everyone settles on the lower position and signs
/// under signer 1 in attempt 1.
#[tokio::test(start_paused = true)]
async fn claimants_split_by_a_partition_converge_on_the_lower_position() {
    for (seed, commitments) in [(1501, true), (1502, false)] {
        let what = format!("commitments {commitments}");
        let report = partitioned(
            seed,
            (5, commitments, 2),
            &[&[0], &[1, 3], &[2, 4]],
            Some(Duration::from_millis(25_500)),
        )
        .await;
        assert_signed_under(&report, 1, 1, &what);
        for i in [1, 3] {
            assert_eq!(
                failovers_of(&report, i),
                vec![(1, 0, 1)],
                "{what}: signer {i}"
            );
        }
        for i in [2, 4] {
            assert_eq!(
                failovers_of(&report, i),
                vec![(1, 0, 2), (1, 2, 1)],
                "{what}: signer {i} moved from claimant 2 to claimant 1"
            );
        }
    }
}

/// A partition healed mid-phase (round 1 lasts until the join window's end at 20 s): the
/// aggregator, or a member, cut off from the start. Healed at 0.5 s, before the senders' last
/// retry (5 retries, 50 ms doubling, jitter ×0.5–1.5: the last between 0.775 and 2.3 s), the
/// session signs in attempt 0 under signer 0 without a failover. Healed at 5 s
/// or 15 s, the frames sent across the cut are lost (nothing is sent again after a heal) and
/// round 1 stalls: at 20 s signer 1 takes over and the session signs in attempt 1 under it.
#[tokio::test(start_paused = true)]
async fn partition_healed_mid_phase_signs() {
    let mut seed = 1600;
    for commitments in [true, false] {
        for (cut, until_ms) in [
            (0u16, 500u64),
            (3, 500),
            (0, 5_000),
            (3, 5_000),
            (0, 15_000),
        ] {
            seed += 1;
            let what = format!("commitments {commitments} signer {cut} cut until {until_ms} ms");
            let report = partitioned(
                seed,
                (4, commitments, 2),
                &[&[cut]],
                Some(Duration::from_millis(until_ms)),
            )
            .await;
            if until_ms == 500 {
                assert_signed_under(&report, 0, 0, &what);
                for i in 0..4 {
                    assert!(failovers_of(&report, i).is_empty(), "{what}: signer {i}");
                }
            } else {
                assert_signed_after_one_failover(&report, &what);
            }
        }
    }
}
