//! Authentication and validation: tampering, impersonation, limits, expiry, body rules.

mod common;

use common::*;
use musig2_proto::{
    AbortReason, AggNonceBytes, Announcement, Body, Envelope, Frame, Limits, NonceCommitment,
    PartialSigBytes, ProtoError, PubNonceBytes, RequestedSet, SignedAnnouncement, SignedEnvelope,
    SignerInfo, Topology, Tweak, decode_frame,
};

fn psig_body() -> Body {
    Body::PartialSig {
        attempt: attempt(0),
        partial_sigs: vec![PartialSigBytes::from_bytes([0x42; 32]).expect("valid scalar")],
        aggregate: Some(musig2_proto::AggregateRef([0x24; 32])),
    }
}

fn unnamed_psig_body() -> Body {
    Body::PartialSig {
        attempt: attempt(0),
        partial_sigs: vec![PartialSigBytes::from_bytes([0x42; 32]).expect("valid scalar")],
        aggregate: None,
    }
}

#[test]
fn every_single_byte_change_of_an_announcement_is_rejected() {
    let limits = Limits::default();
    let bytes = signed_announcement(3, Topology::Mesh).to_frame_bytes();
    assert!(
        SignedAnnouncement::decode(&bytes, &limits)
            .expect("decode")
            .verify(NOW, &limits)
            .is_ok()
    );
    for pos in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xFF] {
            let mut t = bytes.clone();
            t[pos] ^= mask;
            let outcome =
                SignedAnnouncement::decode(&t, &limits).and_then(|a| a.verify(NOW, &limits));
            assert!(outcome.is_err(), "byte {pos} ^ {mask:#x} accepted");
        }
    }
}

#[test]
fn every_single_byte_change_of_an_envelope_is_rejected() {
    let limits = Limits::default();
    let a = verified(3, Topology::Mesh);
    for body in [
        psig_body(),
        Body::Nonce {
            attempt: attempt(1),
            pub_nonces: vec![pub_nonce(9)],
        },
    ] {
        let bytes = envelope(&a, 1, 7, body).to_frame_bytes();
        assert!(
            SignedEnvelope::decode(&bytes, &limits)
                .expect("decode")
                .verify(&a)
                .is_ok()
        );
        for pos in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xFF] {
                let mut t = bytes.clone();
                t[pos] ^= mask;
                let outcome = SignedEnvelope::decode(&t, &limits).and_then(|e| e.verify(&a));
                assert!(outcome.is_err(), "byte {pos} ^ {mask:#x} accepted");
            }
        }
    }
}

#[test]
fn envelope_signed_by_j_claiming_i_is_rejected() {
    let a = verified(3, Topology::Mesh);
    // Signer 2's key, claiming index 1.
    let forged = Envelope::sign(&a, idx(1), seq(1), NOW, psig_body(), &keypair(2));
    assert_eq!(
        forged.verify(&a),
        Err(ProtoError::BadEnvelopeSignature { signer: idx(1) })
    );
    assert_eq!(
        forged.verify(&a).expect_err("forged").culprit(),
        None,
        "an unauthenticated index claim must not get signer 1 blamed"
    );
    // The checked signing helper refuses to produce it in the first place.
    assert_eq!(
        a.sign_envelope(idx(1), seq(1), NOW, psig_body(), &keypair(2)),
        Err(ProtoError::KeyMismatch { signer: idx(1) })
    );
    // An index outside the signer set.
    let outside = Envelope::sign(&a, idx(3), seq(1), NOW, psig_body(), &keypair(3));
    assert_eq!(
        outside.verify(&a),
        Err(ProtoError::UnknownSigner {
            index: 3,
            signers: 3
        })
    );
}

