//! Every case of the official BIP327 and BIP328 test vectors, valid and error, including the
//! ones BIP327 marks optional. Error cases must match the blamed signer and contribution exactly.
//! Also our own NonceAgg cases with several invalid nonces (`vectors/musig2-core/`), in BIP327's
//! format.

use std::process::ExitCode;

use musig2_core::secp256k1::{Keypair, PublicKey, SecretKey, schnorr};
use musig2_core::{
    AggNonce, AggregateXpub, Contribution, Culprit, Error, KeyAggContext, NonceGen,
    PartialSignature, PubNonce, SecNonce, SessionContext, Tweak, deterministic_sign,
    key_sort_bytes,
};
use serde::Deserialize;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");

fn load<T: for<'de> Deserialize<'de>>(file: &str) -> T {
    let path = format!("{DIR}/{file}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn bytes<const N: usize>(s: &str) -> [u8; N] {
    let v = hex::decode(s).unwrap_or_else(|e| panic!("bad hex {s}: {e}"));
    v.try_into()
        .unwrap_or_else(|v: Vec<u8>| panic!("expected {N} bytes, got {}", v.len()))
}

fn vecbytes(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex {s}: {e}"))
}

/// The `error` object of an error case.
#[derive(Deserialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ExpectedError {
    InvalidContribution {
        signer: Option<usize>,
        contrib: String,
    },
    Value {
        message: String,
    },
}

/// Checks that `got` is the error the vector expects (type, signer and contribution exactly;
/// value errors by their BIP327 meaning).
fn check_error(case: &str, got: Error, expected: &ExpectedError) {
    match expected {
        ExpectedError::InvalidContribution { signer, contrib } => {
            let Error::InvalidContribution {
                culprit,
                contribution,
            } = got
            else {
                panic!("{case}: expected invalid_contribution, got {got:?}");
            };
            let want_culprit = match signer {
                Some(i) => Culprit::Signer(*i),
                None => Culprit::Aggregator,
            };
            assert_eq!(culprit, want_culprit, "{case}: culprit");
            assert_eq!(contribution.to_string(), *contrib, "{case}: contribution");
        }
        ExpectedError::Value { message } => {
            assert!(
                got.is_value_error(),
                "{case}: expected value error, got {got:?}"
            );
            let want = match message.as_str() {
                "The tweak must be less than n." => Error::TweakOutOfRange,
                "The result of tweaking cannot be infinity." => Error::TweakResultInfinity,
                "The signer's pubkey must be included in the list of pubkeys." => {
                    Error::SignerKeyNotInList
                }
                "first secnonce value is out of range." => Error::InvalidSecNonce,
                other => panic!("{case}: unknown value error message {other:?}"),
            };
            assert_eq!(got, want, "{case}");
        }
    }
}

fn expect_err<T: std::fmt::Debug>(case: &str, got: Result<T, Error>, expected: &ExpectedError) {
    match got {
        Ok(v) => panic!("{case}: expected an error, got {v:?}"),
        Err(e) => check_error(case, e, expected),
    }
}

fn keys(all: &[String], indices: &[usize]) -> Vec<[u8; 33]> {
    indices.iter().map(|&i| bytes(&all[i])).collect()
}

fn tweaks(all: &[String], indices: &[usize], xonly: &[bool]) -> Result<Vec<Tweak>, Error> {
    indices
        .iter()
        .zip(xonly)
        .map(|(&i, &x)| Tweak::new(bytes(&all[i]), x))
        .collect()
}

fn key_agg_with(
    keys: &[[u8; 33]],
    tweaks: Result<Vec<Tweak>, Error>,
) -> Result<KeyAggContext, Error> {
    KeyAggContext::from_bytes(keys)?.with_tweaks(&tweaks?)
}

fn keypair(sk_hex: &str) -> Keypair {
    Keypair::from_secret_key(&SecretKey::from_secret_bytes(bytes(sk_hex)).expect("valid sk"))
}

// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct KeySortVectors {
    pubkeys: Vec<String>,
    sorted_pubkeys: Vec<String>,
}

