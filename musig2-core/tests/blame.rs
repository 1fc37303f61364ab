//! Blame beyond the official vectors: NonceAgg's order over several invalid nonces, byte-level
//! PartialSigVerify and PartialSigAgg that name the signer themselves, and public nonces that
//! cancel out (BIP327's fallback to `R = G`), where the aggregator must not be blamed.

use musig2_core::secp256k1::{Keypair, PublicKey, Scalar, SecretKey, constants};
use musig2_core::{
    AggNonce, Contribution, Culprit, Error, KeyAggContext, NonceGen, PartialSignature, PubNonce,
    SecNonce, SessionContext, verify_signature,
};

const MSG: &[u8] = b"blame tests";

fn keypair(seed: u8) -> Keypair {
    Keypair::from_secret_key(&SecretKey::from_secret_bytes([seed; 32]).expect("valid key"))
}

fn invalid(culprit: Culprit, contribution: Contribution) -> Error {
    Error::InvalidContribution {
        culprit,
        contribution,
    }
}

/// Hex of a compressed point or 33-byte half, into 33 bytes.
fn half(hex_str: &str) -> [u8; 33] {
    hex::decode(hex_str)
        .expect("hex")
        .try_into()
        .expect("33 bytes")
}

fn join(a: [u8; 33], b: [u8; 33]) -> [u8; 66] {
    let mut out = [0u8; 66];
    out[..33].copy_from_slice(&a);
    out[33..].copy_from_slice(&b);
    out
}

/// Signers with nonces from NonceGen: keypairs, context, secret and public nonces.
struct Honest {
    keypairs: Vec<Keypair>,
    key_agg: KeyAggContext,
    secs: Vec<SecNonce>,
    pubs: Vec<PubNonce>,
}

fn honest(n: u8) -> Honest {
    let keypairs: Vec<Keypair> = (1..=n).map(keypair).collect();
    let pubkeys: Vec<PublicKey> = keypairs.iter().map(Keypair::public_key).collect();
    let key_agg = KeyAggContext::new(&pubkeys).expect("key aggregation");
    let (secs, pubs) = keypairs
        .iter()
        .enumerate()
        .map(|(i, kp)| {
            NonceGen::new(kp.public_key())
                .key_agg(&key_agg)
                .generate_from_rand(&[i as u8 + 0x40; 32])
                .expect("nonce")
        })
        .unzip();
    Honest {
        keypairs,
        key_agg,
        secs,
        pubs,
    }
}

#[test]
fn nonce_agg_checks_every_first_half_before_any_second_half() {
    // The example: signer 0 = (valid, invalid), signer 1 = (invalid, valid).
    let valid = half("03FF406FFD8ADB9CD29877E4985014F66A59F6CD01C0E88CAA8E5F3166B1F676A6");
    let not_x = half("0248C264CDD57D3C24D79990B0F865674EB62A0F9018277A95011B41BFC193B831");
    let signer0 = join(valid, not_x);
    let signer1 = join(not_x, valid);
    let blamed = |i| Err(invalid(Culprit::Signer(i), Contribution::PubNonce));
    assert_eq!(AggNonce::aggregate_bytes(&[signer0, signer1]), blamed(1));
    assert_eq!(AggNonce::aggregate_bytes(&[signer1, signer0]), blamed(0));
    // Each alone is blamed, so both are invalid; only the order decides.
    assert_eq!(AggNonce::aggregate_bytes(&[signer0]), blamed(0));
    assert_eq!(AggNonce::aggregate_bytes(&[signer1]), blamed(0));
}

