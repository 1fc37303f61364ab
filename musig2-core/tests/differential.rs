//! Differential tests against libsecp256k1's MuSig2 module (`secp256k1::musig`).
//!
//! Every case is drawn from a ChaCha20 RNG seeded with a per-case seed that is printed (and named
//! in every assertion message), so a failure reproduces with
//! `MUSIG2_DIFF_SEED=<seed> cargo test -p musig2-core --test differential`.
//!
//! For random signer sets of 1 to 20 keys (sometimes with duplicate keys) and 0 to 3 random plain
//! or x-only tweaks, both implementations must produce the same aggregate key, the same public
//! nonces from the same NonceGen inputs (random and counter variants), the same aggregate nonce,
//! the same partial signatures and the same final signature; each side's partial signatures must
//! verify on the other side (and an altered one on neither); every final signature must verify
//! with `secp256k1::schnorr::verify`.

use musig2_core::secp256k1::{self, Keypair, PublicKey, SecretKey, schnorr};
use musig2_core::{
    AggNonce, KeyAggContext, NonceGen, PartialSignature, PubNonce, SecNonce, SessionContext, Tweak,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use secp256k1::musig as lib;

/// Number of random signer sets checked in one run.
const CASES: u64 = 40;
/// Base seed of the case seeds (case `i` uses `BASE_SEED + i`).
const BASE_SEED: u64 = 0x6d75_7369_6732_0000;

fn random_secret_key(rng: &mut ChaCha20Rng) -> SecretKey {
    loop {
        if let Ok(sk) = SecretKey::from_secret_bytes(rng.random()) {
            return sk;
        }
    }
}

fn random_tweak_value(rng: &mut ChaCha20Rng) -> [u8; 32] {
    // Now and then the zero tweak, which BIP327 allows.
    if rng.random_ratio(1, 16) {
        return [0u8; 32];
    }
    loop {
        let bytes: [u8; 32] = rng.random();
        if secp256k1::Scalar::from_be_bytes(bytes).is_ok() {
            return bytes;
        }
    }
}

/// Non-zero 32 bytes (libsecp refuses an all-zero session secret).
fn random_nonzero32(rng: &mut ChaCha20Rng) -> [u8; 32] {
    loop {
        let bytes: [u8; 32] = rng.random();
        if bytes != [0u8; 32] {
            return bytes;
        }
    }
}

/// One signer's nonces from both implementations.
struct SignerNonces {
    ours_sec: SecNonce,
    ours_pub: PubNonce,
    lib_sec: lib::SecretNonce,
    lib_pub: lib::PublicNonce,
}

fn run_case(seed: u64) {
    println!("differential case seed = {seed} (replay with MUSIG2_DIFF_SEED={seed})");
    let mut rng = ChaCha20Rng::seed_from_u64(seed);

    // Signers: 1..=20 keys, each new key with probability 7/8, otherwise a repeat of an earlier one
    // (duplicates exercise BIP327's "second key" coefficient rule).
    let n = rng.random_range(1..=20usize);
    let mut keypairs: Vec<Keypair> = Vec::with_capacity(n);
    for _ in 0..n {
        if !keypairs.is_empty() && rng.random_ratio(1, 8) {
            let j = rng.random_range(0..keypairs.len());
            keypairs.push(keypairs[j]);
        } else {
            keypairs.push(Keypair::from_secret_key(&random_secret_key(&mut rng)));
        }
    }
    let pubkeys: Vec<PublicKey> = keypairs.iter().map(Keypair::public_key).collect();

    // Key aggregation, same order on both sides.
    let mut ours = KeyAggContext::new(&pubkeys).expect("key aggregation");
    let refs: Vec<&PublicKey> = pubkeys.iter().collect();
    let mut cache = lib::KeyAggCache::new(&refs);
    assert_eq!(
        ours.x_only_key(),
        cache.agg_pk(),
        "seed {seed}: untweaked aggregate key"
    );
    assert_eq!(
        ours.aggregate_key(),
        cache.agg_pk_full(),
        "seed {seed}: untweaked full aggregate key"
    );

    // 0..=3 tweaks, each plain or x-only at random.
    let tweak_count = rng.random_range(0..=3usize);
    for t in 0..tweak_count {
        let value = random_tweak_value(&mut rng);
        let x_only = rng.random_bool(0.5);
        let scalar = secp256k1::Scalar::from_be_bytes(value).expect("tweak below n");
        let lib_key = if x_only {
            cache.pubkey_xonly_tweak_add(&scalar)
        } else {
            cache.pubkey_ec_tweak_add(&scalar)
        }
        .expect("libsecp tweak");
        let tweak = Tweak::new(value, x_only).expect("tweak below n");
        ours = ours.with_tweak(&tweak).expect("our tweak");
        assert_eq!(
            ours.aggregate_key(),
            lib_key,
            "seed {seed}: tweak {t} (x_only = {x_only}) result"
        );
    }
    assert_eq!(
        ours.aggregate_key(),
        cache.agg_pk_full(),
        "seed {seed}: tweaked full aggregate key"
    );
    assert_eq!(
        ours.x_only_key(),
        cache.agg_pk(),
        "seed {seed}: tweaked x-only aggregate key"
    );

    let msg: [u8; 32] = rng.random();
    // Which nonce variant this session signs with (both are always compared).
    let use_counter = rng.random_bool(0.5);

    // Nonces (after tweaking: libsecp mixes in the x-only key of the tweaked cache).
    let mut signers: Vec<SignerNonces> = Vec::with_capacity(n);
    for (i, kp) in keypairs.iter().enumerate() {
        let sk = kp.secret_key();
        let pk = kp.public_key();
        let rand = random_nonzero32(&mut rng);
        let extra: [u8; 32] = rng.random();
        let counter: u64 = rng.random();

        let (ours_rand_sec, ours_rand_pub) = NonceGen::new(pk)
            .secret_key(&sk)
            .key_agg(&ours)
            .message(&msg)
            .extra_input(&extra)
            .generate_from_rand(&rand)
            .expect("our nonce");
        let (lib_rand_sec, lib_rand_pub) = lib::new_nonce_pair(
            lib::SessionSecretRand::assume_uniformly_random(rand),
            Some(&cache),
            Some(sk),
            pk,
            Some(&msg),
            Some(extra),
        );
        assert_eq!(
            ours_rand_pub.to_bytes(),
            lib_rand_pub.serialize(),
            "seed {seed}: signer {i}: public nonce from rand"
        );
        assert_eq!(ours_rand_sec.public_key(), pk, "seed {seed}: signer {i}");

        let (ours_cnt_sec, ours_cnt_pub) = NonceGen::new(pk)
            .secret_key(&sk)
            .key_agg(&ours)
            .message(&msg)
            .extra_input(&extra)
            .generate_with_counter(counter)
            .expect("our counter nonce");
        let (lib_cnt_sec, lib_cnt_pub) =
            lib::new_nonce_pair_counter(counter, Some(&cache), kp, Some(&msg), Some(extra));
        assert_eq!(
            ours_cnt_pub.to_bytes(),
            lib_cnt_pub.serialize(),
            "seed {seed}: signer {i}: public nonce from counter {counter}"
        );
        assert_ne!(
            ours_cnt_pub, ours_rand_pub,
            "seed {seed}: signer {i}: counter and rand nonces must differ"
        );

        signers.push(if use_counter {
            SignerNonces {
                ours_sec: ours_cnt_sec,
                ours_pub: ours_cnt_pub,
                lib_sec: lib_cnt_sec,
                lib_pub: lib_cnt_pub,
            }
        } else {
            SignerNonces {
                ours_sec: ours_rand_sec,
                ours_pub: ours_rand_pub,
                lib_sec: lib_rand_sec,
                lib_pub: lib_rand_pub,
            }
        });
    }

    // Nonce aggregation.
    let our_pubnonces: Vec<PubNonce> = signers.iter().map(|s| s.ours_pub).collect();
    let our_aggnonce = AggNonce::aggregate(&our_pubnonces);
    let lib_pubnonce_refs: Vec<&lib::PublicNonce> = signers.iter().map(|s| &s.lib_pub).collect();
    let lib_aggnonce = lib::AggregatedNonce::new(&lib_pubnonce_refs);
    assert_eq!(
        our_aggnonce.to_bytes(),
        lib_aggnonce.serialize(),
        "seed {seed}: aggregate nonce"
    );
    // Aggregating the encodings gives the same value as aggregating parsed nonces.
    let encoded: Vec<[u8; 66]> = our_pubnonces.iter().map(PubNonce::to_bytes).collect();
    assert_eq!(
        AggNonce::aggregate_bytes(&encoded).expect("valid nonces"),
        our_aggnonce,
        "seed {seed}: aggregate_bytes"
    );

    // Sessions and partial signatures.
    let session = SessionContext::new(&ours, &our_aggnonce, &msg);
    let lib_session = lib::Session::new(&cache, lib_aggnonce, &msg);
    let mut our_psigs = Vec::with_capacity(n);
    let mut lib_psigs = Vec::with_capacity(n);
    let mut lib_pubnonces = Vec::with_capacity(n);
    for (i, (kp, s)) in keypairs.iter().zip(signers).enumerate() {
        let ours_psig = session.sign(s.ours_sec, kp).expect("our partial signature");
        let lib_psig = lib_session.partial_sign(s.lib_sec, kp, &cache);
        assert_eq!(
            ours_psig.to_bytes(),
            lib_psig.serialize(),
            "seed {seed}: signer {i}: partial signature"
        );
        our_psigs.push(ours_psig);
        lib_psigs.push(lib_psig);
        lib_pubnonces.push(s.lib_pub);
    }

    // Cross verification: libsecp's partial signatures on our side, ours on libsecp's side.
    for i in 0..n {
        let from_lib =
            PartialSignature::from_bytes(&lib_psigs[i].serialize()).expect("libsecp psig parses");
        let lib_nonce =
            PubNonce::from_bytes(&lib_pubnonces[i].serialize()).expect("libsecp nonce parses");
        assert_eq!(
            session.verify_partial(i, &from_lib, &lib_nonce),
            Ok(()),
            "seed {seed}: signer {i}: libsecp psig on our side"
        );
        let from_ours = lib::PartialSignature::from_byte_array(&our_psigs[i].to_bytes())
            .expect("our psig parses in libsecp");
        let our_nonce = lib::PublicNonce::from_byte_array(&our_pubnonces[i].to_bytes())
            .expect("our nonce parses in libsecp");
        assert!(
            lib_session.partial_verify(&cache, &from_ours, &our_nonce, pubkeys[i]),
            "seed {seed}: signer {i}: our psig on libsecp's side"
        );
    }

    // An altered partial signature (plus one) is refused on both sides.
    let victim = rng.random_range(0..n);
    let altered = add_one(&our_psigs[victim].to_bytes());
    if let Ok(bad) = PartialSignature::from_bytes(&altered) {
        assert!(
            session
                .verify_partial(victim, &bad, &our_pubnonces[victim])
                .is_err(),
            "seed {seed}: altered psig of signer {victim} accepted by us"
        );
        let lib_bad = lib::PartialSignature::from_byte_array(&altered).expect("below n");
        assert!(
            !lib_session.partial_verify(&cache, &lib_bad, &lib_pubnonces[victim], pubkeys[victim]),
            "seed {seed}: altered psig of signer {victim} accepted by libsecp"
        );
    }

    // Final signature.
    let lib_psig_refs: Vec<&lib::PartialSignature> = lib_psigs.iter().collect();
    let lib_sig = lib_session.partial_sig_agg(&lib_psig_refs).assume_valid();
    let our_sig = session.aggregate(&our_psigs).expect("aggregate");
    assert_eq!(
        our_sig.to_byte_array(),
        lib_sig.to_byte_array(),
        "seed {seed}: final signature"
    );
    let checked = session
        .aggregate_and_verify(&our_psigs, &our_pubnonces)
        .expect("aggregate_and_verify");
    assert_eq!(checked, our_sig, "seed {seed}: aggregate_and_verify result");
    let agg_x = cache.agg_pk();
    assert!(
        schnorr::verify(&our_sig, &msg, &agg_x).is_ok(),
        "seed {seed}: final signature verifies with secp256k1::schnorr::verify"
    );
    assert!(
        schnorr::verify(&our_sig, &add_one(&msg), &agg_x).is_err(),
        "seed {seed}: final signature must not verify on another message"
    );
}

/// `x + 1` as 32 big-endian bytes, wrapping (callers re-parse the result).
fn add_one(x: &[u8; 32]) -> [u8; 32] {
    let mut out = *x;
    for b in out.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            break;
        }
    }
    out
}

