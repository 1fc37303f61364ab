//! The typed errors of plans and finalizing, on altered BIP373 vectors.

mod common;

use bitcoin::psbt::{Psbt, PsbtSighashType};
use bitcoin::{Network, ScriptBuf};
use musig2_bitcoin::{
    Error, Location, ParticipantPubkeys, add_signature, extract, finalize_input,
    input_participants, parse_psbt, set_input_participants, signing_plan,
};
use musig2_core::secp256k1::{PublicKey, schnorr};

/// The "output key" PSBT with participant pubkeys only, and participant 0's key.
fn fixture() -> (Psbt, PublicKey) {
    let v = common::bip373();
    let psbt = parse_psbt(&v.psbts[0].bytes()).unwrap();
    let key = common::keypair_from_wif(&v.participants[0].wif_mainnet).public_key();
    (psbt, key)
}

#[test]
fn participants_that_do_not_aggregate_to_the_key_are_refused() {
    let (mut psbt, key) = fixture();
    let mut set: ParticipantPubkeys = input_participants(&psbt.inputs[0], 0).unwrap().remove(0);
    set.participants.reverse();
    set_input_participants(&mut psbt.inputs[0], &set);
    let err = signing_plan(&psbt, &key, Network::Bitcoin).unwrap_err();
    assert!(
        matches!(
            err,
            Error::AggregateMismatch {
                location: Location::Input(0)
            }
        ),
        "{err}"
    );
}

#[test]
fn inputs_listing_us_but_paying_elsewhere_are_reported_unmatched() {
    let (mut psbt, key) = fixture();
    let utxo = psbt.inputs[0].witness_utxo.as_mut().unwrap();
    utxo.script_pubkey =
        ScriptBuf::from_hex("5120f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9")
            .unwrap();
    let plan = signing_plan(&psbt, &key, Network::Bitcoin).unwrap();
    assert!(plan.entries.is_empty());
    assert_eq!(plan.unmatched, [0]);

    let (mut psbt, key) = fixture();
    psbt.inputs[0].witness_utxo = None;
    let plan = signing_plan(&psbt, &key, Network::Bitcoin).unwrap();
    assert_eq!(plan.unmatched, [0]);
    assert_eq!(plan.approval.fee, None);
}

#[test]
fn non_taproot_sighash_types_are_refused() {
    let (mut psbt, key) = fixture();
    psbt.inputs[0].sighash_type = Some(PsbtSighashType::from_u32(0x04));
    let err = signing_plan(&psbt, &key, Network::Bitcoin).unwrap_err();
    assert!(
        matches!(err, Error::InvalidSighashType { input: 0, value: 4 }),
        "{err}"
    );
}

#[test]
fn wrong_signatures_and_unsigned_inputs_do_not_finalize() {
    let (mut psbt, key) = fixture();
    let plan = signing_plan(&psbt, &key, Network::Bitcoin).unwrap();
    let junk = schnorr::Signature::from_byte_array([1; 64]);
    let err = add_signature(&mut psbt, &plan.entries[0], &junk).unwrap_err();
    assert!(matches!(err, Error::InvalidSignature(0)), "{err}");
    let err = finalize_input(&mut psbt, 0).unwrap_err();
    assert!(matches!(err, Error::Finalize { input: 0, .. }), "{err}");
    let err = extract(psbt.clone()).unwrap_err();
    assert!(matches!(err, Error::Finalize { input: 0, .. }), "{err}");
    assert!(matches!(
        finalize_input(&mut psbt, 9),
        Err(Error::NoSuchInput(9))
    ));
}

#[test]
fn anyonecanpay_signs_without_the_other_inputs_utxos() {
    use bitcoin::hashes::Hash;
    use bitcoin::sighash::{Prevouts, SighashCache};

    let (mut psbt, key) = fixture();
    let mut other = psbt.unsigned_tx.input[0].clone();
    other.previous_output.vout += 1;
    psbt.unsigned_tx.input.push(other);
    psbt.inputs.push(Default::default());
    let err = signing_plan(&psbt, &key, Network::Bitcoin).unwrap_err();
    assert!(matches!(err, Error::MissingUtxo(1)), "{err}");

    psbt.inputs[0].sighash_type = Some(PsbtSighashType::from_u32(0x81));
    let plan = signing_plan(&psbt, &key, Network::Bitcoin).unwrap();
    assert_eq!(plan.entries.len(), 1);
    assert_eq!(plan.approval.fee, None);
    let own = psbt.inputs[0].witness_utxo.clone().unwrap();
    let want = SighashCache::new(&psbt.unsigned_tx)
        .taproot_key_spend_signature_hash(
            0,
            &Prevouts::One(0, own),
            bitcoin::TapSighashType::AllPlusAnyoneCanPay,
        )
        .unwrap();
    assert_eq!(plan.entries[0].message, want.to_byte_array());
}