fn key_sort() -> usize {
    let v: KeySortVectors = load("bip327/key_sort_vectors.json");
    let mut keys: Vec<[u8; 33]> = v.pubkeys.iter().map(|k| bytes(k)).collect();
    key_sort_bytes(&mut keys);
    let want: Vec<[u8; 33]> = v.sorted_pubkeys.iter().map(|k| bytes(k)).collect();
    assert_eq!(keys, want, "key_sort");
    1
}

#[derive(Deserialize)]
struct KeyAggVectors {
    pubkeys: Vec<String>,
    tweaks: Vec<String>,
    valid_test_cases: Vec<KeyAggValid>,
    error_test_cases: Vec<KeyAggError>,
}
#[derive(Deserialize)]
struct KeyAggValid {
    key_indices: Vec<usize>,
    expected: String,
}
#[derive(Deserialize)]
struct KeyAggError {
    key_indices: Vec<usize>,
    tweak_indices: Vec<usize>,
    is_xonly: Vec<bool>,
    error: ExpectedError,
}

fn key_agg() -> usize {
    let v: KeyAggVectors = load("bip327/key_agg_vectors.json");
    let mut n = 0;
    for (i, c) in v.valid_test_cases.iter().enumerate() {
        let ctx = KeyAggContext::from_bytes(&keys(&v.pubkeys, &c.key_indices)).expect("valid");
        assert_eq!(
            ctx.x_only_key().to_byte_array(),
            bytes::<32>(&c.expected),
            "key_agg valid {i}"
        );
        n += 1;
    }
    for (i, c) in v.error_test_cases.iter().enumerate() {
        let t = tweaks(&v.tweaks, &c.tweak_indices, &c.is_xonly);
        let got = key_agg_with(&keys(&v.pubkeys, &c.key_indices), t);
        expect_err(&format!("key_agg error {i}"), got, &c.error);
        n += 1;
    }
    n
}

#[derive(Deserialize)]
struct NonceGenVectors {
    test_cases: Vec<NonceGenCase>,
}
#[derive(Deserialize)]
struct NonceGenCase {
    rand_: String,
    sk: Option<String>,
    pk: String,
    aggpk: Option<String>,
    msg: Option<String>,
    extra_in: Option<String>,
    expected_secnonce: String,
    expected_pubnonce: String,
}

fn nonce_gen() -> usize {
    let v: NonceGenVectors = load("bip327/nonce_gen_vectors.json");
    for (i, c) in v.test_cases.iter().enumerate() {
        let pk = PublicKey::from_byte_array_compressed(bytes(&c.pk)).expect("valid pk");
        let sk =
            c.sk.as_ref()
                .map(|s| SecretKey::from_secret_bytes(bytes(s)).expect("sk"));
        let msg = c.msg.as_ref().map(|m| vecbytes(m));
        let extra = c.extra_in.as_ref().map(|e| vecbytes(e));
        let mut ng = NonceGen::new(pk);
        if let Some(sk) = &sk {
            ng = ng.secret_key(sk);
        }
        if let Some(a) = &c.aggpk {
            ng = ng.aggregate_key_bytes(bytes(a));
        }
        if let Some(m) = &msg {
            ng = ng.message(m);
        }
        if let Some(e) = &extra {
            ng = ng.extra_input(e);
        }
        let (sec, public) = ng.generate_from_rand(&bytes(&c.rand_)).expect("nonce_gen");
        assert_eq!(
            public.to_bytes(),
            bytes::<66>(&c.expected_pubnonce),
            "nonce_gen {i}"
        );
        // A secret nonce cannot be exported. Since k -> k·G is injective for k < n, equal public
        // nonces prove equal secret scalars; check ours and the expected one both map to it.
        let expected_sec =
            SecNonce::dangerous_from_bytes(&bytes(&c.expected_secnonce)).expect("sec");
        assert_eq!(
            expected_sec.public_key(),
            sec.public_key(),
            "nonce_gen {i} pk"
        );
        assert_eq!(
            expected_sec.public_nonce().expect("k != 0"),
            public,
            "nonce_gen {i} sec"
        );
        assert_eq!(
            sec.public_nonce().expect("k != 0"),
            public,
            "nonce_gen {i} ours"
        );
    }
    v.test_cases.len()
}

