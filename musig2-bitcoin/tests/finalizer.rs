//! A finalizer that is not a signer: `finalizer_entries` finds every MuSig2 input whoever we
//! are, `aggregate_input` turns the BIP373 vectors' contributions into signatures (naming
//! holdouts and culprits), and `psbt_digest` names a PSBT across its signing contributions.

mod common;

use bitcoin::Amount;
use musig2_bitcoin::{
    Bip373Field, Error, PSBT_IN_MUSIG2_PARTIAL_SIG, add_signature, aggregate_input,
    finalizer_entries, parse_psbt, psbt_digest,
};

fn variant<'a>(v: &'a common::Bip373Vectors, case: &str, variant: &str) -> &'a common::PsbtCase {
    v.psbts
        .iter()
        .find(|c| c.case == case && c.variant.as_deref() == Some(variant))
        .unwrap()
}

fn spend_cases(v: &common::Bip373Vectors) -> Vec<String> {
    let mut cases: Vec<String> = v
        .psbts
        .iter()
        .filter(|c| c.valid && c.case.starts_with("Spend"))
        .map(|c| c.case.clone())
        .collect();
    cases.dedup();
    cases
}

#[test]
fn official_contributions_aggregate_and_finalize_without_our_key() {
    let v = common::bip373();
    let cases = spend_cases(&v);
    assert_eq!(cases.len(), 4);
    for case in &cases {
        let full = variant(&v, case, "With all partial signatures");
        let mut psbt = parse_psbt(&full.bytes()).unwrap();
        let entries = finalizer_entries(&psbt).unwrap();
        assert_eq!(entries.len(), 1, "{case}");
        let prevouts: Vec<_> = psbt
            .inputs
            .iter()
            .map(|i| i.witness_utxo.clone().unwrap())
            .collect();
        let signature = aggregate_input(&psbt, &entries[0]).unwrap();
        add_signature(&mut psbt, &entries[0], &signature).unwrap();
        musig2_bitcoin::finalize(&mut psbt, &entries).unwrap();
        let tx = musig2_bitcoin::extract(psbt).unwrap();
        common::verify_extracted(&tx, &prevouts, &entries);
    }
}

#[test]
fn missing_contributions_name_the_holdouts() {
    let v = common::bip373();
    for case in spend_cases(&v) {
        let nonces_only = variant(&v, &case, "With all pubnonces");
        let psbt = parse_psbt(&nonces_only.bytes()).unwrap();
        let entry = &finalizer_entries(&psbt).unwrap()[0];
        match aggregate_input(&psbt, entry).unwrap_err() {
            Error::MissingContributions {
                input,
                field,
                participants,
            } => {
                assert_eq!(input, 0);
                assert_eq!(field, Bip373Field::InputPartialSig);
                assert_eq!(participants, entry.signers, "{case}");
            }
            other => panic!("{case}: {other}"),
        }
        let keys_only = variant(&v, &case, "With participant pubkeys only");
        let psbt = parse_psbt(&keys_only.bytes()).unwrap();
        let err = aggregate_input(&psbt, entry).unwrap_err();
        assert!(
            matches!(
                err,
                Error::MissingContributions {
                    field: Bip373Field::InputPubNonce,
                    ..
                }
            ),
            "{case}: {err}"
        );
    }
}

#[test]
fn a_bad_partial_signature_names_its_participant() {
    let v = common::bip373();
    let case = &spend_cases(&v)[0];
    let mut psbt = parse_psbt(&variant(&v, case, "With all partial signatures").bytes()).unwrap();
    let entry = finalizer_entries(&psbt).unwrap().remove(0);
    // Replace the second participant's partial signature with another valid scalar.
    let culprit = entry.signers[1];
    let key = psbt.inputs[0]
        .unknown
        .keys()
        .find(|k| {
            k.type_value == PSBT_IN_MUSIG2_PARTIAL_SIG && k.key[..33] == culprit.serialize()[..]
        })
        .unwrap()
        .clone();
    psbt.inputs[0].unknown.insert(key, vec![1; 32]);
    match aggregate_input(&psbt, &entry).unwrap_err() {
        Error::InvalidPartialSigs {
            input,
            participants,
        } => {
            assert_eq!(input, 0);
            assert_eq!(participants, vec![culprit]);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn digest_ignores_contributions_and_covers_the_transaction() {
    let v = common::bip373();
    for case in spend_cases(&v) {
        let digests: Vec<[u8; 32]> = [
            "With participant pubkeys only",
            "With all pubnonces",
            "With all partial signatures",
        ]
        .iter()
        .map(|name| psbt_digest(&parse_psbt(&variant(&v, &case, name).bytes()).unwrap()))
        .collect();
        assert_eq!(digests[0], digests[1], "{case}");
        assert_eq!(digests[0], digests[2], "{case}");

        let mut changed = parse_psbt(&variant(&v, &case, "With all pubnonces").bytes()).unwrap();
        let value = changed.unsigned_tx.output[0].value;
        changed.unsigned_tx.output[0].value = value - Amount::from_sat(1);
        assert_ne!(psbt_digest(&changed), digests[0], "{case}");
    }
}
