//! Batch authentication (ADR 0016): envelopes signed together under one signature over a Merkle
//! root, each carrying its path, verify exactly like directly signed ones on the wire, in nonce
//! sets and under tampering.

mod common;

use std::sync::Arc;

use common::*;
use musig2_proto::{
    Auth, Body, Envelope, Frame, Limits, MAX_AUTH_DEPTH, MAX_BATCH_LEAVES, ProtoError,
    SignedEnvelope, Topology, VerifiedEnvelope, decode_frame,
};

fn batch_of(
    a: &musig2_proto::VerifiedAnnouncement,
    signer: u16,
    count: u64,
    batchable: bool,
) -> Vec<SignedEnvelope> {
    let kp = Arc::new(keypair(usize::from(signer)));
    (1..=count)
        .map(|s| {
            Envelope::sign_batchable(
                a.session_id(),
                idx(signer),
                seq(s),
                NOW,
                Body::Nonce {
                    attempt: attempt(0),
                    pub_nonces: vec![pub_nonce(u8::try_from(s % 200).expect("fits"))],
                },
                kp.clone(),
                batchable,
            )
        })
        .collect()
}

#[test]
fn batch_signed_envelopes_roundtrip_and_verify_and_each_batch_costs_one_signature() {
    let a = verified(3, Topology::Mesh);
    let limits = Limits::default();
    let count = u64::try_from(MAX_BATCH_LEAVES + 3).expect("fits");
    let envs = batch_of(&a, 1, count, true);
    assert!(envs.iter().all(|e| e.sealed_auth().is_none()), "pending");
    SignedEnvelope::seal_batch(&envs);
    let signatures: std::collections::HashSet<[u8; 64]> =
        envs.iter().map(|e| *e.signature()).collect();
    assert_eq!(
        signatures.len(),
        2,
        "64 under one signature, 3 under another"
    );
    for e in &envs {
        let auth = e.sealed_auth().expect("sealed");
        assert!(!auth.is_direct());
        assert!(auth.path().len() <= MAX_AUTH_DEPTH);
        let bytes = e.to_frame_bytes();
        let decoded = SignedEnvelope::decode(&bytes, &limits).expect("decodes");
        assert_eq!(&decoded, e);
        let verified = decoded.verify(&a).expect("verifies");
        assert_eq!(verified.signing_hash(), e.envelope().signing_hash());
    }
    // Under another signer's index, no envelope of the batch verifies.
    let claimed = SignedEnvelope::from_parts(
        Envelope::sign(a.session_id(), idx(2), seq(1), NOW, psig(), &keypair(2))
            .envelope()
            .clone(),
        envs[0].auth().clone(),
    );
    assert!(matches!(
        claimed.verify(&a),
        Err(ProtoError::BadEnvelopeSignature { .. })
    ));
}

fn psig() -> Body {
    Body::PartialSig {
        attempt: attempt(0),
        partial_sigs: vec![musig2_proto::PartialSigBytes::from_bytes([3; 32]).expect("ok")],
        aggregate: Some(musig2_proto::AggregateRef([0x24; 32])),
    }
}

#[test]
fn every_single_byte_change_of_a_batch_signed_envelope_is_rejected() {
    let a = verified(3, Topology::Mesh);
    let limits = Limits::default();
    let envs = batch_of(&a, 2, 5, true);
    SignedEnvelope::seal_batch(&envs);
    let bytes = envs[3].to_frame_bytes();
    assert_eq!(envs[3].auth().path().len(), 3);
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        if let Ok(Frame::Envelope(e)) = decode_frame(&b, &limits) {
            assert!(e.verify(&a).is_err(), "byte {i} flipped still verifies");
        }
    }
}

#[test]
fn paths_past_the_depth_limit_or_indexes_past_the_path_are_refused_when_decoding() {
    let a = verified(2, Topology::Mesh);
    let limits = Limits::default();
    let e = envelope(&a, 1, 1, psig());
    let deep = SignedEnvelope::from_parts(
        e.envelope().clone(),
        Auth::batch(vec![[9; 32]; MAX_AUTH_DEPTH + 1], 0, *e.signature()),
    );
    assert!(matches!(
        decode_frame(&deep.to_frame_bytes(), &limits),
        Err(ProtoError::LimitExceeded { .. })
    ));
    let past = SignedEnvelope::from_parts(
        e.envelope().clone(),
        Auth::batch(vec![[9; 32]; 2], 4, *e.signature()),
    );
    assert!(matches!(
        decode_frame(&past.to_frame_bytes(), &limits),
        Err(ProtoError::OutOfRange { .. })
    ));
    let direct_with_index = SignedEnvelope::from_parts(
        e.envelope().clone(),
        Auth::batch(Vec::new(), 1, *e.signature()),
    );
    assert!(matches!(
        decode_frame(&direct_with_index.to_frame_bytes(), &limits),
        Err(ProtoError::OutOfRange { .. })
    ));
}