#[derive(Deserialize)]
struct NonceAggVectors {
    pnonces: Vec<String>,
    /// Absent from our own blame-order file, which has error cases only.
    #[serde(default)]
    valid_test_cases: Vec<NonceAggValid>,
    error_test_cases: Vec<NonceAggError>,
}
#[derive(Deserialize)]
struct NonceAggValid {
    pnonce_indices: Vec<usize>,
    expected: String,
}
#[derive(Deserialize)]
struct NonceAggError {
    pnonce_indices: Vec<usize>,
    error: ExpectedError,
}

fn nonce_agg() -> usize {
    nonce_agg_file("bip327/nonce_agg_vectors.json")
}

/// Several invalid nonces in one call (our own cases in BIP327's format): BIP327 checks the first
/// half of every nonce, then the second half of every nonce, and blames the first failure.
fn nonce_agg_blame_order() -> usize {
    nonce_agg_file("musig2-core/nonce_agg_blame_order.json")
}

fn nonce_agg_file(file: &str) -> usize {
    let v: NonceAggVectors = load(file);
    let pick =
        |idx: &[usize]| -> Vec<[u8; 66]> { idx.iter().map(|&i| bytes(&v.pnonces[i])).collect() };
    for (i, c) in v.valid_test_cases.iter().enumerate() {
        let agg = AggNonce::aggregate_bytes(&pick(&c.pnonce_indices)).expect("valid");
        assert_eq!(
            agg.to_bytes(),
            bytes::<66>(&c.expected),
            "nonce_agg valid {i}"
        );
        // The encoding round-trips, infinity included.
        assert_eq!(AggNonce::from_bytes(&agg.to_bytes()).expect("reparse"), agg);
    }
    for (i, c) in v.error_test_cases.iter().enumerate() {
        let got = AggNonce::aggregate_bytes(&pick(&c.pnonce_indices));
        expect_err(&format!("{file} error {i}"), got, &c.error);
    }
    v.valid_test_cases.len() + v.error_test_cases.len()
}

#[derive(Deserialize)]
struct SignVerifyVectors {
    sk: String,
    pubkeys: Vec<String>,
    secnonces: Vec<String>,
    pnonces: Vec<String>,
    aggnonces: Vec<String>,
    msgs: Vec<String>,
    valid_test_cases: Vec<SignValid>,
    sign_error_test_cases: Vec<SignError>,
    verify_fail_test_cases: Vec<VerifyFail>,
    verify_error_test_cases: Vec<VerifyError>,
}
#[derive(Deserialize)]
struct SignValid {
    key_indices: Vec<usize>,
    nonce_indices: Vec<usize>,
    aggnonce_index: usize,
    msg_index: usize,
    signer_index: usize,
    expected: String,
}
#[derive(Deserialize)]
struct SignError {
    key_indices: Vec<usize>,
    aggnonce_index: usize,
    msg_index: usize,
    secnonce_index: usize,
    error: ExpectedError,
}
#[derive(Deserialize)]
struct VerifyFail {
    sig: String,
    key_indices: Vec<usize>,
    nonce_indices: Vec<usize>,
    msg_index: usize,
    signer_index: usize,
}
#[derive(Deserialize)]
struct VerifyError {
    sig: String,
    key_indices: Vec<usize>,
    nonce_indices: Vec<usize>,
    msg_index: usize,
    signer_index: usize,
    error: ExpectedError,
}

/// BIP327 PartialSigVerify over encodings: NonceAgg and KeyAgg blame their inputs, and
/// `verify_partial_bytes` blames the signer for its nonce or partial signature by itself.
fn partial_sig_verify(
    psig: &[u8; 32],
    pubnonces: &[[u8; 66]],
    pubkeys: &[[u8; 33]],
    tweaks: &[Tweak],
    msg: &[u8],
    index: usize,
) -> Result<(), Error> {
    let aggnonce = AggNonce::aggregate_bytes(pubnonces)?;
    let ctx = KeyAggContext::from_bytes(pubkeys)?.with_tweaks(tweaks)?;
    let session = SessionContext::new(&ctx, &aggnonce, msg);
    let got = session.verify_partial_bytes(index, psig, &pubnonces[index]);
    // The parsed-value API with blame attached by hand gives the same verdict.
    let by_hand = (|| {
        let pubnonce =
            PubNonce::from_bytes(&pubnonces[index]).map_err(|e| e.blame_signer(index))?;
        let psig = PartialSignature::from_bytes(psig).map_err(|e| e.blame_signer(index))?;
        session.verify_partial(index, &psig, &pubnonce)
    })();
    assert_eq!(
        got, by_hand,
        "verify_partial_bytes and verify_partial disagree"
    );
    got
}

