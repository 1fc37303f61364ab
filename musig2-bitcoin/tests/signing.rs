//! Signing plans against the BIP373 vectors, and end-to-end signing without a network.

mod common;

use bitcoin::Network;
use musig2_bitcoin::{SpendPath, parse_psbt, read_partial_sigs, read_pubnonces, signing_plan};
use musig2_core::secp256k1::Keypair;
use musig2_core::{AggNonce, PubNonce, SessionContext};

fn participants() -> Vec<Keypair> {
    common::bip373()
        .participants
        .iter()
        .map(|p| {
            let kp = common::keypair_from_wif(&p.wif_mainnet);
            assert_eq!(hex::encode(kp.public_key().serialize()), p.pubkey);
            kp
        })
        .collect()
}

fn expected_path(case: &str, path: &SpendPath) -> bool {
    match path {
        SpendPath::OutputKey => case.contains("output key is"),
        SpendPath::InternalKey { derivation } if derivation.is_empty() => {
            case.contains("internal key is a MuSig2")
        }
        SpendPath::InternalKey { derivation } => {
            case.contains("internal key is derived") && derivation == &[1, 2]
        }
        SpendPath::ScriptLeaf { derivation, .. } => {
            case.contains("key in a script") && derivation.is_empty()
        }
    }
}

/// The official nonces and partial signatures verify under the keys, tweaks and message of our
/// plan, and aggregate to a valid signature (equal to the vector's `TAP_KEY_SIG` where it has one).
#[test]
fn official_partial_signatures_verify_under_our_plan() {
    let v = common::bip373();
    let keys = participants();
    let mut checked = 0;
    for case in v
        .psbts
        .iter()
        .filter(|c| c.variant.as_deref() == Some("With all partial signatures"))
    {
        let psbt = parse_psbt(&case.bytes()).unwrap();
        for kp in &keys {
            let plan = signing_plan(&psbt, &kp.public_key(), Network::Bitcoin).unwrap();
            assert_eq!(plan.entries.len(), 1, "{}", case.name());
            let entry = &plan.entries[0];
            assert!(
                expected_path(&case.case, &entry.path),
                "{}: {:?}",
                case.name(),
                entry.path
            );
            let ctx = entry.key_agg().unwrap();
            assert_eq!(ctx.x_only_key(), entry.verify_key);
            let nonces: Vec<PubNonce> = read_pubnonces(&psbt, entry)
                .unwrap()
                .into_iter()
                .map(Option::unwrap)
                .collect();
            let psigs: Vec<_> = read_partial_sigs(&psbt, entry)
                .unwrap()
                .into_iter()
                .map(Option::unwrap)
                .collect();
            let session = SessionContext::new(&ctx, &AggNonce::aggregate(&nonces), &entry.message);
            for (i, (psig, nonce)) in psigs.iter().zip(&nonces).enumerate() {
                session.verify_partial(i, psig, nonce).unwrap();
            }
            let sig = session.aggregate_and_verify(&psigs, &nonces).unwrap();
            let input = &psbt.inputs[0];
            if let Some(key_sig) = input.tap_key_sig {
                assert_eq!(
                    key_sig.signature.serialize(),
                    sig.to_byte_array(),
                    "{}",
                    case.name()
                );
            }
            for s in input.tap_script_sigs.values() {
                assert_eq!(
                    s.signature.serialize(),
                    sig.to_byte_array(),
                    "{}",
                    case.name()
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * 3);
}

/// The three participants sign each "participant pubkeys only" PSBT with musig2-core from the
/// plan, through BIP373 fields; the inputs finalize and the extracted transaction verifies.
#[test]
fn participants_sign_pubkeys_only_psbts_end_to_end() {
    let v = common::bip373();
    let keys = participants();
    let cases: Vec<_> = v
        .psbts
        .iter()
        .filter(|c| c.variant.as_deref() == Some("With participant pubkeys only"))
        .collect();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let mut psbt = parse_psbt(&case.bytes()).unwrap();
        let plans: Vec<_> = keys
            .iter()
            .map(|kp| signing_plan(&psbt, &kp.public_key(), Network::Bitcoin).unwrap())
            .collect();
        // Every participant computes the same plan.
        assert!(
            plans.iter().all(|p| p.entries == plans[0].entries),
            "{}",
            case.name()
        );
        let plan = &plans[0];
        assert_eq!(plan.entries.len(), 1);
        assert!(plan.unmatched.is_empty());
        assert!(plan.approval.fee.is_some());

        common::sign_through_psbt(&mut psbt, &plan.entries, &keys);

        // The nonce and partial-signature key data we wrote are the ones of the official
        // "with all partial signatures" PSBT of the same case.
        let official = v
            .psbts
            .iter()
            .find(|c| {
                c.case == case.case && c.variant.as_deref() == Some("With all partial signatures")
            })
            .unwrap();
        let official = parse_psbt(&official.bytes()).unwrap();
        let ours: Vec<_> = psbt.inputs[0].unknown.keys().collect();
        let theirs: Vec<_> = official.inputs[0].unknown.keys().collect();
        assert_eq!(ours, theirs, "{}", case.name());

        let prevouts: Vec<_> = psbt
            .inputs
            .iter()
            .map(|i| i.witness_utxo.clone().unwrap())
            .collect();
        let (finalized, tx) = common::finalize_extract_verify(psbt, &plan.entries);
        // The interpreter check is not vacuous: a flipped signature bit fails it.
        let mut bad = tx.clone();
        let mut elems: Vec<Vec<u8>> = bad.input[0].witness.iter().map(<[u8]>::to_vec).collect();
        elems[0][5] ^= 1;
        bad.input[0].witness = bitcoin::Witness::from_slice(&elems);
        let interpreter = miniscript::Interpreter::from_txdata(
            &prevouts[0].script_pubkey,
            &bad.input[0].script_sig,
            &bad.input[0].witness,
            bad.input[0].sequence,
            bad.lock_time,
        )
        .unwrap();
        let prevouts = bitcoin::sighash::Prevouts::All(&prevouts);
        let secp = bitcoin::secp256k1::Secp256k1::verification_only();
        let run: Result<Vec<_>, _> = interpreter.iter(&secp, &bad, 0, &prevouts).collect();
        assert!(run.is_err() || run.unwrap().is_empty(), "{}", case.name());
        // BIP373 fields are kept through finalization.
        assert_eq!(finalized.inputs[0].unknown.len(), theirs.len());
    }
}

/// Change detection through `PSBT_OUT_MUSIG2_PARTICIPANT_PUBKEYS` on the "receiving" vectors.
#[test]
fn receiving_outputs_are_detected_as_change() {
    let v = common::bip373();
    let keys = participants();
    let outsider = Keypair::new(&mut rand::rng());
    for case in v.psbts.iter().filter(|c| c.case.starts_with("Receiving")) {
        let psbt = parse_psbt(&case.bytes()).unwrap();
        for kp in &keys {
            let plan = signing_plan(&psbt, &kp.public_key(), Network::Bitcoin).unwrap();
            assert!(plan.entries.is_empty());
            let change: Vec<bool> = plan.approval.outputs.iter().map(|o| o.change).collect();
            assert!(change[0], "{}", case.case);
            assert!(change[1..].iter().all(|c| !c), "{}", case.case);
        }
        let plan = signing_plan(&psbt, &outsider.public_key(), Network::Bitcoin).unwrap();
        assert!(plan.approval.outputs.iter().all(|o| !o.change));
    }
}