#[test]
fn a_pending_envelope_signs_itself_alone_when_first_needed_and_its_copies_agree() {
    let a = verified(2, Topology::Mesh);
    let limits = Limits::default();
    let envs = batch_of(&a, 1, 2, true);
    let copy = envs[0].clone();
    assert_eq!(copy, envs[0], "copies of one pending envelope are equal");
    // Encoding signs it (alone: nothing sealed it).
    let bytes = envs[0].to_frame_bytes();
    assert!(copy.auth().is_direct());
    assert_eq!(
        copy.to_frame_bytes(),
        bytes,
        "the copy shares the signature"
    );
    SignedEnvelope::decode(&bytes, &limits)
        .expect("decodes")
        .verify(&a)
        .expect("verifies");
    // Sealing later leaves a signed envelope alone and signs the rest (one left: alone).
    SignedEnvelope::seal_batch(&envs);
    assert_eq!(envs[0].to_frame_bytes(), bytes);
    assert!(envs[1].auth().is_direct());
    // Not batchable: always alone.
    let alone = batch_of(&a, 1, 3, false);
    SignedEnvelope::seal_batch(&alone);
    assert!(alone.iter().all(|e| e.auth().is_direct()));
}

#[test]
fn a_star_nonce_set_of_batch_signed_nonces_verifies_and_a_swapped_path_does_not() {
    let a = verified(3, Topology::Star);
    // Each signer's nonce signed in a batch with two other envelopes of its own.
    let nonces: Vec<VerifiedEnvelope> = (0..3u16)
        .map(|i| {
            let kp = Arc::new(keypair(usize::from(i)));
            let mk = |s: u64, body: Body| {
                Envelope::sign_batchable(
                    a.session_id(),
                    idx(i),
                    seq(s),
                    NOW,
                    body,
                    kp.clone(),
                    true,
                )
            };
            let nonce = mk(
                2,
                Body::Nonce {
                    attempt: attempt(0),
                    pub_nonces: vec![pub_nonce(u8::try_from(i + 1).expect("fits"))],
                },
            );
            let others = [
                mk(
                    1,
                    Body::Join {
                        peer_id: peer(u8::try_from(i).expect("fits")),
                    },
                ),
                mk(3, psig()),
            ];
            SignedEnvelope::seal_batch([&nonce, &others[0], &others[1]]);
            assert!(!nonce.auth().is_direct());
            nonce.verify(&a).expect("nonce verifies")
        })
        .collect();
    let (agg, set) = Body::aggregate_nonce(&a, attempt(0), &nonces).expect("aggregate");
    let Body::NonceSet {
        nonces: relayed, ..
    } = &set
    else {
        panic!("a nonce set");
    };
    assert!(relayed.iter().all(|sn| !sn.auth.is_direct()));
    let limits = Limits::default();
    let set_env = envelope(&a, 0, 10, set.clone());
    let decoded = SignedEnvelope::decode(&set_env.to_frame_bytes(), &limits).expect("decodes");
    decoded
        .verify(&a)
        .expect("a nonce set of batch-signed nonces verifies");
    envelope(&a, 0, 9, agg)
        .verify(&a)
        .expect("aggregate verifies");
    // Signer 1's nonce with signer 2's authentication: forged.
    let Body::NonceSet {
        attempt: at,
        nonces: mut swapped,
    } = set
    else {
        unreachable!()
    };
    swapped[1].auth = swapped[2].auth.clone();
    let forged = envelope(
        &a,
        0,
        11,
        Body::NonceSet {
            attempt: at,
            nonces: swapped,
        },
    );
    assert!(matches!(
        forged.verify(&a),
        Err(ProtoError::RelayedNonceForged { .. })
    ));
}