#[test]
fn verify_partial_bytes_names_the_signer() {
    let mut h = honest(3);
    let session = SessionContext::new(&h.key_agg, &AggNonce::aggregate(&h.pubs), MSG);
    let psigs: Vec<[u8; 32]> = sign_all(&session, &h.keypairs, std::mem::take(&mut h.secs))
        .iter()
        .map(PartialSignature::to_bytes)
        .collect();
    let nonces: Vec<[u8; 66]> = h.pubs.iter().map(PubNonce::to_bytes).collect();
    for i in 0..3 {
        assert_eq!(
            session.verify_partial_bytes(i, &psigs[i], &nonces[i]),
            Ok(())
        );
    }
    let mut bad_nonce = nonces[2];
    bad_nonce[33] = 0x04;
    let too_big = constants::CURVE_ORDER;
    let cases: [(usize, [u8; 32], [u8; 66], Error); 5] = [
        // Another signer's (valid) partial signature.
        (
            1,
            psigs[0],
            nonces[1],
            invalid(Culprit::Signer(1), Contribution::PartialSig),
        ),
        // Not below n.
        (
            2,
            too_big,
            nonces[2],
            invalid(Culprit::Signer(2), Contribution::PartialSig),
        ),
        // An unparseable nonce.
        (
            2,
            psigs[2],
            bad_nonce,
            invalid(Culprit::Signer(2), Contribution::PubNonce),
        ),
        // Both: the nonce is checked first, as BIP327 PartialSigVerify's NonceAgg does.
        (
            2,
            too_big,
            bad_nonce,
            invalid(Culprit::Signer(2), Contribution::PubNonce),
        ),
        (
            3,
            psigs[0],
            nonces[0],
            Error::SignerIndexOutOfRange { index: 3, len: 3 },
        ),
    ];
    for (case, (i, psig, nonce, want)) in cases.into_iter().enumerate() {
        assert_eq!(
            session.verify_partial_bytes(i, &psig, &nonce),
            Err(want),
            "case {case}"
        );
    }
}

#[test]
fn aggregate_bytes_names_the_first_out_of_range_signer() {
    let mut h = honest(3);
    let session = SessionContext::new(&h.key_agg, &AggNonce::aggregate(&h.pubs), MSG);
    let psigs = sign_all(&session, &h.keypairs, std::mem::take(&mut h.secs));
    let bytes: Vec<[u8; 32]> = psigs.iter().map(PartialSignature::to_bytes).collect();
    let sig = session.aggregate_bytes(&bytes).expect("valid");
    assert_eq!(session.aggregate(&psigs), Ok(sig));
    assert_eq!(session.verify_signature(&sig), Ok(()));

    let max = [0xff; 32];
    let mut bad = bytes.clone();
    bad[1] = constants::CURVE_ORDER;
    bad[2] = max;
    assert_eq!(
        session.aggregate_bytes(&bad),
        Err(invalid(Culprit::Signer(1), Contribution::PartialSig))
    );
    bad[1] = bytes[1];
    assert_eq!(
        session.aggregate_bytes(&bad),
        Err(invalid(Culprit::Signer(2), Contribution::PartialSig))
    );
    assert_eq!(
        session.aggregate_bytes(&bytes[..2]),
        Err(Error::LengthMismatch {
            expected: 3,
            got: 2
        })
    );
}

/// Round 2: every signer signs (key-list order), consuming its secret nonce.
fn sign_all(
    session: &SessionContext,
    keypairs: &[Keypair],
    secs: Vec<SecNonce>,
) -> Vec<PartialSignature> {
    keypairs
        .iter()
        .zip(secs)
        .map(|(kp, sec)| session.sign(sec, kp).expect("sign"))
        .collect()
}

/// A secret nonce for `kp` from two scalars (the test-only importer the vectors use).
fn secnonce(k1: &SecretKey, k2: &SecretKey, kp: &Keypair) -> SecNonce {
    let mut raw = [0u8; 97];
    raw[..32].copy_from_slice(&k1.to_secret_bytes());
    raw[32..64].copy_from_slice(&k2.to_secret_bytes());
    raw[64..].copy_from_slice(&kp.public_key().serialize());
    SecNonce::dangerous_from_bytes(&raw).expect("valid pk")
}

fn scalar(seed: u8) -> SecretKey {
    SecretKey::from_secret_bytes([seed; 32]).expect("below n")
}

/// Signers whose secret nonce halves sum to zero: every half of the aggregate nonce is
/// infinity. The last signer's halves are minus the sum of the others'.
fn cancelling(n: u8) -> (Vec<Keypair>, KeyAggContext, Vec<SecNonce>, Vec<PubNonce>) {
    let keypairs: Vec<Keypair> = (1..=n).map(keypair).collect();
    let pubkeys: Vec<PublicKey> = keypairs.iter().map(Keypair::public_key).collect();
    let key_agg = KeyAggContext::new(&pubkeys).expect("key aggregation");
    let mut halves: Vec<(SecretKey, SecretKey)> = (1..n)
        .map(|i| (scalar(0x10 + i), scalar(0x20 + i)))
        .collect();
    let sum = |pick: fn(&(SecretKey, SecretKey)) -> SecretKey| {
        let mut acc = pick(&halves[0]);
        for h in &halves[1..] {
            let t = Scalar::from_be_bytes(pick(h).to_secret_bytes()).expect("below n");
            acc = acc.add_tweak(&t).expect("non-zero sum");
        }
        acc.negate()
    };
    let last = (sum(|h| h.0), sum(|h| h.1));
    halves.push(last);
    let secs: Vec<SecNonce> = halves
        .iter()
        .zip(&keypairs)
        .map(|((k1, k2), kp)| secnonce(k1, k2, kp))
        .collect();
    let pubs = secs
        .iter()
        .map(|s| s.public_nonce().expect("non-zero"))
        .collect();
    (keypairs, key_agg, secs, pubs)
}

