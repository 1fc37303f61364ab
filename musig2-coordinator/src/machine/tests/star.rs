//! Star in linear time (ADR 0011): what a member receives and verifies in the happy path, and
//! how blame is found (and proven in transcripts) when a session fails.

use super::*;
use crate::store::SessionStore;
use crate::transcript::{BlameKind, Transcript, TranscriptLimits};

/// Signature checks an envelope costs its receiver at most: its own, plus one per relayed
/// nonce (a NonceSet).
fn signature_checks(env: &SignedEnvelope) -> usize {
    1 + match env.envelope().body() {
        Body::NonceSet { nonces, .. } => nonces.len(),
        _ => 0,
    }
}

/// What one star session costs: per member, the signature checks of everything delivered to
/// it; the coordinator's egress in frame bytes.
struct Costs {
    member_checks: Vec<usize>,
    coordinator_bytes: usize,
}

fn star_session_costs(n: usize, commit: bool) -> Costs {
    let mut net = Net::new(n, Topology::Star, commit);
    assert_eq!(net.machines[1].coordinator(), idx(0));
    net.join_all();
    let mut member_checks = vec![0; n];
    let mut coordinator_bytes = 0;
    net.run_with(|from, to, e| {
        member_checks[to] += signature_checks(&e);
        if from == 0 {
            coordinator_bytes += e.to_frame_bytes().len();
        }
        vec![e]
    });
    net.assert_all_signed();
    member_checks.remove(0);
    Costs {
        member_checks,
        coordinator_bytes,
    }
}

#[test]
fn a_star_member_verifies_a_constant_number_of_signatures_whatever_n() {
    for commit in [false, true] {
        let small = star_session_costs(4, commit);
        let large = star_session_costs(40, commit);
        // The coordinator's join, (with commitments) its commitment, the aggregate nonce and
        // the final signature: the same few envelopes at n = 4 and n = 40.
        let per_member = small.member_checks[0];
        assert!(per_member <= 4, "commit {commit}: {per_member} checks");
        for (n, costs) in [(4, &small), (40, &large)] {
            assert!(
                costs.member_checks.iter().all(|&c| c == per_member),
                "commit {commit}, n {n}: {:?}",
                costs.member_checks
            );
        }
        // The coordinator's egress grows linearly: per member it is the same few frames.
        let per_small = small.coordinator_bytes / 3;
        let per_large = large.coordinator_bytes / 39;
        assert!(
            per_large <= per_small + 16,
            "commit {commit}: {per_small} bytes per member at n = 4, {per_large} at n = 40"
        );
    }
}

/// The partial-signature envelopes members sent, by signer.
fn partial_sigs_of(net: &Net) -> Vec<Option<SignedEnvelope>> {
    net.machines[0]
        .psigs
        .iter()
        .map(|s| s.as_deref().map(|(_, e)| e.clone()))
        .collect()
}

/// Signer `i`'s transcript of the session, verified offline.
fn transcript_of(net: &Net, i: usize) -> crate::transcript::TranscriptReport {
    let id = net.machines[i].session_id();
    let stored = net.stores[i].load(&id).unwrap().expect("stored session");
    Transcript::from_stored(&stored, Some(idx(u16::try_from(i).unwrap())))
        .verify(&TranscriptLimits::default())
        .expect("transcript verifies")
}

/// The coordinator (node 0, driven by the harness here: its own machine only collects) sends
/// every member an aggregate nonce that is not the sum of the nonces it committed to. Each
/// member signs under it (its partial signature names it), so the coordinator's honest machine
/// refuses them and nothing signs. The liar then reveals the set its aggregate committed to:
/// every member finds the lie itself (the set does not sum to the aggregate), aborts blaming
/// the coordinator, and its transcript proves it; no honest signer is blamed, by a finding or
/// by a transcript, and every member's partial signature checks out under the aggregate it
/// names.
#[test]
fn a_lying_star_aggregator_is_proven_and_no_honest_member_is_blamed() {
    for commit in [false, true] {
        let n = 4;
        let mut net = Net::new(n, Topology::Star, commit);
        net.join_all();
        let liar = net.keypairs[0];
        let mut lie = other_nonce(&mut ChaCha20Rng::seed_from_u64(5), &liar);
        lie = PubNonceBytes::from_bytes(lie.to_bytes()).unwrap();
        let wrong = musig2_proto::AggNonceBytes::aggregate(&[lie]).unwrap();
        net.run_with(|from, _, e| match e.envelope().body() {
            Body::AggregateNonce {
                attempt, nonce_set, ..
            } if from == 0 => {
                let body = Body::AggregateNonce {
                    attempt: *attempt,
                    agg_nonces: vec![wrong],
                    nonce_set: *nonce_set,
                };
                vec![resign(&e, body, &liar)]
            }
            _ => vec![e],
        });
        for i in 1..n {
            assert_eq!(net.machines[i].phase(), Phase::PartialSig, "node {i}");
            assert!(net.abort_of(i).is_none(), "node {i}");
        }
        // Its honest machine refused the partial signatures made under the lie, unjudged.
        assert!(partial_sigs_of(&net).iter().skip(1).all(Option::is_none));
        // The liar reveals the nonce set it committed to.
        let (_, set) = net.machines[0].star_bodies().expect("every nonce");
        let reveal = Envelope::sign(
            net.machines[0].session_id(),
            idx(0),
            net.machines[0].next_seq,
            net.now,
            set,
            &liar,
        );
        for i in 1..n {
            net.deliver(0, i, reveal.clone());
        }
        for i in 1..n {
            let (reason, blamed, origin) = net.abort_of(i).expect("aborted");
            assert_eq!(reason, AbortReason::InvalidAggregateNonce, "node {i}");
            assert_eq!(blamed, vec![idx(0)], "commit {commit} node {i}");
            assert_eq!(origin, AbortOrigin::Local, "node {i}");
            let report = transcript_of(&net, i);
            assert!(
                report.proofs.iter().all(|p| p.signer == idx(0)),
                "node {i}: {:?}",
                report.proofs
            );
            assert!(
                report
                    .proofs
                    .iter()
                    .any(|p| p.kind == BlameKind::AggregateNonceMismatch),
                "node {i}: {:?}",
                report.proofs
            );
            // Its own partial signature was judged under the aggregate it names: valid.
            assert_eq!(report.partial_sigs_checked, 1, "node {i}");
        }
    }
}

