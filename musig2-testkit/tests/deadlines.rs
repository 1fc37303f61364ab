//! Messages arriving just before, at and just after each phase deadline, together with an
//! adversary that withholds or equivocates (issue 11). The adversary (signer 3 of four) times
//! one message to reach the honest nodes 1 ms before the deadline, at it, or 1 ms after it,
//! and sends it honestly, in two versions, or withholds everything after it: as a
//! member (in star the honest signer 0 coordinates) its commitment, nonce or partial
//! signature; as star coordinator the aggregate nonce or the final signature, against the
//! members' longer deadline. Mesh and star, with and without nonce commitments, on the memory
//! network under a paused clock.
//!
//! At every offset the safety property holds and each honest node signs or aborts blaming only
//! the adversary; an honest message just before the deadline signs, and, for the phases that
//! start when the previous one completes, one just after it aborts blaming the adversary. At
//! the deadline itself the timer and the frame fire in the same instant: either outcome is
//! fine, a node may sign while another aborts, and the property must hold either way.

use musig2_proto::{ElectionMethod, Topology};
use musig2_testkit::{Behaviour, LateMessage, Outcome, Scenario, Twist};

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
        LateMessage::Nonce | LateMessage::AggregateNonce => !commitments,
        LateMessage::PartialSig | LateMessage::FinalSignature => false,
    }
}

/// One run: the property, and what the timing decides.
async fn check(
    seed: u64,
    (topology, commitments): (Topology, bool),
    aggregator: bool,
    (message, offset_ms, twist): (LateMessage, i32, Twist),
) -> bool {
    let what = format!(
        "{topology:?} commitments={commitments} {message:?} {twist:?} {offset_ms:+} ms \
         (seed {seed})"
    );
    let mut scenario = Scenario::new(seed, 4)
        .topology(topology)
        .commitments(commitments)
        .adversary(
            3,
            Behaviour::NearDeadline {
                message,
                offset_ms,
                twist,
            },
        );
    if aggregator {
        scenario = scenario.election(ElectionMethod::LastSigner);
    }
    let report = scenario.run().await.expect("scenario runs");
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
    match (twist, offset_ms) {
        // In time and honest: the session signs.
        (Twist::None, -1) => assert_eq!(signed, 3, "{what}: {:?}", report.honest),
        // Too late, for a phase every node started in the same instant: nobody signs.
        (Twist::None, 1) if !round_one(message, commitments) => {
            assert_eq!(signed, 0, "{what}: {:?}", report.honest);
        }
        // Withheld after the late message: nobody can sign.
        (Twist::WithholdRest, _) => assert_eq!(signed, 0, "{what}: {:?}", report.honest),
        _ => {}
    }
    signed != 0 && signed != 3
}

/// The twists that mean something after `message` (nothing follows a partial signature or a
/// final signature).
fn twists(message: LateMessage) -> &'static [Twist] {
    match message {
        LateMessage::PartialSig | LateMessage::FinalSignature => &[Twist::None, Twist::Equivocate],
        _ => &[Twist::None, Twist::Equivocate, Twist::WithholdRest],
    }
}

/// A member (in star: signer 0 coordinates) whose commitment, nonce or partial signature
/// arrives near the deadline, honestly, in two versions, or followed by nothing.
#[tokio::test(start_paused = true)]
async fn near_deadline_arrivals_with_a_withholding_or_equivocating_member() {
    let mut seed = 1300;
    let (mut runs, mut mixed) = (0, 0);
    for shape in SHAPES {
        let messages: &[LateMessage] = if shape.1 {
            &[
                LateMessage::Commitment,
                LateMessage::Nonce,
                LateMessage::PartialSig,
            ]
        } else {
            &[LateMessage::Nonce, LateMessage::PartialSig]
        };
        for &message in messages {
            for &twist in twists(message) {
                for offset_ms in OFFSETS_MS {
                    seed += 1;
                    runs += 1;
                    mixed +=
                        usize::from(check(seed, shape, false, (message, offset_ms, twist)).await);
                }
            }
        }
    }
    assert_eq!(runs, 2 * (8 + 5) * 3, "every combination ran");
    // For the record: how many runs ended with some honest nodes signed and others aborted.
    println!("{runs} runs, {mixed} with mixed outcomes");
}

/// The star coordinator (the adversary, elected by `LastSigner`) whose aggregate nonce or
/// final signature reaches the members near their deadline (half as long again as its own),
/// honestly, in two versions, or followed by nothing.
#[tokio::test(start_paused = true)]
async fn near_deadline_arrivals_from_a_withholding_or_equivocating_star_coordinator() {
    let mut seed = 1390;
    let (mut runs, mut mixed) = (0, 0);
    for commitments in [true, false] {
        for message in [LateMessage::AggregateNonce, LateMessage::FinalSignature] {
            for &twist in twists(message) {
                for offset_ms in OFFSETS_MS {
                    seed += 1;
                    runs += 1;
                    let shape = (Topology::Star, commitments);
                    mixed +=
                        usize::from(check(seed, shape, true, (message, offset_ms, twist)).await);
                }
            }
        }
    }
    assert_eq!(runs, 2 * 5 * 3, "every combination ran");
    println!("{runs} runs, {mixed} with mixed outcomes");
}
