//! ADR 0023: in mesh every envelope travels once, from its author; the commitment and nonce
//! sets go only to a signer that asks for them or that signed under other nonces.

use musig2_proto::{AbortReason, SignerIndex};
use musig2_testkit::{Behaviour, Outcome, Report, Scenario};

fn signer(i: u16) -> SignerIndex {
    SignerIndex::new(i).expect("index")
}

async fn run(scenario: Scenario) -> Report {
    scenario.run().await.expect("scenario runs")
}

/// The adversary's nonce reaches every honest signer but 2. Signer 2 cannot sign until a
/// partial signature shows it that someone holds every nonce; it then asks that signer for its
/// nonce set, and everyone signs (without the request it would wait, and be named a holdout by
/// those who signed).
#[tokio::test(start_paused = true)]
async fn a_signer_kept_from_a_nonce_asks_for_the_set_and_everyone_signs() {
    for (seed, commitments) in [(930, false), (931, true)] {
        let report = run(Scenario::new(seed, 4)
            .commitments(commitments)
            .adversary(3, Behaviour::NonceToAllBut { skip: signer(2) }))
        .await;
        report.assert_randomized_safety();
        report.assert_all_signed();
    }
}

/// The adversary's commitment reaches every honest signer but 2 (ADR 0023 with commitments:
/// signer 2 asks a signer whose reveal reached it for the commitments), and everyone signs.
#[tokio::test(start_paused = true)]
async fn a_signer_kept_from_a_commitment_asks_for_the_set_and_everyone_signs() {
    let report =
        run(Scenario::new(932, 4).adversary(3, Behaviour::CommitmentToAllBut { skip: signer(2) }))
            .await;
    report.assert_randomized_safety();
    report.assert_all_signed();
}

/// The adversary's partial signature names an aggregate nonce it was not made under. No honest
/// node judges it (it would be invalid under theirs); each sends the adversary its nonce set
/// once, and the session ends at the deadline naming the adversary alone: its partial signature
/// under the session's aggregate never came.
#[tokio::test(start_paused = true)]
async fn a_partial_signature_under_another_aggregate_is_never_judged() {
    for (seed, commitments) in [(933, false), (934, true)] {
        let report = run(Scenario::new(seed, 4)
            .commitments(commitments)
            .adversary(2, Behaviour::PartialSigUnderOtherAggregate))
        .await;
        report.assert_randomized_safety();
        let reasons = report.assert_aborted_blaming_adversary(&[AbortReason::Timeout]);
        assert_eq!(reasons.len(), 3);
        for h in &report.honest {
            assert!(
                matches!(h.outcome, Outcome::Aborted { .. }),
                "signer {}: {:?}",
                h.signer,
                h.outcome
            );
        }
        // Each of the three honest signers sent its own nonce, then its set (the other two
        // honest signers' nonces and its own) once: 3 + 3 * 3.
        let log = report.adversary_log.as_ref().expect("adversary log");
        assert_eq!(log.nonce_envelopes_received, 12);
    }
}
