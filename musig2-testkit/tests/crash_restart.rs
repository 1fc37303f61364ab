//! Crash and restart of every honest signer at every phase, with the durable store (issue 11).
//! The crashed node is dropped without shutdown (its transport goes down, frames in flight are
//! lost) and a new node starts on the same `MemoryStore`, key and peer id. Unless signer 3 is
//! the one that crashes, signer 3 is an adversary that plays honestly and follows restarts: a
//! witness whose log shows every nonce and partial signature it was sent, by attempt. Mesh and
//! star, with and without nonce commitments, on the memory network under a paused clock.
//!
//! No nonce is used twice, by two checks (`Report::assert_safe`): the witness never saw two
//! nonces or two partial signatures of one signer in one attempt, nor one nonce in two
//! attempts; and the honest nodes' stores show the same of every honest signer.

use std::time::Duration;

use musig2_proto::{AbortReason, SignerIndex, Topology};
use musig2_testkit::{Behaviour, CrashPoint, Outcome, Report, Scenario};
use musig2_transport::{Delay, LinkFault};

/// Every shape of session: topology and nonce commitments.
const SHAPES: [(Topology, bool); 4] = [
    (Topology::Mesh, true),
    (Topology::Mesh, false),
    (Topology::Star, true),
    (Topology::Star, false),
];

/// The crash points a shape has (no commitment without commitments).
fn points(commitments: bool) -> impl Iterator<Item = CrashPoint> {
    CrashPoint::ALL
        .into_iter()
        .filter(move |p| commitments || *p != CrashPoint::CommitSent)
}

/// Whether a restart at `point` starts a new attempt: the node lost a nonce it may have sent
/// and holds no partial signature of its own to send again (ADR 0007).
fn starts_new_attempt(point: CrashPoint) -> bool {
    matches!(
        point,
        CrashPoint::Joined | CrashPoint::CommitSent | CrashPoint::NonceSent
    )
}

/// The witness's slot; when the victim is in it, the run has no witness (all four honest).
const WITNESS: u16 = 3;

fn slow() -> LinkFault {
    LinkFault::none().with_delay(Delay::Fixed(Duration::from_millis(50)))
}

async fn run(
    seed: u64,
    (topology, commitments): (Topology, bool),
    victim: u16,
    point: CrashPoint,
    max_attempts: Option<u16>,
) -> Report {
    let mut scenario = Scenario::new(seed, 4)
        .topology(topology)
        .commitments(commitments)
        .crash_restart(victim, point);
    if victim != WITNESS {
        scenario = scenario.adversary(WITNESS, Behaviour::Honest);
        // The witness is slow towards the other honest signers, so they sign after the
        // victim: in mesh the victim's partial signature then leaves before the set is
        // complete.
        for other in (0..WITNESS).filter(|&i| i != victim) {
            scenario = scenario.link_fault_between(WITNESS, other, slow());
        }
    }
    if let Some(max) = max_attempts {
        scenario = scenario.max_attempts(max);
    }
    scenario.run().await.expect("scenario runs")
}

/// What the crash left in the victim's store matches the point asked for.
fn assert_crashed_at(report: &Report, point: CrashPoint, what: &str) {
    let crash = report.crash.as_ref().expect("a crash scenario");
    assert!(crash.crashed, "{what}: the point was never reached");
    let kind = match point {
        CrashPoint::Joined => "join",
        CrashPoint::CommitSent => "nonce-commit",
        CrashPoint::NonceSent => "nonce",
        CrashPoint::PartialSigSent => "partial-sig",
        CrashPoint::Finished => {
            assert!(crash.finished_at_crash, "{what}: {crash:?}");
            return;
        }
        _ => unreachable!("a new crash point"),
    };
    assert!(crash.stored_at_crash.contains(&kind), "{what}: {crash:?}");
    // Without the slow witness a mesh victim is the last to sign: its partial signature
    // completes the set and the session ends in the same store commit.
    let last_to_sign = report.adversary_log.is_none() && point == CrashPoint::PartialSigSent;
    if (point == CrashPoint::NonceSent || point == CrashPoint::PartialSigSent) && !last_to_sign {
        assert!(
            !crash.finished_at_crash,
            "{what}: crashed too late: {crash:?}"
        );
    }
}

