//! ADR 0023: in mesh every envelope travels once, from its author; a node sends its sets only
//! to a signer that asks or that signed under another aggregate, once per signer, attempt and
//! kind.

use super::*;

fn is_request(e: &SignedEnvelope) -> bool {
    matches!(e.envelope().body(), Body::Request { .. })
}

#[test]
fn a_mesh_session_that_goes_well_sends_every_envelope_once_from_its_author() {
    for commit in [false, true] {
        let mut net = Net::new(4, Topology::Mesh, commit);
        net.join_all();
        let (mut relayed, mut requests, mut total) = (0, 0, 0);
        net.run_with(|from, _, e| {
            total += 1;
            relayed += usize::from(e.envelope().signer().as_usize() != from);
            requests += usize::from(is_request(&e));
            vec![e]
        });
        net.assert_all_signed();
        assert_eq!((relayed, requests), (0, 0), "commitments {commit}");
        // Join, (commitment,) nonce and partial signature from each signer to each other one.
        let per_pair = if commit { 4 } else { 3 };
        assert_eq!(total, 4 * 3 * per_pair, "commitments {commit}");
    }
}

/// A three-signer mesh session run as far as it goes while signer 2's nonce never reaches
/// node 1 directly.
fn node_1_without_the_nonce_of_2() -> Net {
    let mut net = Net::new(3, Topology::Mesh, false);
    net.join_all();
    net.run_with(|from, to, e| {
        let nonce = matches!(e.envelope().body(), Body::Nonce { .. });
        if from == 2 && to == 1 && nonce {
            return Vec::new();
        }
        vec![e]
    });
    net
}

#[test]
fn a_node_that_lacks_a_nonce_asks_after_the_delay_and_each_set_is_sent_once() {
    let mut net = node_1_without_the_nonce_of_2();
    assert_eq!(net.machines[1].phase(), Phase::Nonce);
    assert_eq!(net.machines[0].phase(), Phase::PartialSig);
    // Both partial signatures showed node 1 that their authors hold every nonce; it waits.
    assert!(net.machines[1].tick(net.now + 49, &mut net.rng).is_empty());
    net.now += 50;
    let out = net.machines[1].tick(net.now, &mut net.rng);
    let asked: Vec<usize> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send { to, envelopes } if envelopes.iter().all(is_request) => {
                Some(net.index_of(to))
            }
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![0, 2]);
    let request = out
        .iter()
        .find_map(|o| match o {
            Output::Send { envelopes, .. } => envelopes.first().cloned(),
            _ => None,
        })
        .expect("a request");
    net.absorb(1, out);
    net.run();
    net.assert_all_signed();
    // Asked again (a copy re-signed under a new number), node 0 sends nothing more.
    let mut net2 = node_1_without_the_nonce_of_2();
    let body = request.envelope().body().clone();
    let first = net2.machines[1].sign_unrecorded(net2.now, body.clone());
    let second = net2.machines[1].sign_unrecorded(net2.now, body);
    let out = net2.machines[0]
        .handle_envelope(net2.peers[1], first, net2.now, &mut net2.rng)
        .expect("a request of this attempt");
    let answers: Vec<&Vec<SignedEnvelope>> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send { envelopes, .. } => Some(envelopes),
            _ => None,
        })
        .collect();
    // Node 0's nonce set, node 1's own left out: signers 0 and 2.
    assert_eq!(answers.len(), 1);
    let signers: Vec<u16> = answers[0]
        .iter()
        .map(|e| e.envelope().signer().get())
        .collect();
    assert_eq!(signers, vec![0, 2]);
    let out = net2.machines[0]
        .handle_envelope(net2.peers[1], second, net2.now, &mut net2.rng)
        .unwrap_or_default();
    assert!(
        !out.iter().any(|o| matches!(o, Output::Send { .. })),
        "a second request is not answered"
    );
}

#[test]
fn a_partial_signature_under_another_aggregate_is_not_placed_and_gets_our_set_once() {
    let mut net = Net::new(3, Topology::Mesh, false);
    net.join_all();
    // Hold back signer 2's partial signature to node 0.
    let mut held = None;
    net.run_with(|from, to, e| {
        if from == 2 && to == 0 && matches!(e.envelope().body(), Body::PartialSig { .. }) {
            held = Some(e);
            return Vec::new();
        }
        vec![e]
    });
    let held = held.expect("signer 2 signed");
    let Body::PartialSig {
        attempt,
        partial_sigs,
        ..
    } = held.envelope().body().clone()
    else {
        unreachable!()
    };
    let other = Body::PartialSig {
        attempt,
        partial_sigs,
        aggregate: Some(AggregateRef([0xAB; 32])),
    };
    // Signer 2's own lies, each under a number of its own (one number signed twice would be
    // equivocation, ADR 0003).
    let e = held.envelope();
    let numbered = |seq: u64, body: Body| {
        Envelope::sign(
            e.session_id(),
            e.signer(),
            SeqNo::new(e.seq().get() + seq).expect("seq"),
            e.timestamp_ms(),
            body,
            &net.keypairs[2],
        )
    };
    let lie = numbered(10, other);
    let out = net.machines[0]
        .handle_envelope(net.peers[2], lie, net.now, &mut net.rng)
        .expect("answered with our set");
    let sent: Vec<u16> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send { envelopes, .. } => Some(envelopes),
            _ => None,
        })
        .flatten()
        .map(|e| e.envelope().signer().get())
        .collect();
    assert_eq!(
        sent,
        vec![0, 1],
        "node 0's nonce set, signer 2's own left out"
    );
    assert!(net.machines[0].psigs[2].is_none(), "never placed");
    // Another one under another aggregate gets nothing more.
    let lie2 = numbered(
        11,
        Body::PartialSig {
            attempt,
            partial_sigs: vec![PartialSigBytes::from_bytes([9; 32]).expect("scalar")],
            aggregate: Some(AggregateRef([0xCD; 32])),
        },
    );
    let out = net.machines[0]
        .handle_envelope(net.peers[2], lie2, net.now, &mut net.rng)
        .unwrap_or_default();
    assert!(!out.iter().any(|o| matches!(o, Output::Send { .. })));
    // One naming no aggregate (as mesh sent before ADR 0023) is refused, never placed.
    let unnamed = numbered(
        12,
        Body::PartialSig {
            attempt,
            partial_sigs: vec![PartialSigBytes::from_bytes([9; 32]).expect("scalar")],
            aggregate: None,
        },
    );
    let err = net.machines[0]
        .handle_envelope(net.peers[2], unnamed, net.now, &mut net.rng)
        .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::UnexpectedMessage { .. }),
        "{err}"
    );
    assert!(net.machines[0].psigs[2].is_none());
    // The genuine one is still taken, and node 0 signs.
    net.deliver(2, 0, held);
    assert_eq!(net.machines[0].phase(), Phase::Done);
}
