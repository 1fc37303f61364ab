//! ADR 0022: a node that aggregates places a partial signature from its author's own peer
//! before checking its signature, and checks it only once it becomes evidence.

use super::*;
use crate::store::SessionStore;
use crate::transcript::{Transcript, TranscriptLimits};

/// Delivers signer 1's partial signature `env` (signed by another key) from node `from`'s peer
/// to node 0, which must check it on arrival and refuse it, leaving signer 1's slot empty.
fn refused_as_badly_signed_by_0(net: &mut Net, from: usize, env: SignedEnvelope) {
    let err = net.machines[0]
        .handle_envelope(net.peers[from], env, net.now, &mut net.rng)
        .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::InvalidMessage { .. }),
        "{err}"
    );
    assert!(net.machines[0].psigs[1].is_none());
}

/// A session of four in which signer 1's partial signature reaches every other node signed
/// by signer 3's key (its value changed first when `bad_value`), from signer 1's own peer.
/// Also returns the forged envelope.
fn with_forged_psig_of_1(topology: Topology, bad_value: bool) -> (Net, SignedEnvelope) {
    let mut net = Net::new(4, topology, true);
    assert_eq!(net.machines[0].coordinator(), idx(0));
    net.join_all();
    let keypairs = net.keypairs.clone();
    let mut forged = None;
    net.run_with(|from, _, e| {
        if from == 1 && matches!(e.envelope().body(), Body::PartialSig { .. }) {
            let e = if bad_value {
                with_bad_partial_sig(&e, &keypairs[1]).expect("a partial signature")
            } else {
                e
            };
            let e = resign(&e, e.envelope().body().clone(), &keypairs[3]);
            forged = Some(e.clone());
            return vec![e];
        }
        vec![e]
    });
    (net, forged.expect("signer 1 signed"))
}

#[test]
fn a_partial_signature_from_its_authors_peer_is_aggregated_unchecked_and_never_kept_unchecked() {
    for topology in [Topology::Star, Topology::Mesh] {
        // A valid partial signature under a signature by the wrong key: the final signature
        // proves the value, the envelope's signature is never needed. Nothing unchecked is
        // stored, so every stored session still exports a transcript that verifies.
        let (net, _) = with_forged_psig_of_1(topology, false);
        net.assert_all_signed();
        for i in aggregators(topology, 4).into_iter().filter(|&i| i != 1) {
            assert_eq!(stored_psigs_of(&net, i, 1), 0, "{topology:?} node {i}");
            let id = net.machines[i].session_id();
            let stored = net.stores[i].load(&id).unwrap().expect("stored");
            let report = Transcript::from_stored(&stored, Some(idx(i as u16)))
                .verify(&TranscriptLimits::default())
                .expect("the transcript verifies");
            assert!(report.signatures.is_some_and(|(_, valid)| valid));
        }
        // Never checked, so never refused.
        assert!(
            !net.errors
                .iter()
                .any(|(_, e)| matches!(e, CoordinatorError::InvalidMessage { .. })),
            "{topology:?}: {:?}",
            net.errors
        );
    }

    // The same envelope from any other peer is checked first, and refused.
    let mut net = Net::new(4, Topology::Star, true);
    net.join_all();
    let mut held = None;
    net.run_with(|from, _, e| {
        if from == 1 && matches!(e.envelope().body(), Body::PartialSig { .. }) {
            held = Some(e);
            return Vec::new();
        }
        vec![e]
    });
    let genuine = held.expect("signer 1 signed");
    let forged = resign(
        &genuine,
        genuine.envelope().body().clone(),
        &net.keypairs[3],
    );
    refused_as_badly_signed_by_0(&mut net, 2, forged);
    // From its author's peer, the genuine one ends the session.
    let out = net.machines[0]
        .handle_envelope(net.peers[1], genuine, net.now, &mut net.rng)
        .expect("taken");
    net.absorb(0, out);
    net.run();
    net.assert_all_signed();
}