/// Every signer crashes after each phase and restarts (signers 0 to 2 with the witness in slot
/// 3, signer 3 in a run of four honest nodes); the session signs, on every node, with one
/// signature valid under the aggregate key. A crash before its partial
/// signature is stored costs one attempt (every node moves on with fresh nonces); after it,
/// the restarted node sends exactly that partial signature again, or holds the outcome.
#[tokio::test(start_paused = true)]
async fn every_signer_crashes_after_every_phase_and_the_session_signs() {
    let mut seed = 1400;
    let mut runs = 0;
    for shape in SHAPES {
        for victim in 0..4u16 {
            for point in points(shape.1) {
                seed += 1;
                runs += 1;
                let what = format!("{shape:?} victim {victim} {point:?} (seed {seed})");
                let report = run(seed, shape, victim, point, None).await;
                assert_crashed_at(&report, point, &what);
                let found = report.randomized_violations();
                assert!(
                    found.is_empty(),
                    "{what}\n{}",
                    report.describe_violations(&found)
                );
                assert!(
                    report
                        .honest
                        .iter()
                        .all(|h| matches!(h.outcome, Outcome::Signed(_))),
                    "{what}\n{}\n{:?}",
                    report.describe_violations(&[]),
                    report.crash
                );
                report.assert_all_signed();
                // Without the slow witness the victim is the last to sign: its partial signature
                // may leave in the step of its nonce, the others then finish in the first
                // attempt and hand the restarted victim the final signature.
                if let Some(log) = &report.adversary_log {
                    let attempt = report.honest[0].health.as_ref().map(|h| h.attempt.get());
                    let expected = u16::from(starts_new_attempt(point));
                    assert_eq!(attempt, Some(expected), "{what}: attempt");
                    let victim_attempts: Vec<u16> = log
                        .nonces_by_attempt
                        .keys()
                        .filter(|(i, _)| *i == usize::from(victim))
                        .map(|&(_, a)| a)
                        .collect();
                    // A star member sees no other member's nonce in a session that signs
                    // (ADR 0011): only the star coordinator or a mesh peer can tell.
                    let sees_nonces = shape.0 == Topology::Mesh || !victim_attempts.is_empty();
                    if sees_nonces {
                        assert_eq!(
                            victim_attempts.last(),
                            Some(&expected),
                            "{what}: the witness saw the victim's nonces of {victim_attempts:?}"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(runs, 2 * (5 + 4) * 4);
}

/// With one attempt only (`max_attempts` 1) a restart that needs a new attempt ends the
/// session: every honest node aborts with reason `Restarted`, naming only the restarted
/// signer (what happened to it, not an accusation). A restart that needs none still signs.
#[tokio::test(start_paused = true)]
async fn a_restart_past_the_last_attempt_aborts_naming_only_the_restarted_signer() {
    let mut seed = 1500;
    for shape in SHAPES {
        for victim in 0..WITNESS {
            for point in points(shape.1) {
                seed += 1;
                let what = format!("{shape:?} victim {victim} {point:?} (seed {seed})");
                let report = run(seed, shape, victim, point, Some(1)).await;
                assert_crashed_at(&report, point, &what);
                report.assert_safe();
                if !starts_new_attempt(point) {
                    report.assert_all_signed();
                    continue;
                }
                let restarted = SignerIndex::new(victim).expect("index");
                for h in &report.honest {
                    assert!(
                        matches!(
                            &h.outcome,
                            Outcome::Aborted { reason: AbortReason::Restarted, blamed, .. }
                                if blamed == &vec![restarted]
                        ),
                        "{what}: signer {}: {:?}",
                        h.signer,
                        h.outcome
                    );
                }
            }
        }
    }
}
