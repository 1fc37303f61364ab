//! Property tests: every type round-trips through the canonical encoding, and decoding random or
//! mutated bytes never panics.

mod common;

use common::*;
use musig2_proto::{
    AbortReason, AggNonceBytes, Announcement, Attempt, Body, ElectionMethod, Frame, Limits,
    MessageToSign, NonceCommitment, PartialSigBytes, PeerIdBytes, Policy, ProtoError, SeqNo,
    Signature64, SignedAnnouncement, SignedEnvelope, SignerIndex, SignerInfo, Timeouts, Topology,
    Tweak, decode_frame,
};
use proptest::prelude::*;

fn any_peer() -> impl Strategy<Value = PeerIdBytes> {
    proptest::collection::vec(any::<u8>(), 1..=64)
        .prop_map(|v| PeerIdBytes::new(v).expect("len ok"))
}

fn any_scalar() -> impl Strategy<Value = [u8; 32]> {
    // Top byte below 0xFF keeps the value under the curve order.
    any::<[u8; 32]>().prop_map(|mut b| {
        b[0] &= 0x7F;
        b
    })
}

fn any_attempt() -> impl Strategy<Value = Attempt> {
    (0..=Attempt::MAX).prop_map(attempt)
}

fn any_policy() -> impl Strategy<Value = Policy> {
    (
        any::<bool>(),
        prop_oneof![
            Just(ElectionMethod::Lexicographic),
            Just(ElectionMethod::HashBased),
            Just(ElectionMethod::FirstSigner),
            Just(ElectionMethod::LastSigner)
        ],
        prop_oneof![Just(Topology::Mesh), Just(Topology::Star)],
        [
            1u64..=u64::MAX,
            1u64..=u64::MAX,
            1u64..=u64::MAX,
            1u64..=u64::MAX,
            1u64..=u64::MAX,
        ],
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(
            |(nonce_commitment, election, topology, t, max_attempts, max_failovers)| Policy {
                nonce_commitment,
                election,
                topology,
                timeouts: Timeouts {
                    join_ms: t[0],
                    nonce_ms: t[1],
                    partial_sig_ms: t[2],
                    broadcast_ms: t[3],
                    session_ms: t[4],
                },
                max_attempts,
                max_failovers,
            },
        )
}

prop_compose! {
    fn any_announcement()(
        n in 1usize..6,
        messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..4),
        tweaks in proptest::collection::vec(proptest::collection::vec((any_scalar(), any::<bool>()), 0..4), 4),
        creator_pick in any::<usize>(),
        policy in any_policy(),
        salt in any::<[u8; 32]>(),
        created in 0u64..u64::MAX / 2,
        ttl in 1u64..1_000_000_000,
        peers in proptest::collection::vec(proptest::option::of(any_peer()), 6),
        document_digest in proptest::option::of(any::<[u8; 32]>()),
    ) -> (Announcement, usize) {
        let creator = creator_pick % n;
        let a = Announcement {
            signers: (0..n).map(|i| SignerInfo { key: keypair(i).public_key(), peer_id: peers[i].clone() }).collect(),
            messages: messages
                .into_iter()
                .zip(tweaks)
                .map(|(message, tweaks)| MessageToSign {
                    message,
                    tweaks: tweaks.into_iter().map(|(v, x)| Tweak::new(v, x).expect("valid")).collect(),
                })
                .collect(),
            creator: SignerIndex::try_from(creator).expect("small"),
            policy,
            salt,
            created_at_ms: created,
            expires_at_ms: created + ttl,
            document_digest,
        };
        (a, creator)
    }
}