#[test]
fn envelope_for_another_session_is_rejected() {
    let a = verified(3, Topology::Mesh);
    let mut other = announcement(3, Topology::Mesh);
    other.salt = [0xCD; 32];
    let other = other
        .sign(&keypair(0), &Limits::default())
        .expect("sign")
        .verify(NOW, &Limits::default())
        .expect("verify");
    assert_ne!(a.session_id(), other.session_id());
    let e = envelope(&other, 1, 1, psig_body());
    assert_eq!(
        e.verify(&a),
        Err(ProtoError::WrongSession { signer: idx(1) })
    );
    assert!(e.verify(&other).is_ok());
}

#[test]
fn sign_verified_holds_what_verify_would_and_refuses_what_verify_would() {
    let limits = Limits::default();
    let ann = announcement(3, Topology::Mesh);
    let verified = ann
        .clone()
        .sign_verified(&keypair(0), NOW, &limits)
        .expect("sign and hold verified");
    let again = verified
        .signed()
        .verify(NOW, &limits)
        .expect("its signature verifies");
    assert_eq!(again.session_id(), verified.session_id());
    assert_eq!(again.signer_keys(), verified.signer_keys());
    assert_eq!(
        ann.clone().sign_verified(&keypair(1), NOW, &limits).err(),
        Some(ProtoError::KeyMismatch { signer: idx(0) })
    );
    let expired = ann.expires_at_ms;
    assert!(matches!(
        ann.sign_verified(&keypair(0), expired, &limits),
        Err(ProtoError::Expired { .. })
    ));
}

#[test]
fn announcement_signed_by_non_creator_is_rejected() {
    let limits = Limits::default();
    let ann = announcement(3, Topology::Mesh);
    assert_eq!(
        ann.clone().sign(&keypair(1), &limits),
        Err(ProtoError::KeyMismatch { signer: idx(0) })
    );
    // Forge: signer 1 signs, but the announcement names creator 0. Build it by signing as
    // creator 1 and then pointing `creator` at 0 via a re-encoding of the content.
    let mut as1 = ann.clone();
    as1.creator = idx(1);
    let signed1 = as1.sign(&keypair(1), &limits).expect("sign as 1");
    assert!(signed1.verify(NOW, &limits).is_ok());
    let mut bytes = signed1.to_frame_bytes();
    // The creator index follows the tweaks; find it by encoding both variants.
    let mut as0_bytes = ann
        .sign(&keypair(0), &limits)
        .expect("sign as 0")
        .to_frame_bytes();
    let sig_start = bytes.len() - 64;
    as0_bytes.truncate(sig_start);
    bytes[..sig_start].copy_from_slice(&as0_bytes);
    let forged = SignedAnnouncement::decode(&bytes, &limits).expect("decodes");
    assert_eq!(forged.announcement().creator, idx(0));
    assert_eq!(
        forged.verify(NOW, &limits).err(),
        Some(ProtoError::BadAnnouncementSignature { creator: idx(0) })
    );
}

#[test]
fn session_id_commits_to_every_field() {
    let base = announcement(3, Topology::Mesh);
    let id = base.session_id();
    let mut variants: Vec<Announcement> = Vec::new();
    let mut v = base.clone();
    v.messages[0].message.push(0);
    variants.push(v);
    let mut v = base.clone();
    v.messages[0].tweaks.clear();
    variants.push(v);
    let mut v = base.clone();
    v.messages[0].tweaks[0] = Tweak::new([0x01; 32], false).expect("valid");
    variants.push(v);
    let mut v = base.clone();
    v.messages.push(v.messages[0].clone());
    variants.push(v);
    let mut v = base.clone();
    v.document_digest = Some([7; 32]);
    variants.push(v);
    let mut v = base.clone();
    v.creator = idx(1);
    variants.push(v);
    let mut v = base.clone();
    v.policy.nonce_commitment = false;
    variants.push(v);
    let mut v = base.clone();
    v.policy.timeouts.broadcast_ms += 1;
    variants.push(v);
    let mut v = base.clone();
    v.salt[31] ^= 1;
    variants.push(v);
    let mut v = base.clone();
    v.created_at_ms += 1;
    variants.push(v);
    let mut v = base.clone();
    v.expires_at_ms += 1;
    variants.push(v);
    let mut v = base.clone();
    v.signers[2].peer_id = None;
    variants.push(v);
    let mut v = base.clone();
    v.signers.swap(0, 1);
    variants.push(v);
    for (i, v) in variants.iter().enumerate() {
        assert_ne!(v.session_id(), id, "variant {i} kept the session id");
    }
}