/// A creator's announcement and its Join, sealed in one batch (ADR 0017).
fn announcement_with_join() -> (musig2_proto::VerifiedAnnouncement, SignedEnvelope) {
    let kp = Arc::new(keypair(0));
    let a = announcement(2, Topology::Mesh)
        .sign_batchable(kp.clone(), NOW, &Limits::default())
        .expect("sign");
    let join = Envelope::sign_batchable(
        a.session_id(),
        idx(0),
        seq(1),
        NOW,
        Body::Join { peer_id: peer(0) },
        kp,
        true,
    );
    assert!(a.signed().sealed_auth().is_none(), "pending until sealed");
    let mut batch = musig2_proto::Batch::new();
    batch.add_announcement(a.signed()).add_envelope(&join);
    let sealed = batch.seal();
    assert_eq!(sealed.batch_signatures, 1);
    assert_eq!(sealed.batched_envelopes, 2);
    (a, join)
}

#[test]
fn an_announcement_batch_signed_with_an_envelope_verifies_alone_and_shares_one_signature() {
    let limits = Limits::default();
    let (a, join) = announcement_with_join();
    let auth = a.signed().sealed_auth().expect("sealed").clone();
    assert!(!auth.is_direct());
    assert_eq!(auth.signature(), join.signature(), "one signature for both");
    // What a joiner or the DHT gets verifies on its own, under the creator's key.
    let bytes = a.signed().to_frame_bytes();
    let decoded = musig2_proto::SignedAnnouncement::decode(&bytes, &limits).expect("decodes");
    assert_eq!(&decoded, a.signed());
    let verified = decoded.verify(NOW, &limits).expect("verifies");
    assert_eq!(verified.session_id(), a.session_id());
    join.verify(&verified).expect("the join verifies too");
}

#[test]
fn a_batch_path_moved_between_an_announcement_and_an_envelope_or_tampered_does_not_verify() {
    let limits = Limits::default();
    let (a, join) = announcement_with_join();
    let content = a.announcement().clone();
    let bad = |auth: Auth| {
        musig2_proto::SignedAnnouncement::from_parts(content.clone(), auth).verify(NOW, &limits)
    };
    // The Join's path (the other leaf) does not authenticate the announcement, nor the
    // announcement's the Join: the leaves are tagged hashes of different kinds.
    assert!(matches!(
        bad(join.auth().clone()),
        Err(ProtoError::BadAnnouncementSignature { creator }) if creator == idx(0)
    ));
    let swapped = SignedEnvelope::from_parts(join.envelope().clone(), a.signed().auth().clone());
    assert!(matches!(
        swapped.verify(&a),
        Err(ProtoError::BadEnvelopeSignature { .. })
    ));
    // A flipped sibling, index or signature fails, even with the root verified (cached) before.
    let good = a.signed().auth().clone();
    let path = |p: &[[u8; 32]]| p.to_vec();
    let mut sibling = path(good.path());
    sibling[0][3] ^= 1;
    assert!(bad(Auth::batch(sibling, good.index(), *good.signature())).is_err());
    assert!(
        bad(Auth::batch(
            path(good.path()),
            good.index() ^ 1,
            *good.signature()
        ))
        .is_err()
    );
    let mut signature = *good.signature();
    signature[9] ^= 1;
    assert!(bad(Auth::batch(path(good.path()), good.index(), signature)).is_err());
    // Another creator's key under the same path: refused (content signed by signer 1 instead).
    let mut other = content.clone();
    other.creator = idx(1);
    assert!(matches!(
        musig2_proto::SignedAnnouncement::from_parts(other, good.clone()).verify(NOW, &limits),
        Err(ProtoError::BadAnnouncementSignature { .. })
    ));
    // The genuine one still verifies.
    assert!(bad(good).is_ok());
}

#[test]
fn an_announcement_path_deeper_than_the_limit_is_refused_when_decoding() {
    let limits = Limits::default();
    let deep = musig2_proto::SignedAnnouncement::from_parts(
        announcement(2, Topology::Mesh),
        Auth::batch(vec![[1; 32]; MAX_AUTH_DEPTH + 1], 0, [2; 64]),
    );
    assert!(matches!(
        decode_frame(&deep.to_frame_bytes(), &limits),
        Err(ProtoError::LimitExceeded { .. })
    ));
    let wide_index = musig2_proto::SignedAnnouncement::from_parts(
        announcement(2, Topology::Mesh),
        Auth::batch(vec![[1; 32]; 2], 4, [2; 64]),
    );
    assert!(matches!(
        decode_frame(&wide_index.to_frame_bytes(), &limits),
        Err(ProtoError::OutOfRange { .. })
    ));
    // Unsealed and never batched: signed alone on first use, and verifies.
    let alone = announcement(2, Topology::Mesh)
        .sign_batchable(Arc::new(keypair(0)), NOW, &Limits::default())
        .expect("sign");
    let frame = alone.signed().to_frame_bytes();
    assert!(alone.signed().auth().is_direct());
    assert!(matches!(
        decode_frame(&frame, &limits),
        Ok(Frame::Announcement(_))
    ));
    alone.signed().verify(NOW, &limits).expect("verifies");
}

