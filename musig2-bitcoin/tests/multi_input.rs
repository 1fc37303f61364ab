//! A synthetic PSBT with 24 MuSig2 inputs of every kind (BIP328-derived internal key from the
//! signer set's own descriptor, aggregate internal key, aggregate output key, `pk()` leaf with
//! a derived key), every sighash type, and a change output: the plan has 24 entries, the
//! same for every signer, and the transaction signs, finalizes, extracts and verifies.

mod common;

use bitcoin::Network;
use musig2_bitcoin::fixtures::{CHANGE_INDEX, FEE, PAY, multi_input_psbt, sighash_type_of_input};
use musig2_bitcoin::{SpendPath, signing_plan};
use musig2_core::secp256k1::Keypair;

const INPUTS: usize = 24;

#[test]
fn twenty_four_musig_inputs_plan_sign_finalize() {
    let mut rng = rand::rng();
    let signers: Vec<Keypair> = (0..3).map(|_| Keypair::new(&mut rng)).collect();
    let keys: Vec<_> = signers.iter().map(|k| k.public_key()).collect();
    let fixture = multi_input_psbt(&keys, INPUTS).unwrap();
    let mut psbt = fixture.psbt;
    // Inputs 0, 4, 8, … pay to the signer set's own receive addresses.
    for (i, input) in psbt.inputs.iter().enumerate().step_by(4) {
        assert_eq!(
            input.witness_utxo.as_ref().unwrap().script_pubkey,
            fixture.receive.script_pubkey(i as u32).unwrap(),
            "descriptor at {i}"
        );
    }

    let plans: Vec<_> = signers
        .iter()
        .map(|kp| signing_plan(&psbt, &kp.public_key(), Network::Testnet).unwrap())
        .collect();
    assert!(plans.iter().all(|p| p == &plans[0]));
    let plan = &plans[0];
    assert_eq!(plan.entries.len(), INPUTS);
    assert!(plan.unmatched.is_empty());
    for entry in &plan.entries {
        let want_type = sighash_type_of_input(entry.input_index).map_or(0, |t| t.to_u32());
        assert_eq!(entry.sighash_type as u32, want_type);
        let kind = entry.input_index % 4;
        let ok = match &entry.path {
            SpendPath::InternalKey { derivation } if kind == 0 => {
                derivation == &[0, entry.input_index as u32] && entry.tweaks.len() == 3
            }
            SpendPath::InternalKey { derivation } => kind == 1 && derivation.is_empty(),
            SpendPath::OutputKey => kind == 2 && entry.tweaks.is_empty(),
            SpendPath::ScriptLeaf { derivation, .. } => {
                kind == 3 && derivation.len() == 2 && entry.leaf_hash.is_some()
            }
        };
        assert!(ok, "input {}: {:?}", entry.input_index, entry.path);
    }
    let approval = &plan.approval;
    assert_eq!(approval.fee, Some(FEE));
    assert_eq!(approval.sent, PAY);
    assert_eq!(
        approval
            .outputs
            .iter()
            .map(|o| o.change)
            .collect::<Vec<_>>(),
        [false, true]
    );
    assert_eq!(
        approval.outputs[1].address.as_ref().unwrap(),
        &fixture
            .change
            .address_at(0, CHANGE_INDEX, Network::Testnet)
            .unwrap()
    );
    assert!(approval.inputs.iter().all(|i| i.signed_by_us));

    common::sign_through_psbt(&mut psbt, &plan.entries, &signers);
    let (_, tx) = common::finalize_extract_verify(psbt, &plan.entries);
    assert_eq!(tx.input.len(), INPUTS);
}