fn any_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        any_peer().prop_map(|peer_id| Body::Join { peer_id }),
        (any_attempt(), any::<[u8; 32]>()).prop_map(|(attempt, c)| Body::NonceCommit {
            attempt,
            commitment: NonceCommitment::from_bytes(c),
        }),
        (any_attempt(), proptest::collection::vec(any::<u8>(), 1..4)).prop_map(|(attempt, s)| {
            Body::Nonce {
                attempt,
                pub_nonces: s.into_iter().map(pub_nonce).collect(),
            }
        }),
        (
            any_attempt(),
            proptest::collection::vec(any_scalar(), 1..4),
            proptest::option::of(any::<[u8; 32]>()),
        )
            .prop_map(|(attempt, s, aggregate)| Body::PartialSig {
                attempt,
                partial_sigs: s
                    .into_iter()
                    .map(|s| PartialSigBytes::from_bytes(s).expect("valid"))
                    .collect(),
                aggregate: aggregate.map(musig2_proto::AggregateRef),
            }),
        (
            any_attempt(),
            proptest::collection::vec((any::<[u8; 32]>(), any::<[u8; 32]>()), 1..4)
        )
            .prop_map(|(attempt, halves)| {
                let signatures = halves
                    .into_iter()
                    .map(|(a, b)| {
                        let mut signature = [0u8; 64];
                        signature[..32].copy_from_slice(&a);
                        signature[32..].copy_from_slice(&b);
                        Signature64(signature)
                    })
                    .collect();
                Body::FinalSignature {
                    attempt,
                    signatures,
                }
            }),
        (
            any_attempt(),
            proptest::collection::vec(any::<u8>(), 0..=256)
        )
            .prop_map(|(attempt, receipt)| Body::BroadcastConfirmed { attempt, receipt }),
        (any_attempt(), any::<u16>())
            .prop_map(|(attempt, rank)| Body::FailoverClaim { attempt, rank }),
        (0usize..13, proptest::option::of(0..=SignerIndex::MAX)).prop_map(|(r, b)| Body::Abort {
            reason: [
                AbortReason::Timeout,
                AbortReason::Expired,
                AbortReason::InvalidNonce,
                AbortReason::CommitmentMismatch,
                AbortReason::InvalidPartialSig,
                AbortReason::InvalidAggregateNonce,
                AbortReason::Equivocation,
                AbortReason::FailoverExhausted,
                AbortReason::Cancelled,
                AbortReason::Internal,
                AbortReason::Misrouted,
                AbortReason::Restarted,
                AbortReason::InvalidClaim,
            ][r],
            blamed: b.map(idx),
        }),
        any_attempt().prop_map(|attempt| Body::Restart { attempt }),
        (any_attempt(), any::<bool>()).prop_map(|(attempt, nonces)| Body::Request {
            attempt,
            set: if nonces {
                musig2_proto::RequestedSet::Nonces
            } else {
                musig2_proto::RequestedSet::Commitments
            },
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn announcement_round_trips_and_verifies((a, creator) in any_announcement()) {
        let limits = Limits::default();
        let now = a.created_at_ms;
        let id = a.session_id();
        let signed = a.clone().sign(&keypair(creator), &limits).expect("sign");
        let bytes = signed.to_frame_bytes();
        let decoded = SignedAnnouncement::decode(&bytes, &limits).expect("decode");
        prop_assert_eq!(&decoded, &signed);
        prop_assert_eq!(decoded.announcement(), &a);
        let v = decoded.verify(now, &limits).expect("verify");
        prop_assert_eq!(v.session_id(), id);
        prop_assert_eq!(Frame::Announcement(signed).encode(), bytes);
    }

    #[test]
    fn envelope_round_trips_and_verifies(body in any_body(), s in 1u64.., ts in any::<u64>(), who in 0u16..3) {
        let a = verified(3, Topology::Star);
        let e = musig2_proto::Envelope::sign(&a, idx(who), seq(s), ts, body.clone(), &keypair(usize::from(who)));
        let bytes = e.to_frame_bytes();
        let decoded = SignedEnvelope::decode(&bytes, &Limits::default()).expect("decode");
        prop_assert_eq!(&decoded, &e);
        prop_assert_eq!(decoded.envelope().body(), &body);
        match decoded.verify(&a) {
            Ok(v) => {
                prop_assert_eq!(v.signer(), idx(who));
                prop_assert_eq!(v.seq(), seq(s));
                prop_assert_eq!(v.timestamp_ms(), ts);
            }
            // Abort may blame an index outside the 3-signer set; everything else must verify.
            Err(ProtoError::BlamedOutOfRange { .. }) => {
                let blames_outside = matches!(body, Body::Abort { blamed: Some(b), .. } if b.get() >= 3);
                prop_assert!(blames_outside);
            }
            // A Join from a peer id other than the announced one.
            Err(ProtoError::PeerIdMismatch { signer }) => {
                prop_assert_eq!(signer, idx(who));
                let other_peer = matches!(&body, Body::Join { peer_id } if *peer_id != peer(u8::try_from(who).expect("small")));
                prop_assert!(other_peer);
            }
            // A per-message list of another length than the session's one message.
            Err(ProtoError::WrongCount { signer, expected: 1, found, .. }) => {
                prop_assert_eq!(signer, idx(who));
                prop_assert!(found > 1);
                let listed = match &body {
                    Body::Nonce { pub_nonces, .. } => pub_nonces.len(),
                    Body::PartialSig { partial_sigs, .. } => partial_sigs.len(),
                    Body::FinalSignature { signatures, .. } => signatures.len(),
                    _ => 1,
                };
                prop_assert_eq!(listed, found);
            }
            // A star partial signature must name its aggregate nonce (ADR 0011).
            Err(ProtoError::AggregateBinding { signer }) => {
                prop_assert_eq!(signer, idx(who));
                let unnamed = matches!(&body, Body::PartialSig { aggregate: None, .. });
                prop_assert!(unnamed);
            }
            // A request belongs to mesh sessions (ADR 0023); this one is star.
            Err(ProtoError::UnexpectedRequest { signer }) => {
                prop_assert_eq!(signer, idx(who));
                let request = matches!(&body, Body::Request { .. });
                prop_assert!(request);
            }
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
    }

    #[test]
    fn batch_round_trips(bodies in proptest::collection::vec(any_body(), 1..8)) {
        let a = verified(2, Topology::Mesh);
        let entries: Vec<SignedEnvelope> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, b)| envelope(&a, 1, u64::try_from(i).expect("small") + 1, b))
            .collect();
        let bytes = Frame::encode_batch(&entries);
        prop_assert_eq!(decode_frame(&bytes, &Limits::default()), Ok(Frame::Batch(entries)));
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(frame) = decode_frame(&bytes, &Limits::default()) {
            prop_assert_eq!(frame.encode(), bytes);
        }
    }

    #[test]
    fn mutated_frames_never_panic_and_stay_canonical(
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let a = verified(3, Topology::Star);
        let (agg, set) = Body::aggregate_nonce(&a, attempt(0), &nonce_envelopes(&a, 0)).expect("agg");
        for mut bytes in [
            signed_announcement(3, Topology::Star).to_frame_bytes(),
            envelope(&a, 0, 1, agg.clone()).to_frame_bytes(),
            envelope(&a, 0, 1, set.clone()).to_frame_bytes(),
        ] {
            let p = pos.index(bytes.len());
            bytes[p] = byte;
            bytes.truncate(cut.index(bytes.len()) + 1);
            if let Ok(frame) = decode_frame(&bytes, &Limits::default()) {
                prop_assert_eq!(frame.encode(), bytes);
            }
        }
    }

    #[test]
    fn newtypes_validate(v in any::<u16>(), s in any::<u64>(), raw in any::<[u8; 32]>(), pn in any::<[u8; 32]>()) {
        prop_assert_eq!(SignerIndex::new(v).is_ok(), v <= SignerIndex::MAX);
        prop_assert_eq!(Attempt::new(v).is_ok(), v <= Attempt::MAX);
        prop_assert_eq!(SeqNo::new(s).is_ok(), s >= 1);
        let in_range = secp256k1::Scalar::from_be_bytes(raw).is_ok();
        prop_assert_eq!(PartialSigBytes::from_bytes(raw).is_ok(), in_range);
        prop_assert_eq!(Tweak::new(raw, true).is_ok(), in_range);
        let mut p = [0u8; 33];
        p[0] = 0x02;
        p[1..].copy_from_slice(&pn);
        let valid = secp256k1::PublicKey::from_byte_array_compressed(p).is_ok();
        let mut agg = [0u8; 66];
        agg[..33].copy_from_slice(&p);
        prop_assert_eq!(AggNonceBytes::from_bytes(agg).is_ok(), valid);
    }
}