#[test]
fn verify_id_checks_the_looked_up_id() {
    let s = signed_announcement(2, Topology::Mesh);
    let limits = Limits::default();
    assert!(s.verify_id(&s.session_id(), NOW, &limits).is_ok());
    let other = signed_announcement(3, Topology::Mesh).session_id();
    assert_eq!(
        s.verify_id(&other, NOW, &limits).err(),
        Some(ProtoError::SessionIdMismatch)
    );
}

#[test]
fn expiry_and_clock_skew() {
    let limits = Limits::default();
    let s = signed_announcement(2, Topology::Mesh);
    let exp = s.announcement().expires_at_ms;
    assert!(s.verify(exp - 1, &limits).is_ok());
    assert_eq!(
        s.verify(exp, &limits).err(),
        Some(ProtoError::Expired {
            expires_at_ms: exp,
            now_ms: exp
        })
    );
    let early = NOW - limits.max_clock_skew_ms - 1;
    assert_eq!(
        s.verify(early, &limits).err(),
        Some(ProtoError::NotYetValid {
            created_at_ms: NOW,
            now_ms: early
        })
    );
    assert!(s.verify(NOW - limits.max_clock_skew_ms, &limits).is_ok());
    let mut bad = announcement(2, Topology::Mesh);
    bad.expires_at_ms = bad.created_at_ms;
    assert!(matches!(
        bad.sign(&keypair(0), &limits),
        Err(ProtoError::InvalidValidity { .. })
    ));
}

#[test]
fn duplicate_keys_and_limits() {
    let limits = Limits::default();
    let mut dup = announcement(4, Topology::Mesh);
    dup.signers[3] = SignerInfo::new(keypair(1).public_key());
    assert_eq!(
        dup.validate(&limits),
        Err(ProtoError::DuplicateSignerKey {
            first: idx(1),
            second: idx(3)
        })
    );

    let small = Limits {
        max_signers: 2,
        ..Limits::default()
    };
    let bytes = signed_announcement(3, Topology::Mesh).to_frame_bytes();
    assert_eq!(
        decode_frame(&bytes, &small),
        Err(ProtoError::LimitExceeded {
            what: "signers",
            actual: 3,
            max: 2
        })
    );
    let small = Limits {
        max_message_bytes: 4,
        ..Limits::default()
    };
    assert!(matches!(
        decode_frame(&bytes, &small),
        Err(ProtoError::LimitExceeded {
            what: "message bytes",
            ..
        })
    ));
    let small = Limits {
        max_tweaks: 0,
        ..Limits::default()
    };
    assert!(matches!(
        decode_frame(&bytes, &small),
        Err(ProtoError::LimitExceeded { what: "tweaks", .. })
    ));
    let small = Limits {
        max_frame_bytes: bytes.len() - 1,
        ..Limits::default()
    };
    assert_eq!(
        decode_frame(&bytes, &small),
        Err(ProtoError::FrameTooLarge {
            len: bytes.len(),
            max: bytes.len() - 1
        })
    );

    let mut none = announcement(1, Topology::Mesh);
    none.signers.clear();
    assert!(matches!(
        none.validate(&limits),
        Err(ProtoError::OutOfRange {
            field: "signers",
            ..
        })
    ));
    let mut bad_creator = announcement(2, Topology::Mesh);
    bad_creator.creator = idx(2);
    assert_eq!(
        bad_creator.validate(&limits),
        Err(ProtoError::UnknownSigner {
            index: 2,
            signers: 2
        })
    );
    for zero in [
        |t: &mut musig2_proto::Timeouts| t.join_ms = 0,
        |t: &mut musig2_proto::Timeouts| t.nonce_ms = 0,
    ] {
        let mut zero_timeout = announcement(2, Topology::Mesh);
        zero(&mut zero_timeout.policy.timeouts);
        assert!(matches!(
            zero_timeout.validate(&limits),
            Err(ProtoError::OutOfRange {
                field: "policy timeouts",
                ..
            })
        ));
    }
}