/// A member whose partial signature does not verify: the coordinator names it and hands every
/// member the evidence (the nonce set, every partial signature); each member checks it itself
/// and names the same culprit (its own finding), and its transcript proves it offline.
#[test]
fn a_bad_star_partial_signature_is_proven_by_every_member_and_in_its_transcript() {
    for commit in [false, true] {
        let n = 5;
        let mut net = Net::new(n, Topology::Star, commit);
        net.join_all();
        let cheat = net.keypairs[2];
        let mut relayed_sets = 0;
        net.run_with(|from, to, e| {
            if let Body::NonceSet { .. } = e.envelope().body() {
                relayed_sets += usize::from(from == 0 && to != 0);
            }
            if from == 2 && e.envelope().signer() == idx(2) {
                if let Some(bad) = with_bad_partial_sig(&e, &cheat) {
                    return vec![bad];
                }
            }
            vec![e]
        });
        assert_eq!(relayed_sets, n - 1, "the evidence went to every member");
        for i in (0..n).filter(|&i| i != 2) {
            let (reason, blamed, origin) = net.abort_of(i).expect("aborted");
            assert_eq!(reason, AbortReason::InvalidPartialSig, "node {i}");
            assert_eq!(blamed, vec![idx(2)], "commit {commit} node {i}");
            assert_eq!(origin, AbortOrigin::Local, "node {i}: its own finding");
            let report = transcript_of(&net, i);
            assert_eq!(report.proofs.len(), 1, "node {i}: {:?}", report.proofs);
            assert_eq!(report.proofs[0].signer, idx(2));
            assert_eq!(report.proofs[0].kind, BlameKind::InvalidPartialSig);
            assert_eq!(report.partial_sigs_checked, n, "node {i}");
        }
    }
}

/// A nonce set costs a member n signature checks, so it takes one only when it signed under an
/// aggregate of that attempt and holds no set yet; anything else is refused before any check.
#[test]
fn an_unasked_nonce_set_is_refused_before_any_signature_check() {
    let mut net = Net::new(4, Topology::Star, false);
    net.join_all();
    let mut aggregate = None;
    // Hold the aggregate back: the members have not signed.
    net.run_with(|_, _, e| {
        if matches!(e.envelope().body(), Body::AggregateNonce { .. }) {
            aggregate = Some(e);
            Vec::new()
        } else {
            vec![e]
        }
    });
    let (_, set) = net.machines[0].star_bodies().expect("every nonce");
    let reveal = Envelope::sign(
        net.machines[0].session_id(),
        idx(0),
        net.machines[0].next_seq,
        net.now,
        set,
        &net.keypairs[0],
    );
    let before = net.errors.len();
    net.deliver(0, 1, reveal.clone());
    assert!(matches!(
        net.errors[before..],
        [(1, CoordinatorError::Superseded { .. })]
    ));
    // From a non-coordinator: refused the same way, whoever signed it.
    let forged = resign(&reveal, reveal.envelope().body().clone(), &net.keypairs[3]);
    net.deliver(3, 1, forged);
    assert_eq!(net.errors.len(), before + 2);
    assert!(net.abort_of(1).is_none());
    // Once signed under an aggregate, a member takes the set once, then refuses copies unverified.
    net.deliver(0, 1, aggregate.unwrap());
    assert_eq!(net.machines[1].phase(), Phase::PartialSig);
    net.deliver(0, 1, reveal.clone());
    assert!(net.machines[1].nonce_set_env.is_some());
    let again = Envelope::sign(
        net.machines[0].session_id(),
        idx(0),
        net.machines[0].next_seq.next().unwrap(),
        net.now,
        reveal.envelope().body().clone(),
        &net.keypairs[0],
    );
    let before = net.errors.len();
    net.deliver(0, 1, again);
    assert!(matches!(
        net.errors[before..],
        [(1, CoordinatorError::Superseded { .. })]
    ));
    assert!(net.abort_of(1).is_none());
}