fn sign_verify() -> usize {
    let v: SignVerifyVectors = load("bip327/sign_verify_vectors.json");
    let kp = keypair(&v.sk);
    let pick_nonces =
        |idx: &[usize]| -> Vec<[u8; 66]> { idx.iter().map(|&i| bytes(&v.pnonces[i])).collect() };
    let mut n = 0;
    for (i, c) in v.valid_test_cases.iter().enumerate() {
        let pks = keys(&v.pubkeys, &c.key_indices);
        let ctx = KeyAggContext::from_bytes(&pks).expect("keys");
        let nonces = pick_nonces(&c.nonce_indices);
        let aggnonce = AggNonce::from_bytes(&bytes(&v.aggnonces[c.aggnonce_index])).expect("agg");
        // The vector's aggnonce is the aggregate of its nonces.
        assert_eq!(
            AggNonce::aggregate_bytes(&nonces).expect("nonces"),
            aggnonce,
            "sign {i}"
        );
        let msg = vecbytes(&v.msgs[c.msg_index]);
        let session = SessionContext::new(&ctx, &aggnonce, &msg);
        let sec = SecNonce::dangerous_from_bytes(&bytes(&v.secnonces[0])).expect("secnonce");
        let psig = session.sign(sec, &kp).expect("sign");
        assert_eq!(psig.to_bytes(), bytes::<32>(&c.expected), "sign valid {i}");
        partial_sig_verify(&psig.to_bytes(), &nonces, &pks, &[], &msg, c.signer_index)
            .unwrap_or_else(|e| panic!("sign valid {i}: verify {e}"));
        n += 1;
    }
    for (i, c) in v.sign_error_test_cases.iter().enumerate() {
        let case = format!("sign error {i}");
        let got = (|| {
            let ctx = KeyAggContext::from_bytes(&keys(&v.pubkeys, &c.key_indices))?;
            let aggnonce = AggNonce::from_bytes(&bytes(&v.aggnonces[c.aggnonce_index]))?;
            let session = SessionContext::new(&ctx, &aggnonce, &vecbytes(&v.msgs[c.msg_index]));
            let sec = SecNonce::dangerous_from_bytes(&bytes(&v.secnonces[c.secnonce_index]))?;
            session.sign(sec, &kp)
        })();
        expect_err(&case, got, &c.error);
        n += 1;
    }
    for (i, c) in v.verify_fail_test_cases.iter().enumerate() {
        let got = partial_sig_verify(
            &bytes(&c.sig),
            &pick_nonces(&c.nonce_indices),
            &keys(&v.pubkeys, &c.key_indices),
            &[],
            &vecbytes(&v.msgs[c.msg_index]),
            c.signer_index,
        );
        let err = got.expect_err(&format!("verify fail {i} must fail"));
        assert_eq!(
            err,
            Error::InvalidContribution {
                culprit: Culprit::Signer(c.signer_index),
                contribution: Contribution::PartialSig,
            },
            "verify fail {i}"
        );
        n += 1;
    }
    for (i, c) in v.verify_error_test_cases.iter().enumerate() {
        let got = partial_sig_verify(
            &bytes(&c.sig),
            &pick_nonces(&c.nonce_indices),
            &keys(&v.pubkeys, &c.key_indices),
            &[],
            &vecbytes(&v.msgs[c.msg_index]),
            c.signer_index,
        );
        expect_err(&format!("verify error {i}"), got, &c.error);
        n += 1;
    }
    n
}

