//! Property tests: signing round trips, blame for altered partial signatures, refusal of erased
//! or foreign secret nonces, DeterministicSign interoperating with ordinary signers, and secret
//! nonces never printed.
//!
//! Failures are persisted (and committed) in `musig2-core/proptest-regressions/properties.txt`;
//! proptest replays those seeds before generating new cases.

use musig2_core::secp256k1::{Keypair, PublicKey, SecretKey, XOnlyPublicKey};
use musig2_core::{
    AggNonce, Contribution, Culprit, Error, KeyAggContext, NonceGen, PartialSignature, PubNonce,
    SecNonce, SessionContext, Tweak, deterministic_sign, key_sort, verify_signature,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/proptest-regressions/properties.txt"
);

/// 32 cases per property (the suite stays fast); `PROPTEST_CASES` overrides for longer runs.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    }
}

/// A signing set drawn from a seed: keys (sorted or not), the tweaked context, a message.
struct Setup {
    keypairs: Vec<Keypair>,
    /// `keypairs[i]` signs at index `index[i]` of the key list.
    index: Vec<usize>,
    key_agg: KeyAggContext,
    msg: Vec<u8>,
    rng: ChaCha20Rng,
}

fn setup(seed: [u8; 32], n: usize, msg: Vec<u8>, tweaks: &[(bool, [u8; 32])], sort: bool) -> Setup {
    let mut rng = ChaCha20Rng::from_seed(seed);
    let keypairs: Vec<Keypair> = (0..n)
        .map(|_| {
            loop {
                if let Ok(sk) = SecretKey::from_secret_bytes(rng.random()) {
                    break Keypair::from_secret_key(&sk);
                }
            }
        })
        .collect();
    let mut pubkeys: Vec<PublicKey> = keypairs.iter().map(Keypair::public_key).collect();
    if sort {
        key_sort(&mut pubkeys);
    }
    let mut key_agg = KeyAggContext::new(&pubkeys).expect("key aggregation");
    for (x_only, value) in tweaks {
        // Tweaks are drawn below n (see `tweak_strategy`).
        let tweak = Tweak::new(*value, *x_only).expect("tweak below n");
        key_agg = key_agg
            .with_tweak(&tweak)
            .expect("tweak result not infinity");
    }
    let index = keypairs
        .iter()
        .map(|kp| key_agg.index_of(&kp.public_key()).expect("signer in list"))
        .collect();
    Setup {
        keypairs,
        index,
        key_agg,
        msg,
        rng,
    }
}

impl Setup {
    fn n(&self) -> usize {
        self.keypairs.len()
    }

    /// Round 1 for every signer: secret nonces by signer, public nonces in key-list order.
    fn nonces(&mut self) -> (Vec<SecNonce>, Vec<PubNonce>) {
        let mut secs = Vec::with_capacity(self.n());
        let mut pubs = vec![None; self.n()];
        for (i, kp) in self.keypairs.iter().enumerate() {
            let sk = kp.secret_key();
            let rand: [u8; 32] = self.rng.random();
            let (sec, public) = NonceGen::new(kp.public_key())
                .secret_key(&sk)
                .key_agg(&self.key_agg)
                .message(&self.msg)
                .generate_from_rand(&rand)
                .expect("nonce generation");
            secs.push(sec);
            pubs[self.index[i]] = Some(public);
        }
        (secs, pubs.into_iter().map(Option::unwrap).collect())
    }

    /// Rounds 1 and 2: the session, partial signatures and public nonces in key-list order.
    fn sign_all(&mut self) -> (SessionContext, Vec<PartialSignature>, Vec<PubNonce>) {
        let (secs, pubs) = self.nonces();
        let session = SessionContext::new(&self.key_agg, &AggNonce::aggregate(&pubs), &self.msg);
        let mut psigs = vec![None; self.n()];
        for (i, (kp, sec)) in self.keypairs.iter().zip(secs).enumerate() {
            psigs[self.index[i]] = Some(session.sign(sec, kp).expect("sign"));
        }
        let psigs = psigs.into_iter().map(Option::unwrap).collect();
        (session, psigs, pubs)
    }
}

fn tweak_strategy() -> impl Strategy<Value = (bool, [u8; 32])> {
    // The top byte below 0xff keeps every value below n.
    (any::<bool>(), any::<[u8; 32]>()).prop_map(|(x_only, mut value)| {
        value[0] &= 0x7f;
        (x_only, value)
    })
}

fn msg_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..200)
}

/// How a partial signature is altered.
#[derive(Debug, Clone, Copy)]
enum Alteration {
    /// XOR one byte (at this position) with a non-zero mask.
    FlipByte { pos: usize, mask: u8 },
    /// Add one to the scalar.
    AddOne,
}

fn alteration_strategy() -> impl Strategy<Value = Alteration> {
    prop_oneof![
        (0..32usize, 1..=255u8).prop_map(|(pos, mask)| Alteration::FlipByte { pos, mask }),
        Just(Alteration::AddOne),
    ]
}

fn add_one(x: [u8; 32]) -> [u8; 32] {
    let mut out = x;
    for b in out.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            break;
        }
    }
    out
}