#[test]
fn announcement_with_128_signers_fits_frame_and_dht_record() {
    let limits = Limits::default();
    let s = signed_announcement(128, Topology::Star);
    let bytes = s.to_frame_bytes();
    assert!(bytes.len() <= limits.max_frame_bytes);
    assert!(
        bytes.len() <= 16 * 1024,
        "128-signer announcement is {} bytes",
        bytes.len()
    );
    let decoded = SignedAnnouncement::decode(&bytes, &limits).expect("decode");
    assert!(decoded.verify(NOW, &limits).is_ok());
}

#[test]
fn join_must_match_the_announced_peer_id() {
    let a = verified(3, Topology::Mesh);
    let ok = envelope(&a, 2, 1, Body::Join { peer_id: peer(2) });
    assert!(ok.verify(&a).is_ok());
    let wrong = envelope(&a, 2, 1, Body::Join { peer_id: peer(9) });
    assert_eq!(
        wrong.verify(&a),
        Err(ProtoError::PeerIdMismatch { signer: idx(2) })
    );

    // Without an announced peer id, any peer id binds.
    let mut open = announcement(3, Topology::Mesh);
    open.signers[2].peer_id = None;
    let open = open
        .sign(&keypair(0), &Limits::default())
        .expect("sign")
        .verify(NOW, &Limits::default())
        .expect("verify");
    assert!(
        envelope(&open, 2, 1, Body::Join { peer_id: peer(9) })
            .verify(&open)
            .is_ok()
    );
}

#[test]
fn abort_blame_must_exist() {
    let a = verified(3, Topology::Mesh);
    let ok = envelope(
        &a,
        0,
        1,
        Body::Abort {
            reason: AbortReason::Timeout,
            blamed: Some(idx(2)),
        },
    );
    assert!(ok.verify(&a).is_ok());
    let bad = envelope(
        &a,
        0,
        1,
        Body::Abort {
            reason: AbortReason::Equivocation,
            blamed: Some(idx(3)),
        },
    );
    assert_eq!(
        bad.verify(&a),
        Err(ProtoError::BlamedOutOfRange {
            signer: idx(0),
            blamed: 3
        })
    );
}

#[test]
fn aggregate_nonce_commits_to_the_nonce_set() {
    let a = verified(4, Topology::Star);
    let nonces = nonce_envelopes(&a, 1);
    let (agg, set) = Body::aggregate_nonce(&a, attempt(1), &nonces).expect("aggregate");
    let Body::AggregateNonce {
        agg_nonces,
        nonce_set,
        ..
    } = &agg
    else {
        panic!("wrong body")
    };
    let Body::NonceSet {
        nonces: relayed, ..
    } = &set
    else {
        panic!("wrong body")
    };
    // The aggregate is the sum of the set, and the digest names exactly that set.
    assert_eq!(Body::sum_nonce_set(relayed, 1).as_ref(), Some(agg_nonces));
    assert_eq!(
        *nonce_set,
        Body::nonce_set_digest(&a.session_id(), attempt(1), relayed)
    );
    let mut other = relayed.clone();
    other.swap(1, 2);
    assert_ne!(
        *nonce_set,
        Body::nonce_set_digest(&a.session_id(), attempt(1), &other)
    );
    assert_ne!(
        *nonce_set,
        Body::nonce_set_digest(&a.session_id(), attempt(2), relayed)
    );
    // An AggregateNonce costs one signature check, whatever it claims (the sum is judged only
    // against a revealed set, by the session).
    let mut wrong = agg_nonces[0].to_bytes();
    wrong[33..].copy_from_slice(&point(200));
    let lie = Body::AggregateNonce {
        attempt: attempt(1),
        agg_nonces: vec![AggNonceBytes::from_bytes(wrong).expect("valid")],
        nonce_set: *nonce_set,
    };
    assert!(envelope(&a, 0, 5, lie).verify(&a).is_ok());
    // One aggregate per message.
    let two = Body::AggregateNonce {
        attempt: attempt(1),
        agg_nonces: vec![agg_nonces[0]; 2],
        nonce_set: *nonce_set,
    };
    assert!(matches!(
        envelope(&a, 0, 5, two).verify(&a),
        Err(ProtoError::WrongCount {
            expected: 1,
            found: 2,
            ..
        })
    ));
    // The aggregate reference depends on session, attempt and aggregates only.
    let r = Body::aggregate_ref(&a.session_id(), attempt(1), agg_nonces);
    assert_eq!(
        r,
        Body::aggregate_ref(&a.session_id(), attempt(1), agg_nonces)
    );
    assert_ne!(
        r,
        Body::aggregate_ref(&a.session_id(), attempt(0), agg_nonces)
    );
}