#[test]
fn decode_errors_are_typed() {
    let limits = Limits::default();
    let a = verified(2, Topology::Mesh);
    let good = envelope(
        &a,
        1,
        1,
        Body::PartialSig {
            attempt: attempt(0),
            partial_sigs: vec![PartialSigBytes::from_bytes([1; 32]).expect("ok")],
            aggregate: Some(musig2_proto::AggregateRef([0x24; 32])),
        },
    )
    .to_frame_bytes();

    // Trailing bytes.
    let mut t = good.clone();
    t.push(0);
    assert_eq!(
        decode_frame(&t, &limits),
        Err(ProtoError::TrailingBytes { count: 1 })
    );
    // Truncated.
    assert!(matches!(
        decode_frame(&good[..good.len() - 1], &limits),
        Err(ProtoError::Malformed { .. })
    ));
    assert!(matches!(
        decode_frame(&[], &limits),
        Err(ProtoError::Malformed { .. })
    ));
    // Unknown frame tag.
    assert!(matches!(
        decode_frame(&[7, 1, 2, 3], &limits),
        Err(ProtoError::Malformed { .. })
    ));
    // Unknown version.
    let mut v = good.clone();
    v[1] = musig2_proto::PROTOCOL_VERSION + 1;
    assert_eq!(
        decode_frame(&v, &limits),
        Err(ProtoError::UnsupportedVersion {
            version: musig2_proto::PROTOCOL_VERSION + 1,
            supported: musig2_proto::PROTOCOL_VERSION
        })
    );

    // Layout: [1 frame tag][1 version][32 session id][signer varint][seq varint][ts varint][body...]
    let signer_pos = 2 + 32;
    // Non-canonical varint: signer 1 as 0x81 0x00 (and keep everything else).
    let mut nc = good[..signer_pos].to_vec();
    nc.extend_from_slice(&[0x81, 0x00]);
    nc.extend_from_slice(&good[signer_pos + 1..]);
    assert_eq!(decode_frame(&nc, &limits), Err(ProtoError::NonCanonical));
    // Signer index out of range: 4096 = 0x80 0x20.
    let mut big = good[..signer_pos].to_vec();
    big.extend_from_slice(&[0x80, 0x20]);
    big.extend_from_slice(&good[signer_pos + 1..]);
    assert!(matches!(
        decode_frame(&big, &limits),
        Err(ProtoError::OutOfRange {
            field: "signer index",
            ..
        })
    ));
    // Sequence number 0.
    let mut zero = good.clone();
    assert_eq!(zero[signer_pos + 1], 1, "seq is 1");
    zero[signer_pos + 1] = 0;
    assert!(matches!(
        decode_frame(&zero, &limits),
        Err(ProtoError::OutOfRange {
            field: "sequence number",
            ..
        })
    ));
    // Partial signature >= n: the last 32 bytes before the `aggregate` option (some: one
    // byte and 32) and the direct authentication (empty path, index 0, 64-byte signature).
    let mut s = good.clone();
    let at = s.len() - 64 - 2 - 1 - 32 - 32;
    s[at..at + 32].copy_from_slice(&[0xFF; 32]);
    assert_eq!(
        decode_frame(&s, &limits),
        Err(ProtoError::InvalidScalar {
            field: "partial signature"
        })
    );

    // Invalid point in a nonce.
    let nonce = envelope(
        &a,
        1,
        1,
        Body::Nonce {
            attempt: attempt(0),
            pub_nonces: vec![pub_nonce(1)],
        },
    )
    .to_frame_bytes();
    let mut p = nonce.clone();
    let at = p.len() - 64 - 2 - 66;
    p[at] = 0x05;
    assert_eq!(
        decode_frame(&p, &limits),
        Err(ProtoError::InvalidPoint {
            field: "public nonce R1"
        })
    );
    let mut p = nonce.clone();
    let at = p.len() - 64 - 2 - 33;
    p[at + 1..at + 33].copy_from_slice(&[0xFF; 32]);
    assert_eq!(
        decode_frame(&p, &limits),
        Err(ProtoError::InvalidPoint {
            field: "public nonce R2"
        })
    );
    // A bool byte other than 0/1 is rejected, not read as true: find the policy's
    // `nonce_commitment` byte as the first difference between two encodings.
    let on = signed_announcement(2, Topology::Mesh).to_frame_bytes();
    let mut off_ann = announcement(2, Topology::Mesh);
    off_ann.policy.nonce_commitment = false;
    let off = off_ann
        .sign(&keypair(0), &limits)
        .expect("sign")
        .to_frame_bytes();
    let at = on
        .iter()
        .zip(&off)
        .position(|(x, y)| x != y)
        .expect("they differ");
    assert_eq!((on[at], off[at]), (1, 0));
    let mut b = on.clone();
    b[at] = 2;
    assert!(matches!(
        decode_frame(&b, &limits),
        Err(ProtoError::Malformed { .. })
    ));
}

