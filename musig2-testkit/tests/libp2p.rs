//! Adversaries over libp2p on loopback (issue 11): every node, the adversary and a flooding
//! outsider run on their own `Libp2pTransport` (TCP + Noise + Yamux on 127.0.0.1), in real
//! time, with deadlines of a few seconds (`libp2p_test_config`). The same adversary code as on
//! the memory network, on a real transport: withholding, an invalid partial signature,
//! malformed frames, a flooding signer and a flooding outsider. Few runs, each a few seconds.

use musig2_proto::{AbortReason, Topology};
use musig2_testkit::{Behaviour, Report, Scenario, libp2p_test_config};

async fn run(scenario: Scenario) -> Report {
    scenario
        .over_libp2p()
        .config(libp2p_test_config())
        .run()
        .await
        .expect("scenario runs")
}

/// A signer that commits and never reveals its nonce: every honest node aborts at the end of
/// the join window blaming exactly it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_withholding() {
    let report = run(Scenario::new(1600, 4).adversary(3, Behaviour::WithholdNonce)).await;
    report.assert_aborted_blaming_adversary(&[AbortReason::Timeout]);
    let log = report.adversary_log.as_ref().expect("log");
    assert!(
        log.frames_delivered >= 3 * 2,
        "join and commitment went out: {log:?}"
    );
}

/// A star member's partial signature that does not verify: the coordinator blames it and the
/// members take the coordinator's verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_invalid_partial_signature() {
    let report = run(Scenario::new(1601, 4)
        .topology(Topology::Star)
        .adversary(2, Behaviour::InvalidPartialSig))
    .await;
    report.assert_aborted_blaming_adversary(&[AbortReason::InvalidPartialSig]);
    assert!(report.adversary_log.as_ref().expect("log").sent_partial_sig);
}

/// An otherwise honest signer that first sends malformed frames (empty, random, truncated,
/// trailing bytes, unknown version, over the protocol's size limit, an over-long batch, a bad
/// signature; one over the transport's limit is refused by its own transport). Every decoder
/// rejects them without harm, the connections stay up, and the session signs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_malformed_frames() {
    let report = run(Scenario::new(1602, 4).adversary(1, Behaviour::MalformedFrames)).await;
    report.assert_all_signed();
    assert!(
        report.rejected_messages().iter().all(|&r| r >= 1),
        "the bad signature was rejected"
    );
    let log = report.adversary_log.as_ref().expect("log");
    assert!(
        log.send_errors.get("frame too large").copied().unwrap_or(0) >= 3,
        "the frame over the transport limit was refused at the sender: {log:?}"
    );
    assert!(
        log.frames_delivered >= 3 * 7,
        "the other malformed frames went out: {log:?}"
    );
}

/// Flooding from raw peers: a signer that sends 300 junk frames to every honest node before
/// following the protocol, and an outsider (no signer) that floods them while a clean session
/// runs. Every honest node blocks the flooding signer at its transport after repeated offences,
/// so its contributions never arrive and it alone is blamed; the outsider cannot stop the
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_flooding() {
    let report = run(Scenario::new(1603, 4).adversary(2, Behaviour::Flood { frames: 300 })).await;
    report.assert_aborted_blaming_adversary(&[AbortReason::Timeout]);
    let log = report.adversary_log.as_ref().expect("log");
    assert!(log.frames_sent >= 3 * 300, "{log:?}");
    assert!(
        log.send_errors.get("unreachable").copied().unwrap_or(0) > 0,
        "blocked: {log:?}"
    );

    let report = run(Scenario::new(1604, 4).outsider_flood(300)).await;
    report.assert_all_signed();
    let stats = report.outsider_flood.expect("flood stats");
    assert_eq!(stats.sent, 4 * 300, "{stats:?}");
}