#[test]
fn a_failed_aggregation_checks_what_it_took_unchecked_and_a_bad_signature_blames_nobody_for_it() {
    for topology in [Topology::Star, Topology::Mesh] {
        // Signer 1's partial signature is invalid and carries another key's signature: the
        // aggregation fails, the check drops it, and nobody is named for an invalid partial
        // signature it never signed. The session waits for signer 1, and its deadline names
        // signer 1 alone: it did not deliver a signed partial signature.
        let (mut net, forged) = with_forged_psig_of_1(topology, true);
        for i in aggregators(topology, 4).into_iter().filter(|&i| i != 1) {
            assert!(
                !net.machines[i].phase().is_terminal(),
                "{topology:?} node {i}"
            );
            assert!(net.machines[i].psigs[1].is_none(), "{topology:?} node {i}");
            assert_eq!(net.machines[i].holdouts(), vec![idx(1)]);
            assert_eq!(stored_psigs_of(&net, i, 1), 0);
            // Every other partial signature was checked, and is stored as evidence.
            let others = if topology == Topology::Star {
                vec![2, 3]
            } else {
                (0..4).filter(|&j| j != 1 && j != i).collect()
            };
            for j in others {
                assert_eq!(
                    net.machines[i].psig_unchecked[j],
                    DeferredCheck::None,
                    "{topology:?} node {i}"
                );
                assert_eq!(
                    stored_psigs_of(&net, i, j),
                    1,
                    "{topology:?} node {i} of {j}"
                );
            }
        }
        // Once one failed its check, signer 1's next is checked on arrival: it cannot make a
        // node aggregate and search for culprits again and again.
        let again = resign(&forged, forged.envelope().body().clone(), &net.keypairs[3]);
        refused_as_badly_signed_by_0(&mut net, 1, again);
        net.settle();
        for i in [0, 2, 3] {
            let (reason, blamed, _) = net.abort_of(i).expect("aborted");
            assert_eq!(reason, AbortReason::Timeout, "{topology:?} node {i}");
            assert_eq!(blamed, vec![idx(1)], "{topology:?} node {i}");
        }
    }
    // Signed by its author, the same invalid partial signature is checked on failure, stored
    // as evidence and convicts its author at once:
    // `an_invalid_partial_signature_is_blamed_by_every_honest_node`.
}

#[test]
fn a_partial_signature_taken_unchecked_is_checked_before_another_of_its_author_is_compared() {
    // Coordinator 0 holds signer 1's partial signature unchecked (another key signed it).
    // A second one of signer 1, signed by signer 1 with another value, is not equivocation:
    // the first fails its check and is dropped. Two both signed by signer 1 are.
    for forged_first in [true, false] {
        let mut net = Net::new(3, Topology::Star, false);
        net.join_all();
        let (mut held, mut held_2) = (None, None);
        net.run_with(|from, _, e| {
            if matches!(e.envelope().body(), Body::PartialSig { .. }) {
                match from {
                    1 => held = Some(e),
                    2 => held_2 = Some(e),
                    _ => return vec![e],
                }
                return Vec::new();
            }
            vec![e]
        });
        let genuine = held.expect("signer 1 signed");
        let psig_2 = held_2.expect("signer 2 signed");
        let first = if forged_first {
            resign(
                &genuine,
                genuine.envelope().body().clone(),
                &net.keypairs[2],
            )
        } else {
            genuine.clone()
        };
        let out = net.machines[0]
            .handle_envelope(net.peers[1], first, net.now, &mut net.rng)
            .expect("taken");
        net.absorb(0, out);
        // Signer 2's partial signature is held back: the coordinator cannot aggregate yet.
        assert_eq!(net.machines[0].psig_unchecked[1], DeferredCheck::Pending);
        let other = with_bad_partial_sig(&genuine, &net.keypairs[1]).expect("partial signature");
        let result =
            net.machines[0].handle_envelope(net.peers[1], other.clone(), net.now, &mut net.rng);
        if forged_first {
            let out = result.expect("the second one is taken");
            net.absorb(0, out);
            assert!(net.abort_of(0).is_none());
            assert_eq!(net.machines[0].psig_unchecked[1], DeferredCheck::Failed);
            assert_eq!(
                net.machines[0].psigs[1].as_deref().map(|s| s.1.clone()),
                Some(other)
            );
            // Signed by its author, the invalid one convicts it once the aggregation fails.
            let out = net.machines[0]
                .handle_envelope(net.peers[2], psig_2, net.now, &mut net.rng)
                .expect("taken");
            net.absorb(0, out);
            let (reason, blamed, _) = net.abort_of(0).expect("aborted");
            assert_eq!(reason, AbortReason::InvalidPartialSig);
            assert_eq!(blamed, vec![idx(1)]);
        } else {
            let out = result.expect("the abort goes out");
            net.absorb(0, out);
            let (reason, blamed, _) = net.abort_of(0).expect("aborted");
            assert_eq!(reason, AbortReason::Equivocation);
            assert_eq!(blamed, vec![idx(1)]);
        }
    }
}