#[test]
fn invalid_signer_key_in_announcement_is_typed() {
    let limits = Limits::default();
    let bytes = signed_announcement(2, Topology::Mesh).to_frame_bytes();
    // [tag][version][signers len][key0: 33 bytes]...
    let mut b = bytes.clone();
    b[3] = 0x04;
    assert_eq!(
        decode_frame(&b, &limits),
        Err(ProtoError::InvalidPoint {
            field: "signer key"
        })
    );
    let mut b = bytes;
    b[4..36].copy_from_slice(&[0xFF; 32]);
    assert_eq!(
        decode_frame(&b, &limits),
        Err(ProtoError::InvalidPoint {
            field: "signer key"
        })
    );
}

fn postcard_round_trip<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let bytes = postcard::to_allocvec(value).expect("encode");
    postcard::from_bytes(&bytes).expect("decode")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_newtype_round_trips_and_rejects_invalid_values(
        i in 0..=SignerIndex::MAX,
        s in 1u64..,
        att in 0..=Attempt::MAX,
        sc in any_scalar(),
        x in any::<bool>(),
        p in any_peer(),
        seed in any::<u8>(),
        id in any::<[u8; 32]>(),
        policy in any_policy(),
    ) {
        prop_assert_eq!(postcard_round_trip(&idx(i)), idx(i));
        prop_assert_eq!(postcard_round_trip(&seq(s)), seq(s));
        prop_assert_eq!(postcard_round_trip(&attempt(att)), attempt(att));
        let t = Tweak::new(sc, x).expect("valid");
        prop_assert_eq!(postcard_round_trip(&t), t);
        prop_assert_eq!(postcard_round_trip(&p), p.clone());
        prop_assert_eq!(postcard_round_trip(&pub_nonce(seed)), pub_nonce(seed));
        let ps = PartialSigBytes::from_bytes(sc).expect("valid");
        prop_assert_eq!(postcard_round_trip(&ps), ps);
        let sid = musig2_proto::SessionId::from_bytes(id);
        prop_assert_eq!(postcard_round_trip(&sid), sid);
        let nc = NonceCommitment::from_bytes(id);
        prop_assert_eq!(postcard_round_trip(&nc), nc);
        prop_assert_eq!(postcard_round_trip(&policy), policy);
        let agg = AggNonceBytes::aggregate(&[pub_nonce(seed), pub_nonce(seed.wrapping_add(1))]).expect("non-empty");
        prop_assert_eq!(postcard_round_trip(&agg), agg);
    }

    #[test]
    fn aggregate_nonce_envelope_round_trips(att in 0..=Attempt::MAX, s in 1u64..) {
        let a = verified(3, Topology::Star);
        let (agg, set) = Body::aggregate_nonce(&a, attempt(att), &nonce_envelopes(&a, att)).expect("aggregate");
        for body in [agg, set] {
            let e = envelope(&a, 0, s, body);
            let decoded = SignedEnvelope::decode(&e.to_frame_bytes(), &Limits::default()).expect("decode");
            prop_assert_eq!(&decoded, &e);
            prop_assert!(decoded.verify(&a).is_ok());
        }
    }
}