#[test]
fn cancelling_nonces_blame_nobody_not_the_aggregator() {
    for n in [2, 3] {
        let (keypairs, key_agg, secs, pubs) = cancelling(n);
        let aggnonce = AggNonce::aggregate(&pubs);
        // Both halves are infinity, encoded as 33 zero bytes each, by either NonceAgg.
        assert_eq!(aggnonce.to_bytes(), [0u8; 66], "n = {n}");
        let encoded: Vec<[u8; 66]> = pubs.iter().map(PubNonce::to_bytes).collect();
        assert_eq!(AggNonce::aggregate_bytes(&encoded), Ok(aggnonce));

        let session = SessionContext::new(&key_agg, &aggnonce, MSG);
        let psigs = sign_all(&session, &keypairs, secs);
        for (i, psig) in psigs.iter().enumerate() {
            assert_eq!(session.verify_partial(i, psig, &pubs[i]), Ok(()), "n = {n}");
        }
        // BIP327 signs with R = G; valid partial signatures then sum to s with s·G = e·Q, not
        // G + e·Q, so no valid signature exists.
        let sig = session.aggregate(&psigs).expect("aggregate");
        assert_eq!(
            sig.to_byte_array()[..32],
            constants::GENERATOR_X,
            "n = {n}: R = G"
        );
        assert_eq!(
            verify_signature(&sig, MSG, &key_agg.x_only_key()),
            Err(Error::InvalidSignature)
        );
        // The aggregator summed correctly and is not blamed; no single signer is either.
        let err = session
            .aggregate_and_verify(&psigs, &pubs)
            .expect_err("no valid signature exists");
        assert_eq!(err, Error::FinalNonceInfinity, "n = {n}");
        assert!(err.culprits().is_empty());
        assert!(!err.is_value_error());
    }
}

#[test]
fn an_aggregator_sending_infinity_is_blamed() {
    let mut h = honest(3);
    let forged = AggNonce::from_bytes(&[0u8; 66]).expect("infinity is a valid aggnonce");
    assert_ne!(forged, AggNonce::aggregate(&h.pubs));
    let session = SessionContext::new(&h.key_agg, &forged, MSG);
    let psigs = sign_all(&session, &h.keypairs, std::mem::take(&mut h.secs));
    for (i, psig) in psigs.iter().enumerate() {
        assert_eq!(session.verify_partial(i, psig, &h.pubs[i]), Ok(()));
    }
    assert_eq!(
        session.aggregate_and_verify(&psigs, &h.pubs),
        Err(invalid(Culprit::Aggregator, Contribution::AggNonce))
    );
}

#[test]
fn a_lone_signer_cancelling_the_others_nonces_is_named() {
    // Signer 1 announces minus signer 0's nonce without knowing its discrete logarithms, so it
    // cannot make a partial signature that verifies; the best it can do is sign with a nonce of
    // its own.
    let mut h = honest(2);
    let (r1, r2) = h.pubs[0].points();
    let rogue = PubNonce::from_points(r1.negate(), r2.negate());
    let pubs = [h.pubs[0], rogue];
    let aggnonce = AggNonce::aggregate(&pubs);
    assert_eq!(aggnonce.to_bytes(), [0u8; 66]);
    let session = SessionContext::new(&h.key_agg, &aggnonce, MSG);
    let psigs = sign_all(&session, &h.keypairs, std::mem::take(&mut h.secs));
    assert_eq!(
        session.aggregate_and_verify(&psigs, &pubs),
        Err(Error::InvalidPartialSignatures { signers: vec![1] })
    );
    assert_eq!(
        session.verify_partial_bytes(1, &psigs[1].to_bytes(), &rogue.to_bytes()),
        Err(invalid(Culprit::Signer(1), Contribution::PartialSig))
    );
}