#[test]
fn nonce_set_is_checked_end_to_end() {
    let a = verified(4, Topology::Star);
    let nonces = nonce_envelopes(&a, 1);
    let (_, body) = Body::aggregate_nonce(&a, attempt(1), &nonces).expect("aggregate");
    let env = envelope(&a, 0, 5, body.clone());
    let checked = env.verify(&a).expect("valid nonce set");
    let Body::NonceSet {
        nonces: relayed, ..
    } = checked.body()
    else {
        panic!("wrong body")
    };
    // Relayed nonces rebuild into the original, still-verifiable envelopes.
    for (orig, r) in nonces.iter().zip(relayed) {
        assert_eq!(&r.to_signed_envelope(a.session_id()), orig.signed());
    }
    // Survives the wire.
    let wire = env.to_frame_bytes();
    assert_eq!(
        SignedEnvelope::decode(&wire, &Limits::default()).expect("decode"),
        env
    );
    let Body::NonceSet {
        attempt: att,
        nonces: ns,
    } = body.clone()
    else {
        unreachable!()
    };
    // A relayed nonce whose signature does not verify names the relaying signer.
    let mut tampered = ns.clone();
    tampered[2].pub_nonces = vec![pub_nonce(77)];
    let bad = Body::NonceSet {
        attempt: att,
        nonces: tampered,
    };
    let err = envelope(&a, 0, 5, bad)
        .verify(&a)
        .expect_err("forged relayed nonce");
    assert_eq!(
        err,
        ProtoError::RelayedNonceForged {
            signer: idx(0),
            relayed: idx(2)
        }
    );
    assert_eq!(
        err.culprit(),
        Some(idx(0)),
        "the relaying coordinator is to blame"
    );
    // Missing a signer.
    let short = Body::NonceSet {
        attempt: att,
        nonces: ns[..3].to_vec(),
    };
    assert_eq!(
        envelope(&a, 0, 5, short).verify(&a),
        Err(ProtoError::AggregateNonceIncomplete { signer: idx(0) })
    );
    // Attempt mismatch.
    let mut stale = ns.clone();
    stale[1].attempt = attempt(0);
    let stale = Body::NonceSet {
        attempt: att,
        nonces: stale,
    };
    assert!(matches!(
        envelope(&a, 0, 5, stale).verify(&a),
        Err(ProtoError::AttemptMismatch { signer, relayed, expected: 1, found: 0 })
            if signer == idx(0) && relayed == idx(1)
    ));
    // An empty set does not even decode.
    let empty = envelope(
        &a,
        0,
        5,
        Body::NonceSet {
            attempt: att,
            nonces: Vec::new(),
        },
    );
    assert!(matches!(
        SignedEnvelope::decode(&empty.to_frame_bytes(), &Limits::default()),
        Err(ProtoError::OutOfRange { .. })
    ));
    // Neither star body is allowed in a mesh session.
    let mesh = verified(4, Topology::Mesh);
    let (agg, set) =
        Body::aggregate_nonce(&mesh, attempt(1), &nonce_envelopes(&mesh, 1)).expect("agg");
    for body in [agg, set] {
        assert_eq!(
            envelope(&mesh, 0, 5, body).verify(&mesh),
            Err(ProtoError::UnexpectedAggregateNonce { signer: idx(0) })
        );
    }
}