fn alter(psig: &PartialSignature, how: Alteration) -> [u8; 32] {
    let mut bytes = psig.to_bytes();
    match how {
        Alteration::FlipByte { pos, mask } => bytes[pos] ^= mask,
        Alteration::AddOne => bytes = add_one(bytes),
    }
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

proptest! {
    #![proptest_config(config())]

    /// Sign, aggregate and verify for random sets, messages and tweaks.
    #[test]
    fn sign_aggregate_verify_round_trip(
        seed in any::<[u8; 32]>(),
        n in 1..=8usize,
        msg in msg_strategy(),
        tweaks in prop::collection::vec(tweak_strategy(), 0..=3),
        sort in any::<bool>(),
    ) {
        let mut s = setup(seed, n, msg, &tweaks, sort);
        let (session, psigs, pubs) = s.sign_all();
        for (i, (psig, public)) in psigs.iter().zip(&pubs).enumerate() {
            prop_assert_eq!(session.verify_partial(i, psig, public), Ok(()));
        }
        let sig = session.aggregate_and_verify(&psigs, &pubs).expect("valid signature");
        prop_assert_eq!(sig, session.aggregate(&psigs).expect("aggregate"));
        let q: XOnlyPublicKey = s.key_agg.x_only_key();
        prop_assert_eq!(verify_signature(&sig, &s.msg, &q), Ok(()));
        // ... and under BIP340 as implemented by libsecp256k1.
        prop_assert!(musig2_core::secp256k1::schnorr::verify(&sig, &s.msg, &q).is_ok());
        // The signature is bound to the message.
        let mut other = s.msg.clone();
        other.push(0);
        prop_assert_eq!(verify_signature(&sig, &other, &q), Err(Error::InvalidSignature));
    }

    /// Altering any partial signatures makes aggregate_and_verify name exactly those signers.
    #[test]
    fn altered_partial_signatures_are_blamed_exactly(
        seed in any::<[u8; 32]>(),
        n in 1..=8usize,
        msg in msg_strategy(),
        tweaks in prop::collection::vec(tweak_strategy(), 0..=3),
        // A bit mask of the signers whose partial signature is altered (made non-empty below).
        victims_mask in any::<u8>(),
        alterations in prop::collection::vec(alteration_strategy(), 8),
    ) {
        let mut s = setup(seed, n, msg, &tweaks, true);
        let (session, mut psigs, pubs) = s.sign_all();
        let original = psigs.clone();
        let mut victims: Vec<usize> = (0..n).filter(|i| victims_mask & (1 << i) != 0).collect();
        if victims.is_empty() {
            victims.push(usize::from(victims_mask) % n);
        }
        for &v in &victims {
            let altered = alter(&psigs[v], alterations[v]);
            match PartialSignature::from_bytes(&altered) {
                Ok(p) => psigs[v] = p,
                Err(e) => {
                    // Out of range: refused at parsing, and blamed once the sender is known.
                    prop_assert_eq!(
                        e.blame_signer(v),
                        Error::InvalidContribution {
                            culprit: Culprit::Signer(v),
                            contribution: Contribution::PartialSig,
                        }
                    );
                    return Ok(());
                }
            }
        }
        if session.aggregate(&psigs) == session.aggregate(&original) {
            // The alterations cancel out (e.g. +2^k on one, -2^k on another): the sum, hence the
            // final signature, is still valid, and the fast path rightly accepts it.
            prop_assert!(session.aggregate_and_verify(&psigs, &pubs).is_ok());
        } else {
            prop_assert_eq!(
                session.aggregate_and_verify(&psigs, &pubs),
                Err(Error::InvalidPartialSignatures { signers: victims.clone() })
            );
        }
        for i in 0..n {
            let verdict = session.verify_partial(i, &psigs[i], &pubs[i]);
            if victims.contains(&i) {
                prop_assert_eq!(
                    verdict,
                    Err(Error::InvalidContribution {
                        culprit: Culprit::Signer(i),
                        contribution: Contribution::PartialSig,
                    })
                );
            } else {
                prop_assert_eq!(verdict, Ok(()));
            }
        }
    }

    /// A zeroed (erased) or out-of-range secret nonce is refused; so is one for another key.
    #[test]
    fn erased_or_foreign_secret_nonces_are_refused(
        seed in any::<[u8; 32]>(),
        n in 2..=8usize,
        msg in msg_strategy(),
        which in 0..3usize,
        k in any::<[u8; 32]>(),
    ) {
        let mut s = setup(seed, n, msg, &[], true);
        let (mut secs, pubs) = s.nonces();
        let session = SessionContext::new(&s.key_agg, &AggNonce::aggregate(&pubs), &s.msg);
        let kp = s.keypairs[0];

        // Erased: k1, k2 or both zero; the other half an arbitrary value.
        let mut raw = [0u8; 97];
        match which {
            0 => raw[..32].copy_from_slice(&k),
            1 => raw[32..64].copy_from_slice(&k),
            _ => {}
        }
        raw[64..].copy_from_slice(&kp.public_key().serialize());
        let erased = SecNonce::dangerous_from_bytes(&raw).expect("valid pk");
        prop_assert_eq!(session.sign(erased, &kp), Err(Error::InvalidSecNonce));

        // Out of range: a half equal to n.
        let mut raw = [0x11u8; 97];
        raw[32 * (which % 2)..32 * (which % 2) + 32]
            .copy_from_slice(&musig2_core::secp256k1::constants::CURVE_ORDER);
        raw[64..].copy_from_slice(&kp.public_key().serialize());
        let out_of_range = SecNonce::dangerous_from_bytes(&raw).expect("valid pk");
        prop_assert_eq!(session.sign(out_of_range, &kp), Err(Error::InvalidSecNonce));

        // Signer 1's nonce used by signer 0.
        let foreign = secs.remove(1);
        prop_assert_eq!(session.sign(foreign, &kp), Err(Error::SecNonceKeyMismatch));
        // Signer 0's own nonce still signs.
        let own = secs.remove(0);
        let psig = session.sign(own, &kp).expect("own nonce signs");
        prop_assert_eq!(session.verify_partial(s.index[0], &psig, &pubs[s.index[0]]), Ok(()));
    }

    /// DeterministicSign's partial signature verifies and aggregates with ordinary ones.
    #[test]
    fn deterministic_signer_interoperates(
        seed in any::<[u8; 32]>(),
        n in 2..=8usize,
        msg in msg_strategy(),
        tweaks in prop::collection::vec(tweak_strategy(), 0..=3),
        rand in proptest::option::of(any::<[u8; 32]>()),
    ) {
        let mut s = setup(seed, n, msg, &tweaks, true);
        let (mut secs, mut pubs) = s.nonces();
        // The last signer (by our list) is deterministic; its random nonce is discarded.
        let det = n - 1;
        let det_index = s.index[det];
        drop(secs.pop());
        let others: Vec<PubNonce> = (0..n).filter(|&j| j != det_index).map(|j| pubs[j]).collect();
        let aggothernonce = AggNonce::aggregate(&others).to_bytes();
        let det_sk = s.keypairs[det].secret_key();
        let (det_nonce, det_psig) =
            deterministic_sign(&det_sk, &aggothernonce, &s.key_agg, &s.msg, rand.as_ref())
                .expect("deterministic sign");
        // Deterministic: the same inputs give the same output.
        prop_assert_eq!(
            deterministic_sign(&det_sk, &aggothernonce, &s.key_agg, &s.msg, rand.as_ref()),
            Ok((det_nonce, det_psig))
        );
        pubs[det_index] = det_nonce;

        let session = SessionContext::new(&s.key_agg, &AggNonce::aggregate(&pubs), &s.msg);
        prop_assert_eq!(session.verify_partial(det_index, &det_psig, &det_nonce), Ok(()));
        let mut psigs = vec![None; n];
        psigs[det_index] = Some(det_psig);
        for (i, sec) in secs.into_iter().enumerate() {
            psigs[s.index[i]] = Some(session.sign(sec, &s.keypairs[i]).expect("sign"));
        }
        let psigs: Vec<PartialSignature> = psigs.into_iter().map(Option::unwrap).collect();
        let sig = session.aggregate_and_verify(&psigs, &pubs).expect("valid");
        prop_assert_eq!(verify_signature(&sig, &s.msg, &s.key_agg.x_only_key()), Ok(()));
    }

    /// A secret nonce's Debug output shows neither k1 nor k2 in any common rendering.
    #[test]
    fn secnonce_debug_hides_secret_values(
        k1 in any::<[u8; 32]>(),
        k2 in any::<[u8; 32]>(),
        sk in any::<[u8; 32]>(),
    ) {
        let sk = SecretKey::from_secret_bytes(sk);
        prop_assume!(sk.is_ok());
        let pk = Keypair::from_secret_key(&sk.expect("checked")).public_key();
        let mut raw = [0u8; 97];
        raw[..32].copy_from_slice(&k1);
        raw[32..64].copy_from_slice(&k2);
        raw[64..].copy_from_slice(&pk.serialize());
        let sec = SecNonce::dangerous_from_bytes(&raw).expect("valid pk");
        for shown in [format!("{sec:?}"), format!("{sec:#?}")] {
            for k in [&k1, &k2] {
                let lower = hex(k);
                // Any 8 consecutive bytes of a secret half would be a leak.
                for w in 0..=24 {
                    let window = &lower[2 * w..2 * w + 16];
                    prop_assert!(!shown.contains(window), "{} leaks {}", shown, window);
                    prop_assert!(!shown.to_uppercase().contains(&window.to_uppercase()));
                }
                let decimal = format!("{:?}", &k[..8]);
                prop_assert!(!shown.contains(&decimal));
            }
            // It still identifies the key it belongs to.
            prop_assert!(shown.contains(&hex(&pk.serialize())) || shown.contains("PublicKey"));
        }
        // A generated nonce is redacted too.
        let (sec, _) = NonceGen::new(pk).generate_from_rand(&k1).expect("nonce");
        let shown = format!("{sec:?}");
        prop_assert!(shown.contains("redacted"));
    }
}