#[derive(Deserialize)]
struct TweakVectors {
    sk: String,
    pubkeys: Vec<String>,
    secnonce: String,
    pnonces: Vec<String>,
    aggnonce: String,
    tweaks: Vec<String>,
    msg: String,
    valid_test_cases: Vec<TweakValid>,
    error_test_cases: Vec<TweakError>,
}
#[derive(Deserialize)]
struct TweakValid {
    key_indices: Vec<usize>,
    nonce_indices: Vec<usize>,
    tweak_indices: Vec<usize>,
    is_xonly: Vec<bool>,
    signer_index: usize,
    expected: String,
}
#[derive(Deserialize)]
struct TweakError {
    key_indices: Vec<usize>,
    tweak_indices: Vec<usize>,
    is_xonly: Vec<bool>,
    error: ExpectedError,
}

fn tweak() -> usize {
    let v: TweakVectors = load("bip327/tweak_vectors.json");
    let kp = keypair(&v.sk);
    let aggnonce = AggNonce::from_bytes(&bytes(&v.aggnonce)).expect("aggnonce");
    let msg = vecbytes(&v.msg);
    for (i, c) in v.valid_test_cases.iter().enumerate() {
        let pks = keys(&v.pubkeys, &c.key_indices);
        let t = tweaks(&v.tweaks, &c.tweak_indices, &c.is_xonly).expect("tweaks");
        let ctx = key_agg_with(&pks, Ok(t.clone())).expect("ctx");
        let nonces: Vec<[u8; 66]> = c
            .nonce_indices
            .iter()
            .map(|&j| bytes(&v.pnonces[j]))
            .collect();
        assert_eq!(
            AggNonce::aggregate_bytes(&nonces).expect("nonces"),
            aggnonce
        );
        let session = SessionContext::new(&ctx, &aggnonce, &msg);
        let sec = SecNonce::dangerous_from_bytes(&bytes(&v.secnonce)).expect("secnonce");
        let psig = session.sign(sec, &kp).expect("sign");
        assert_eq!(psig.to_bytes(), bytes::<32>(&c.expected), "tweak valid {i}");
        partial_sig_verify(&psig.to_bytes(), &nonces, &pks, &t, &msg, c.signer_index)
            .unwrap_or_else(|e| panic!("tweak valid {i}: verify {e}"));
    }
    for (i, c) in v.error_test_cases.iter().enumerate() {
        let t = tweaks(&v.tweaks, &c.tweak_indices, &c.is_xonly);
        let got = key_agg_with(&keys(&v.pubkeys, &c.key_indices), t);
        expect_err(&format!("tweak error {i}"), got, &c.error);
    }
    v.valid_test_cases.len() + v.error_test_cases.len()
}

#[derive(Deserialize)]
struct DetSignVectors {
    sk: String,
    pubkeys: Vec<String>,
    msgs: Vec<String>,
    valid_test_cases: Vec<DetSignValid>,
    error_test_cases: Vec<DetSignError>,
}
#[derive(Deserialize)]
struct DetSignValid {
    rand: Option<String>,
    aggothernonce: String,
    key_indices: Vec<usize>,
    tweaks: Vec<String>,
    is_xonly: Vec<bool>,
    msg_index: usize,
    signer_index: usize,
    expected: Vec<String>,
}
#[derive(Deserialize)]
struct DetSignError {
    rand: Option<String>,
    aggothernonce: String,
    key_indices: Vec<usize>,
    tweaks: Vec<String>,
    is_xonly: Vec<bool>,
    msg_index: usize,
    error: ExpectedError,
}