#[test]
fn an_announcement_without_room_for_a_full_path_in_a_frame_is_signed_alone() {
    // Sealed in a batch like any other, but its frame would not fit the node's frame limit with
    // a six-level path: it gets a direct signature, and its frame fits.
    let kp = Arc::new(keypair(0));
    let content = announcement(2, Topology::Mesh);
    let alone_len = content
        .clone()
        .sign(&keypair(0), &Limits::default())
        .expect("sign")
        .to_frame_bytes()
        .len();
    let tight = Limits {
        max_frame_bytes: alone_len + musig2_proto::MAX_AUTH_PATH_BYTES - 1,
        ..Limits::default()
    };
    let roomy = Limits {
        max_frame_bytes: alone_len + musig2_proto::MAX_AUTH_PATH_BYTES,
        ..Limits::default()
    };
    let fill = |a: &musig2_proto::VerifiedAnnouncement| {
        let others: Vec<SignedEnvelope> = (1..=3)
            .map(|s| {
                Envelope::sign_batchable(
                    a.session_id(),
                    idx(0),
                    seq(s),
                    NOW,
                    Body::Join { peer_id: peer(0) },
                    kp.clone(),
                    true,
                )
            })
            .collect();
        let mut batch = musig2_proto::Batch::new();
        batch.add_announcement(a.signed());
        for e in &others {
            batch.add_envelope(e);
        }
        batch.seal();
        others
    };
    let squeezed = content
        .clone()
        .sign_batchable(kp.clone(), NOW, &tight)
        .expect("sign");
    let others = fill(&squeezed);
    assert!(squeezed.signed().sealed_auth().expect("signed").is_direct());
    assert!(
        others
            .iter()
            .all(|e| !e.sealed_auth().expect("sealed").is_direct())
    );
    let frame = squeezed.signed().to_frame_bytes();
    assert!(frame.len() <= tight.max_frame_bytes);
    musig2_proto::SignedAnnouncement::decode(&frame, &tight)
        .expect("decodes")
        .verify(NOW, &tight)
        .expect("verifies");
    let batched = content
        .sign_batchable(kp.clone(), NOW, &roomy)
        .expect("sign");
    fill(&batched);
    assert!(!batched.signed().sealed_auth().expect("signed").is_direct());
}

#[test]
fn our_own_envelope_is_vouched_for_without_a_signature_check_and_nothing_else_is() {
    let a = verified(3, Topology::Mesh);
    let ours = batch_of(&a, 1, 1, true).remove(0);
    let vouched = ours.verified_own(&a).expect("ours");
    // Not even signed yet: no signature was made, let alone checked (`verify` would have had
    // to sign it first).
    assert!(ours.sealed_auth().is_none(), "still pending");
    assert_eq!(vouched.signing_hash(), ours.envelope().signing_hash());
    assert_eq!(vouched.signed(), &ours);
    // It is still ours to sign: the signature, made when needed, verifies like any other.
    let received = SignedEnvelope::decode(&ours.to_frame_bytes(), &Limits::default()).unwrap();
    assert_eq!(received.verify(&a).expect("verifies").signed(), &ours);
    // A received copy is checked, and a bad signature refused.
    let forged = SignedEnvelope::from_parts(
        received.envelope().clone(),
        Envelope::sign(a.session_id(), idx(1), seq(9), NOW, psig(), &keypair(2))
            .auth()
            .clone(),
    );
    assert!(matches!(
        forged.verified_own(&a),
        Err(ProtoError::BadEnvelopeSignature { .. })
    ));
    // Made here, but with a key that is not its signer's: checked, and refused.
    let other_key = Envelope::sign_batchable(
        a.session_id(),
        idx(1),
        seq(2),
        NOW,
        psig(),
        Arc::new(keypair(2)),
        true,
    );
    assert!(matches!(
        other_key.verified_own(&a),
        Err(ProtoError::BadEnvelopeSignature { .. })
    ));
    // Its body is still checked: a nonce count the announcement does not allow is refused.
    let wrong_count = Envelope::sign_batchable(
        a.session_id(),
        idx(1),
        seq(3),
        NOW,
        Body::Nonce {
            attempt: attempt(0),
            pub_nonces: vec![pub_nonce(1), pub_nonce(2)],
        },
        Arc::new(keypair(1)),
        true,
    );
    assert!(wrong_count.verified_own(&a).is_err());
}