#[test]
fn invalid_values_do_not_deserialize() {
    // postcard varints: 4096 = [0x80, 0x20]; 1025 = [0x81, 0x08].
    assert!(postcard::from_bytes::<SignerIndex>(&[0x80, 0x20]).is_err());
    assert!(postcard::from_bytes::<SignerIndex>(&[0xFF, 0x1F]).is_ok());
    assert!(postcard::from_bytes::<SeqNo>(&[0x00]).is_err());
    assert!(postcard::from_bytes::<Attempt>(&[0x81, 0x08]).is_err());
    assert!(postcard::from_bytes::<Attempt>(&[0x80, 0x08]).is_ok());
    assert!(postcard::from_bytes::<PeerIdBytes>(&[0x00]).is_err());
    let mut long = vec![65u8];
    long.extend_from_slice(&[1; 65]);
    assert!(postcard::from_bytes::<PeerIdBytes>(&long).is_err());
    assert!(postcard::from_bytes::<PartialSigBytes>(&[0xFF; 32]).is_err());
    let mut tweak = vec![0xFF; 32];
    tweak.push(0);
    assert!(postcard::from_bytes::<Tweak>(&tweak).is_err());
    assert!(
        postcard::from_bytes::<AggNonceBytes>(&[0u8; 66]).is_ok(),
        "both halves infinity"
    );
    let mut bad = [0u8; 66];
    bad[33] = 0x02;
    bad[34..].copy_from_slice(&[0xFF; 32]);
    assert!(postcard::from_bytes::<AggNonceBytes>(&bad).is_err());
}