fn det_sign() -> usize {
    let v: DetSignVectors = load("bip327/det_sign_vectors.json");
    let sk = SecretKey::from_secret_bytes(bytes(&v.sk)).expect("sk");
    let run = |rand: &Option<String>,
               other: &str,
               key_indices: &[usize],
               tw: &[String],
               xonly: &[bool],
               msg_index: usize| {
        let pks = keys(&v.pubkeys, key_indices);
        let t: Result<Vec<Tweak>, Error> = tw
            .iter()
            .zip(xonly)
            .map(|(t, &x)| Tweak::new(bytes(t), x))
            .collect();
        let ctx = key_agg_with(&pks, t)?;
        let rand = rand.as_ref().map(|r| bytes::<32>(r));
        let msg = vecbytes(&v.msgs[msg_index]);
        let out = deterministic_sign(&sk, &bytes(other), &ctx, &msg, rand.as_ref())?;
        Ok::<_, Error>((out, ctx, msg))
    };
    for (i, c) in v.valid_test_cases.iter().enumerate() {
        let ((pubnonce, psig), ctx, msg) = run(
            &c.rand,
            &c.aggothernonce,
            &c.key_indices,
            &c.tweaks,
            &c.is_xonly,
            c.msg_index,
        )
        .unwrap_or_else(|e| panic!("det_sign valid {i}: {e}"));
        assert_eq!(
            pubnonce.to_bytes(),
            bytes::<66>(&c.expected[0]),
            "det_sign valid {i} nonce"
        );
        assert_eq!(
            psig.to_bytes(),
            bytes::<32>(&c.expected[1]),
            "det_sign valid {i} psig"
        );
        // The partial signature verifies against the session it implies.
        let other = PubNonce::from_bytes(&bytes(&c.aggothernonce)).expect("other");
        let session = SessionContext::new(&ctx, &AggNonce::aggregate(&[pubnonce, other]), &msg);
        session
            .verify_partial(c.signer_index, &psig, &pubnonce)
            .unwrap_or_else(|e| panic!("det_sign valid {i}: verify {e}"));
    }
    for (i, c) in v.error_test_cases.iter().enumerate() {
        let got = run(
            &c.rand,
            &c.aggothernonce,
            &c.key_indices,
            &c.tweaks,
            &c.is_xonly,
            c.msg_index,
        )
        .map(|(out, _, _)| out);
        expect_err(&format!("det_sign error {i}"), got, &c.error);
    }
    v.valid_test_cases.len() + v.error_test_cases.len()
}

#[derive(Deserialize)]
struct SigAggVectors {
    pubkeys: Vec<String>,
    pnonces: Vec<String>,
    tweaks: Vec<String>,
    psigs: Vec<String>,
    msg: String,
    valid_test_cases: Vec<SigAggValid>,
    error_test_cases: Vec<SigAggError>,
}
#[derive(Deserialize)]
struct SigAggValid {
    aggnonce: String,
    nonce_indices: Vec<usize>,
    key_indices: Vec<usize>,
    tweak_indices: Vec<usize>,
    is_xonly: Vec<bool>,
    psig_indices: Vec<usize>,
    expected: String,
}
#[derive(Deserialize)]
struct SigAggError {
    aggnonce: String,
    nonce_indices: Vec<usize>,
    key_indices: Vec<usize>,
    tweak_indices: Vec<usize>,
    is_xonly: Vec<bool>,
    psig_indices: Vec<usize>,
    error: ExpectedError,
}

