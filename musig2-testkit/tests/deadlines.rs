//! Messages arriving just before, at and just after each phase deadline, together with an
//! adversary that withholds or equivocates (issue 11). The adversary (signer 3 of four; in
//! star a member, the honest signer 0 coordinates) times its commitment, nonce or partial
//! signature to reach the honest nodes at deadline − 1 ms, at the deadline, or at deadline +
//! 1 ms, sends it honestly, in two versions, or withholds everything after it. Mesh and star,
//! with and without nonce commitments, on the memory network under a paused clock.
//!
//! At every offset the safety property holds and each honest node signs or aborts blaming only
//! the adversary; an honest message just before the deadline signs, and, for the phases that
//! start when the previous one completes, one just after it aborts blaming the adversary. At
//! the deadline itself the timer and the frame fire in the same instant: either outcome is
//! fine, a node may sign while another aborts, and the property must hold either way.

use musig2_proto::{AbortReason, Topology};
use musig2_testkit::{Behaviour, LateMessage, Outcome, Report, Scenario, Twist};

/// Every shape of session: topology and nonce commitments.
const SHAPES: [(Topology, bool); 4] = [
    (Topology::Mesh, true),
    (Topology::Mesh, false),
    (Topology::Star, true),
    (Topology::Star, false),
];

const OFFSETS_MS: [i32; 3] = [-1, 0, 1];

/// Whether `message`'s deadline is the end of the join window (round 1) rather than the start
/// of its phase plus the phase timeout.
fn round_one(message: LateMessage, commitments: bool) -> bool {
    match message {
        LateMessage::Commitment => true,
        LateMessage::Nonce => !commitments,
        LateMessage::PartialSig => false,
    }
}

fn all_signed(report: &Report) -> bool {
    report
        .honest
        .iter()
        .all(|h| matches!(h.outcome, Outcome::Signed(_)))
}

#[tokio::test(start_paused = true)]
async fn near_deadline_arrivals_with_a_withholding_or_equivocating_adversary() {
    let mut seed = 1300;
    let mut runs = 0;
    let mut mixed = 0;
    for (topology, commitments) in SHAPES {
        let messages: &[LateMessage] = if commitments {
            &[
                LateMessage::Commitment,
                LateMessage::Nonce,
                LateMessage::PartialSig,
            ]
        } else {
            &[LateMessage::Nonce, LateMessage::PartialSig]
        };
        for &message in messages {
            for twist in [Twist::None, Twist::Equivocate, Twist::WithholdRest] {
                if message == LateMessage::PartialSig && twist == Twist::WithholdRest {
                    // Nothing follows a partial signature: the same run as `Twist::None`.
                    continue;
                }
                for offset_ms in OFFSETS_MS {
                    seed += 1;
                    runs += 1;
                    let what = format!(
                        "{topology:?} commitments={commitments} {message:?} {twist:?} \
                         {offset_ms:+} ms (seed {seed})"
                    );
                    let report = Scenario::new(seed, 4)
                        .topology(topology)
                        .commitments(commitments)
                        .adversary(
                            3,
                            Behaviour::NearDeadline {
                                message,
                                offset_ms,
                                twist,
                            },
                        )
                        .run()
                        .await
                        .expect("scenario runs");
                    let found = report.randomized_violations();
                    assert!(
                        found.is_empty(),
                        "{what}\n{}",
                        report.describe_violations(&found)
                    );
                    report.assert_signed_or_blamed_adversary();
                    let signed = report
                        .honest
                        .iter()
                        .filter(|h| matches!(h.outcome, Outcome::Signed(_)))
                        .count();
                    if signed != 0 && signed != report.honest.len() {
                        mixed += 1;
                    }
                    match (twist, offset_ms) {
                        // In time and honest: the session signs.
                        (Twist::None, -1) => {
                            assert!(all_signed(&report), "{what}: {:?}", report.honest);
                        }
                        // Too late, for a phase every node started in the same instant.
                        (Twist::None, 1) if !round_one(message, commitments) => {
                            report.assert_aborted_blaming_adversary(&[AbortReason::Timeout]);
                        }
                        // Withheld after the late message: nobody can sign.
                        (Twist::WithholdRest, _) => {
                            assert_eq!(signed, 0, "{what}: {:?}", report.honest);
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    assert_eq!(runs, 2 * (8 + 5) * 3, "every combination ran");
    // Informational: how many runs ended with some honest nodes signed and others aborted.
    println!("{runs} runs, {mixed} with mixed outcomes");
}