#[test]
fn a_star_partial_signature_names_its_aggregate_and_a_mesh_one_may() {
    let star = verified(3, Topology::Star);
    let mesh = verified(3, Topology::Mesh);
    let named = |a: &musig2_proto::VerifiedAnnouncement| Body::PartialSig {
        attempt: attempt(0),
        partial_sigs: vec![PartialSigBytes::from_bytes([0x42; 32]).expect("valid scalar")],
        aggregate: Some(Body::aggregate_ref(
            &a.session_id(),
            attempt(0),
            &[agg_nonce(a, 0)],
        )),
    };
    for a in [&star, &mesh] {
        assert!(envelope(a, 1, 1, named(a)).verify(a).is_ok());
    }
    assert_eq!(
        envelope(&star, 1, 1, unnamed_psig_body()).verify(&star),
        Err(ProtoError::AggregateBinding { signer: idx(1) })
    );
    // As mesh sent it before ADR 0023: still verifies (old stores and transcripts); a node
    // refuses it.
    assert!(
        envelope(&mesh, 1, 1, unnamed_psig_body())
            .verify(&mesh)
            .is_ok()
    );
}

#[test]
fn a_request_is_a_mesh_message() {
    let star = verified(3, Topology::Star);
    let mesh = verified(3, Topology::Mesh);
    for set in [RequestedSet::Commitments, RequestedSet::Nonces] {
        let body = Body::Request {
            attempt: attempt(0),
            set,
        };
        assert!(envelope(&mesh, 2, 1, body.clone()).verify(&mesh).is_ok());
        assert_eq!(
            envelope(&star, 2, 1, body).verify(&star),
            Err(ProtoError::UnexpectedRequest { signer: idx(2) })
        );
    }
}

#[test]
fn aggregate_of_opposite_points_is_infinity() {
    let p = point(5);
    let mut neg = p;
    neg[0] ^= 0x01; // 0x02 <-> 0x03 flips the y parity: the negation.
    let mut n1 = [0u8; 66];
    n1[..33].copy_from_slice(&p);
    n1[33..].copy_from_slice(&point(6));
    let mut n2 = [0u8; 66];
    n2[..33].copy_from_slice(&neg);
    n2[33..].copy_from_slice(&point(7));
    let agg = AggNonceBytes::aggregate(&[
        PubNonceBytes::from_bytes(n1).expect("valid"),
        PubNonceBytes::from_bytes(n2).expect("valid"),
    ])
    .expect("non-empty");
    assert_eq!(agg.as_bytes()[..33], [0u8; 33]);
    assert_ne!(agg.as_bytes()[33..], [0u8; 33]);
    assert_eq!(AggNonceBytes::from_bytes(agg.to_bytes()), Ok(agg));
    assert_eq!(AggNonceBytes::aggregate(&[]), None);
}