/// The header peeks read exactly what a full decode would, and nothing from other frames.
#[test]
fn header_peeks_agree_with_the_full_decode() {
    use musig2_proto::{Envelope, SessionId, peek_envelope_header, peek_frame_session};
    let limits = Limits::default();
    let kp = secp256k1::Keypair::new(&mut rand::rng());
    let session = SessionId::from_bytes([7; 32]);
    let env = |seq: u64| {
        Envelope::sign(
            session,
            idx(3),
            SeqNo::new(seq).unwrap(),
            1_700_000_000_123,
            Body::Abort {
                reason: AbortReason::Timeout,
                blamed: None,
            },
            &kp,
        )
    };
    let single = env(300).to_frame_bytes();
    let header = peek_envelope_header(&single, &limits).expect("an envelope frame");
    assert_eq!(header.session_id, session);
    assert_eq!(header.signer, idx(3));
    assert_eq!(header.seq.get(), 300);
    assert_eq!(header.timestamp_ms, 1_700_000_000_123);
    match decode_frame(&single, &limits).unwrap() {
        Frame::Envelope(e) => assert_eq!(e.signature(), &header.signature),
        other => panic!("{other:?}"),
    }
    assert_eq!(peek_frame_session(&single, &limits), Some(session));
    let batch = Frame::encode_batch(&[env(1), env(2)]);
    assert_eq!(peek_envelope_header(&batch, &limits), None);
    assert_eq!(peek_frame_session(&batch, &limits), Some(session));
    // Junk, truncated frames and unknown versions give nothing.
    assert_eq!(peek_envelope_header(&single[..40], &limits), None);
    assert_eq!(peek_frame_session(&[2, 0], &limits), None);
    let mut other_version = single.clone();
    other_version[1] = 9;
    assert_eq!(peek_envelope_header(&other_version, &limits), None);
    assert_eq!(peek_frame_session(&other_version, &limits), None);
}

#[test]
fn final_signatures_frames_are_capped_and_strict() {
    use musig2_proto::{FinalSignatures, peek_frame_session};
    let a = verified(2, Topology::Star);
    let limits = Limits::default();
    let frame = |count: usize| {
        FinalSignatures::new(
            a.session_id(),
            attempt(1),
            vec![Signature64([9; 64]); count],
        )
        .to_frame_bytes()
    };
    // One to `max_messages` signatures decode back to the same value.
    for count in [1, limits.max_messages] {
        let bytes = frame(count);
        match decode_frame(&bytes, &limits) {
            Ok(Frame::Signatures(f)) => {
                assert_eq!(f.session_id(), a.session_id());
                assert_eq!(f.attempt(), attempt(1));
                assert_eq!(f.signatures().len(), count);
            }
            other => panic!("{count} signatures: {other:?}"),
        }
        assert_eq!(peek_frame_session(&bytes, &limits), Some(a.session_id()));
    }
    assert!(matches!(
        decode_frame(&frame(0), &limits),
        Err(ProtoError::OutOfRange {
            field: "final signatures",
            ..
        })
    ));
    assert!(matches!(
        decode_frame(&frame(limits.max_messages + 1), &limits),
        Err(ProtoError::LimitExceeded {
            what: "final signatures",
            ..
        })
    ));
    // Another version is refused before parsing; trailing bytes are refused.
    let mut other_version = frame(1);
    other_version[1] = musig2_proto::PROTOCOL_VERSION + 1;
    assert!(matches!(
        decode_frame(&other_version, &limits),
        Err(ProtoError::UnsupportedVersion { .. })
    ));
    let mut trailing = frame(1);
    trailing.push(0);
    assert!(matches!(
        decode_frame(&trailing, &limits),
        Err(ProtoError::TrailingBytes { count: 1 })
    ));
    // A frame over the size cap is refused unread, whatever it holds.
    let small = Limits {
        max_frame_bytes: 64,
        ..limits
    };
    assert!(matches!(
        decode_frame(&frame(1), &small),
        Err(ProtoError::FrameTooLarge { .. })
    ));
}
