//! Every BIP373 vector: the 14 valid PSBTs parse, their MuSig2 fields decode, and both the PSBT
//! and the fields re-encoded by this crate round-trip byte for byte; the 10 invalid ones are
//! refused naming the field and the reason.

mod common;

use bitcoin::Psbt;
use musig2_bitcoin::{
    Bip373Field, Error, FieldFault, Location, input_partial_sigs, input_participants,
    input_pubnonces, output_participants, parse_psbt, set_input_participants,
    set_output_participants, set_partial_sig, set_pubnonce,
};

#[test]
fn valid_psbts_round_trip_byte_exact() {
    let v = common::bip373();
    let valid: Vec<_> = v.psbts.iter().filter(|c| c.valid).collect();
    assert_eq!(valid.len(), 14);
    for case in valid {
        let bytes = case.bytes();
        let psbt = parse_psbt(&bytes).unwrap_or_else(|e| panic!("{}: {e}", case.name()));
        assert_eq!(psbt.serialize(), bytes, "{}", case.name());

        // Decode every field, drop the raw entries, write them back through this crate.
        let mut rebuilt: Psbt = psbt.clone();
        let mut fields = 0;
        for (i, input) in rebuilt.inputs.iter_mut().enumerate() {
            let parts = input_participants(input, i).unwrap();
            let nonces = input_pubnonces(input, i).unwrap();
            let psigs = input_partial_sigs(input, i).unwrap();
            fields += parts.len() + nonces.len() + psigs.len();
            input.unknown.clear();
            parts.iter().for_each(|p| set_input_participants(input, p));
            nonces.iter().for_each(|(k, n)| set_pubnonce(input, k, n));
            psigs.iter().for_each(|(k, s)| set_partial_sig(input, k, s));
        }
        for (i, output) in rebuilt.outputs.iter_mut().enumerate() {
            let parts = output_participants(output, i).unwrap();
            fields += parts.len();
            output.unknown.clear();
            parts
                .iter()
                .for_each(|p| set_output_participants(output, p));
        }
        assert!(fields > 0, "{}: no BIP373 field", case.name());
        assert_eq!(rebuilt.serialize(), bytes, "{}: re-encoded", case.name());
    }
}

/// Field, and whether the fault is in the key data (else in the value), from the case text.
fn expected(case: &str) -> (Location, Bip373Field, bool) {
    let key_data = case.contains("keydata");
    let output = case.contains("output");
    let field = if case.contains("public nonce") {
        Bip373Field::InputPubNonce
    } else if case.contains("partial sig") {
        Bip373Field::InputPartialSig
    } else if output {
        Bip373Field::OutputParticipantPubkeys
    } else {
        Bip373Field::InputParticipantPubkeys
    };
    let location = if output {
        Location::Output(0)
    } else {
        Location::Input(0)
    };
    (location, field, key_data)
}

#[test]
fn invalid_psbts_are_refused_naming_field_and_reason() {
    let v = common::bip373();
    let invalid: Vec<_> = v.psbts.iter().filter(|c| !c.valid).collect();
    assert_eq!(invalid.len(), 10);
    for case in &invalid {
        // BIP373's "x-only output participant pubkey" PSBT is byte for byte the "x-only
        // aggregate pubkey in output participant pubkeys keydata" one (an erratum in the BIP),
        // so it is refused for its key data; check that instead of trusting the case text.
        let first_same = invalid
            .iter()
            .find(|c| c.psbt_hex == case.psbt_hex)
            .unwrap();
        let err = parse_psbt(&case.bytes()).unwrap_err();
        let Error::Bip373 {
            location,
            field,
            fault,
        } = err
        else {
            panic!("{}: expected a BIP373 field error, got {err}", case.case);
        };
        let (want_location, want_field, key_data) = expected(&first_same.case);
        assert_eq!(
            (location, field),
            (want_location, want_field),
            "{}",
            case.case
        );
        match fault {
            FieldFault::KeyDataLength { got, .. } => {
                assert!(key_data, "{}: {fault}", case.case);
                // Every key-data case puts a 32-byte x-only key where 33 bytes belong.
                assert!(got == 32 || got == 65 || got == 97, "{}: {got}", case.case);
            }
            FieldFault::ValueLength { .. } => assert!(!key_data, "{}: {fault}", case.case),
            other => panic!("{}: unexpected fault {other}", case.case),
        }
    }
}