#[test]
fn an_aggregate_nonce_keeps_the_points_the_core_would_parse() {
    let mut nonces = Vec::new();
    for seed in 0..4u8 {
        let mut n = [0u8; 66];
        n[..33].copy_from_slice(&point(10 + seed));
        n[33..].copy_from_slice(&point(20 + seed));
        nonces.push(n);
    }
    let parsed: Vec<PubNonceBytes> = nonces
        .iter()
        .map(|n| PubNonceBytes::from_bytes(*n).expect("valid"))
        .collect();
    let agg = AggNonceBytes::aggregate(&parsed).expect("non-empty");
    let core = musig2_core::AggNonce::aggregate_bytes(&nonces).expect("valid");
    assert_eq!(agg.to_bytes(), core.to_bytes());
    assert_eq!(agg.to_core(), core);
    // Decoded from bytes, infinity halves included: the same points as the core's own parse.
    let mut half_infinite = agg.to_bytes();
    half_infinite[33..].fill(0);
    for bytes in [agg.to_bytes(), half_infinite, [0u8; 66]] {
        let decoded = AggNonceBytes::from_bytes(bytes).expect("valid");
        assert_eq!(
            decoded.to_core(),
            musig2_core::AggNonce::from_bytes(&bytes).expect("valid")
        );
        assert_eq!(decoded.to_core().to_bytes(), bytes);
    }
}

#[test]
fn nonce_commitment_binds_every_input() {
    let a = verified(3, Topology::Mesh);
    let id = a.session_id();
    let n = pub_nonce(3);
    let n = [n];
    let c = NonceCommitment::compute(&id, idx(1), attempt(0), &n);
    assert!(c.check_reveal(&id, idx(1), attempt(0), &n).is_ok());
    let err = Err(ProtoError::CommitmentMismatch { signer: idx(1) });
    assert_eq!(
        c.check_reveal(&id, idx(1), attempt(0), &[pub_nonce(4)]),
        err
    );
    assert_eq!(c.check_reveal(&id, idx(1), attempt(1), &n), err);
    // The commitment covers every message's nonce, and how many there are.
    assert_eq!(c.check_reveal(&id, idx(1), attempt(0), &[n[0], n[0]]), err);
    let other = signed_announcement(2, Topology::Mesh).session_id();
    assert_eq!(c.check_reveal(&other, idx(1), attempt(0), &n), err);
    assert_eq!(
        c.check_reveal(&id, idx(2), attempt(0), &n),
        Err(ProtoError::CommitmentMismatch { signer: idx(2) })
    );

    let commit = envelope(
        &a,
        1,
        1,
        Body::NonceCommit {
            attempt: attempt(0),
            commitment: c,
        },
    )
    .verify(&a)
    .expect("verify");
    let reveal = envelope(
        &a,
        1,
        2,
        Body::Nonce {
            attempt: attempt(0),
            pub_nonces: n.to_vec(),
        },
    )
    .verify(&a)
    .expect("verify");
    assert!(NonceCommitment::check_reveal_envelopes(&commit, &reveal).is_ok());
    let liar = envelope(
        &a,
        1,
        2,
        Body::Nonce {
            attempt: attempt(0),
            pub_nonces: vec![pub_nonce(4)],
        },
    )
    .verify(&a)
    .expect("verify");
    assert_eq!(NonceCommitment::check_reveal_envelopes(&commit, &liar), err);
}

#[test]
fn batch_frames() {
    let limits = Limits::default();
    let a = verified(3, Topology::Mesh);
    let entries: Vec<SignedEnvelope> = (1..=3).map(|s| envelope(&a, 1, s, psig_body())).collect();
    let bytes = Frame::encode_batch(&entries);
    let Ok(Frame::Batch(decoded)) = decode_frame(&bytes, &limits) else {
        panic!("not a batch")
    };
    assert_eq!(decoded, entries);
    assert!(decoded.iter().all(|e| e.verify(&a).is_ok()));
    let small = Limits {
        max_batch_entries: 2,
        ..Limits::default()
    };
    assert_eq!(
        decode_frame(&bytes, &small),
        Err(ProtoError::LimitExceeded {
            what: "batch entries",
            actual: 3,
            max: 2
        })
    );
    assert!(matches!(
        decode_frame(&Frame::encode_batch(&[]), &limits),
        Err(ProtoError::OutOfRange { field: "batch", .. })
    ));
    assert_eq!(
        SignedEnvelope::decode(&bytes, &limits),
        Err(ProtoError::UnexpectedFrame {
            expected: "envelope",
            found: "batch"
        })
    );
}