fn sig_agg() -> usize {
    let v: SigAggVectors = load("bip327/sig_agg_vectors.json");
    let msg = vecbytes(&v.msg);
    let setup = |aggnonce: &str,
                 nonce_indices: &[usize],
                 key_indices: &[usize],
                 tweak_indices: &[usize],
                 is_xonly: &[bool],
                 psig_indices: &[usize]| {
        let pks = keys(&v.pubkeys, key_indices);
        let ctx = key_agg_with(&pks, tweaks(&v.tweaks, tweak_indices, is_xonly))?;
        let nonces: Vec<[u8; 66]> = nonce_indices
            .iter()
            .map(|&j| bytes(&v.pnonces[j]))
            .collect();
        let aggnonce = AggNonce::from_bytes(&bytes(aggnonce))?;
        assert_eq!(
            AggNonce::aggregate_bytes(&nonces)?,
            aggnonce,
            "sig_agg aggnonce"
        );
        let psigs: Vec<[u8; 32]> = psig_indices.iter().map(|&j| bytes(&v.psigs[j])).collect();
        let pubnonces = nonces
            .iter()
            .map(PubNonce::from_bytes)
            .collect::<Result<Vec<_>, Error>>()?;
        let session = SessionContext::new(&ctx, &aggnonce, &msg);
        Ok::<_, Error>((session, psigs, pubnonces, ctx))
    };
    for (i, c) in v.valid_test_cases.iter().enumerate() {
        let (session, psigs, pubnonces, ctx) = setup(
            &c.aggnonce,
            &c.nonce_indices,
            &c.key_indices,
            &c.tweak_indices,
            &c.is_xonly,
            &c.psig_indices,
        )
        .unwrap_or_else(|e| panic!("sig_agg valid {i}: {e}"));
        let sig = session.aggregate_bytes(&psigs).expect("aggregate");
        assert_eq!(
            sig.to_byte_array(),
            bytes::<64>(&c.expected),
            "sig_agg valid {i}"
        );
        for (j, psig) in psigs.iter().enumerate() {
            session
                .verify_partial_bytes(j, psig, &pubnonces[j].to_bytes())
                .unwrap_or_else(|e| panic!("sig_agg valid {i}: psig {j}: {e}"));
        }
        let psigs = psigs
            .iter()
            .map(PartialSignature::from_bytes)
            .collect::<Result<Vec<_>, Error>>()
            .expect("psigs below n");
        assert_eq!(session.aggregate(&psigs), Ok(sig), "sig_agg valid {i}");
        let fast = session
            .aggregate_and_verify(&psigs, &pubnonces)
            .expect("fast path");
        assert_eq!(fast, sig);
        schnorr::verify(&sig, &msg, &ctx.x_only_key()).expect("BIP340 verify");
    }
    for (i, c) in v.error_test_cases.iter().enumerate() {
        let got = setup(
            &c.aggnonce,
            &c.nonce_indices,
            &c.key_indices,
            &c.tweak_indices,
            &c.is_xonly,
            &c.psig_indices,
        )
        .and_then(|(session, psigs, _, _)| session.aggregate_bytes(&psigs));
        expect_err(&format!("sig_agg error {i}"), got, &c.error);
    }
    v.valid_test_cases.len() + v.error_test_cases.len()
}

#[derive(Deserialize)]
struct Bip328Case {
    aggregate_pubkey: String,
    keys: Vec<String>,
    xpub: String,
}

fn bip328() -> usize {
    let v: Vec<Bip328Case> = load("bip328/bip328-vectors.json");
    for (i, c) in v.iter().enumerate() {
        let pks: Vec<[u8; 33]> = c.keys.iter().map(|k| bytes(k)).collect();
        let ctx = KeyAggContext::from_bytes(&pks).expect("keys");
        assert_eq!(
            ctx.aggregate_key().serialize(),
            bytes::<33>(&c.aggregate_pubkey),
            "bip328 {i}: aggregate key"
        );
        let xpub = AggregateXpub::from_key_agg(&ctx);
        assert_eq!(xpub.to_base58(), c.xpub, "bip328 {i}: xpub");
        // Unhardened derivation as plain tweaks moves the signing context to the child key.
        let (child, tw) = xpub.derive_path(&[0, 7]).expect("derive");
        let tweaked = ctx.clone().with_tweaks(&tw).expect("tweaks");
        assert_eq!(
            tweaked.aggregate_key(),
            child.public_key(),
            "bip328 {i}: child"
        );
    }
    v.len()
}

/// A vector file and the function that runs its cases, returning how many ran.
type Suite = (&'static str, fn() -> usize);

fn main() -> ExitCode {
    let suites: [Suite; 10] = [
        ("bip327/key_sort_vectors.json", key_sort),
        ("bip327/key_agg_vectors.json", key_agg),
        ("bip327/nonce_gen_vectors.json", nonce_gen),
        ("bip327/nonce_agg_vectors.json", nonce_agg),
        (
            "musig2-core/nonce_agg_blame_order.json",
            nonce_agg_blame_order,
        ),
        ("bip327/sign_verify_vectors.json", sign_verify),
        ("bip327/tweak_vectors.json", tweak),
        ("bip327/det_sign_vectors.json", det_sign),
        ("bip327/sig_agg_vectors.json", sig_agg),
        ("bip328/bip328-vectors.json", bip328),
    ];
    let mut failed = false;
    for (file, run) in suites {
        match std::panic::catch_unwind(run) {
            Ok(n) => println!("vectors {file}: {n} cases passed"),
            Err(_) => {
                println!("vectors {file}: FAILED");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