#[test]
fn matches_libsecp256k1_musig_module() {
    if let Ok(seed) = std::env::var("MUSIG2_DIFF_SEED") {
        let seed: u64 = seed.parse().expect("MUSIG2_DIFF_SEED must be a u64");
        run_case(seed);
        return;
    }
    for i in 0..CASES {
        run_case(BASE_SEED + i);
    }
}

/// Edge cases picked by hand: a single signer, all keys equal, two distinct keys repeated.
#[test]
fn matches_libsecp256k1_on_degenerate_key_lists() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let a = Keypair::from_secret_key(&random_secret_key(&mut rng));
    let b = Keypair::from_secret_key(&random_secret_key(&mut rng));
    let lists: [Vec<Keypair>; 4] = [vec![a], vec![a, a, a], vec![a, b, a, b], vec![b, a, a]];
    for (case, list) in lists.iter().enumerate() {
        let pubkeys: Vec<PublicKey> = list.iter().map(Keypair::public_key).collect();
        let refs: Vec<&PublicKey> = pubkeys.iter().collect();
        let cache = lib::KeyAggCache::new(&refs);
        let ours = KeyAggContext::new(&pubkeys).expect("key aggregation");
        assert_eq!(ours.aggregate_key(), cache.agg_pk_full(), "list {case}");

        let msg = [case as u8; 32];
        let mut secs = Vec::new();
        let mut pubs = Vec::new();
        for (i, kp) in list.iter().enumerate() {
            let rand = [i as u8 + 1; 32];
            let sk = kp.secret_key();
            let (sec, public) = NonceGen::new(kp.public_key())
                .secret_key(&sk)
                .key_agg(&ours)
                .message(&msg)
                .generate_from_rand(&rand)
                .expect("nonce");
            let (_, lib_pub) = lib::new_nonce_pair(
                lib::SessionSecretRand::assume_uniformly_random(rand),
                Some(&cache),
                Some(sk),
                kp.public_key(),
                Some(&msg),
                None,
            );
            assert_eq!(
                public.to_bytes(),
                lib_pub.serialize(),
                "list {case} signer {i}"
            );
            secs.push(sec);
            pubs.push(public);
        }
        let session = SessionContext::new(&ours, &AggNonce::aggregate(&pubs), &msg);
        let psigs: Vec<PartialSignature> = list
            .iter()
            .zip(secs)
            .map(|(kp, sec)| session.sign(sec, kp).expect("sign"))
            .collect();
        let sig = session.aggregate_and_verify(&psigs, &pubs).expect("valid");
        assert!(
            schnorr::verify(&sig, &msg, &cache.agg_pk()).is_ok(),
            "list {case}"
        );
    }
}
