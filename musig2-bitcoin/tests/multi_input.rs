//! A synthetic PSBT with 24 MuSig2 inputs of every kind (BIP328-derived internal key from the
//! signer set's own descriptor, aggregate internal key, aggregate output key, `pk()` leaf with
//! a derived key), every sighash type, and a change output: the plan has 24 entries, the
//! same for every signer, and the transaction signs, finalizes, extracts and verifies.

mod common;

use bitcoin::absolute::LockTime;
use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint};
use bitcoin::hashes::Hash;
use bitcoin::key::TweakedPublicKey;
use bitcoin::psbt::{Psbt, PsbtSighashType};
use bitcoin::script::Builder;
use bitcoin::secp256k1::Secp256k1;
use bitcoin::taproot::{LeafVersion, TapLeafHash, TaprootBuilder};
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, Network, NetworkKind, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid,
    Witness,
};
use musig2_bitcoin::{
    ParticipantPubkeys, SpendPath, set_input_participants, set_output_participants,
    signer_set_descriptors, signing_plan, to_btc_xonly,
};
use musig2_core::secp256k1::Keypair;
use musig2_core::{AggregateXpub, KeyAggContext, key_sort};

const INPUTS: usize = 24;
const INPUT_VALUE: Amount = Amount::from_sat(10_000);
const FEE: Amount = Amount::from_sat(5_000);
const PAY: Amount = Amount::from_sat(100_000);

fn origin(xpub: &AggregateXpub, path: &[u32]) -> (Fingerprint, DerivationPath) {
    let path: Vec<ChildNumber> = path
        .iter()
        .map(|i| ChildNumber::from_normal_idx(*i).unwrap())
        .collect();
    (
        Fingerprint::from(xpub.fingerprint()),
        DerivationPath::from(path),
    )
}

/// Every Taproot sighash type, each on every spend kind: SINGLE and SINGLE|ANYONECANPAY on
/// inputs 0 and 1 (which have outputs), the five others cycling over the rest (5 and 4 are
/// coprime, so every type meets every kind). `None` is SIGHASH_DEFAULT left implicit.
fn sighash_type(i: usize) -> Option<PsbtSighashType> {
    let value = match i {
        0 => 0x03,
        1 => 0x83,
        _ => [0x00, 0x01, 0x02, 0x81, 0x82][i % 5],
    };
    (value != 0).then(|| PsbtSighashType::from_u32(value))
}

#[test]
fn twenty_four_musig_inputs_plan_sign_finalize() {
    let secp = Secp256k1::new();
    let mut rng = rand::rng();
    let signers: Vec<Keypair> = (0..3).map(|_| Keypair::new(&mut rng)).collect();
    let mut keys: Vec<_> = signers.iter().map(|k| k.public_key()).collect();
    let [receive, change] = signer_set_descriptors(&keys, NetworkKind::Test).unwrap();
    key_sort(&mut keys);
    let aggregate = KeyAggContext::new(&keys).unwrap().aggregate_key();
    let xpub = AggregateXpub::new(aggregate);
    let set = ParticipantPubkeys {
        aggregate,
        participants: keys.clone(),
    };
    let agg_x = to_btc_xonly(&aggregate.x_only_public_key().0);
    let other = to_btc_xonly(&Keypair::new(&mut rng).public_key().x_only_public_key().0);

    let mut inputs = Vec::new();
    let mut txins = Vec::new();
    for i in 0..INPUTS {
        let mut input = bitcoin::psbt::Input::default();
        let derived = to_btc_xonly(
            &xpub
                .derive_path(&[0, i as u32])
                .unwrap()
                .0
                .public_key()
                .x_only_public_key()
                .0,
        );
        let spk = match i % 4 {
            0 => {
                // Internal key derived at /0/i, as the signer set's receive descriptor has it.
                input.tap_internal_key = Some(derived);
                input
                    .tap_key_origins
                    .insert(derived, (vec![], origin(&xpub, &[0, i as u32])));
                let spk = ScriptBuf::new_p2tr(&secp, derived, None);
                assert_eq!(
                    spk,
                    receive.script_pubkey(i as u32).unwrap(),
                    "descriptor at {i}"
                );
                spk
            }
            1 => {
                input.tap_internal_key = Some(agg_x);
                ScriptBuf::new_p2tr(&secp, agg_x, None)
            }
            2 => ScriptBuf::new_p2tr_tweaked(TweakedPublicKey::dangerous_assume_tweaked(agg_x)),
            _ => {
                let script = Builder::new()
                    .push_slice(derived.serialize())
                    .push_opcode(bitcoin::opcodes::all::OP_CHECKSIG)
                    .into_script();
                let info = TaprootBuilder::new()
                    .add_leaf(0, script.clone())
                    .unwrap()
                    .finalize(&secp, other)
                    .unwrap();
                let cb = info
                    .control_block(&(script.clone(), LeafVersion::TapScript))
                    .unwrap();
                let leaf = TapLeafHash::from_script(&script, LeafVersion::TapScript);
                input.tap_internal_key = Some(other);
                input.tap_merkle_root = info.merkle_root();
                input
                    .tap_scripts
                    .insert(cb, (script, LeafVersion::TapScript));
                input
                    .tap_key_origins
                    .insert(derived, (vec![leaf], origin(&xpub, &[0, i as u32])));
                ScriptBuf::new_p2tr_tweaked(info.output_key())
            }
        };
        input.sighash_type = sighash_type(i);
        input.witness_utxo = Some(TxOut {
            value: INPUT_VALUE,
            script_pubkey: spk,
        });
        set_input_participants(&mut input, &set);
        inputs.push(input);
        txins.push(TxIn {
            previous_output: OutPoint {
                txid: Txid::from_byte_array([i as u8; 32]),
                vout: i as u32,
            },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        });
    }
    let payee = Keypair::new(&mut rng).public_key().x_only_public_key().0;
    let change_value = INPUT_VALUE * INPUTS as u64 - PAY - FEE;
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: txins,
        output: vec![
            TxOut {
                value: PAY,
                script_pubkey: ScriptBuf::new_p2tr(&secp, to_btc_xonly(&payee), None),
            },
            TxOut {
                value: change_value,
                script_pubkey: change.script_pubkey(5).unwrap(),
            },
        ],
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
    psbt.inputs = inputs;
    let change_key = to_btc_xonly(
        &xpub
            .derive_path(&[1, 5])
            .unwrap()
            .0
            .public_key()
            .x_only_public_key()
            .0,
    );
    psbt.outputs[1].tap_internal_key = Some(change_key);
    psbt.outputs[1]
        .tap_key_origins
        .insert(change_key, (vec![], origin(&xpub, &[1, 5])));
    set_output_participants(&mut psbt.outputs[1], &set);

    let plans: Vec<_> = signers
        .iter()
        .map(|kp| signing_plan(&psbt, &kp.public_key(), Network::Testnet).unwrap())
        .collect();
    assert!(plans.iter().all(|p| p == &plans[0]));
    let plan = &plans[0];
    assert_eq!(plan.entries.len(), INPUTS);
    assert!(plan.unmatched.is_empty());
    for entry in &plan.entries {
        let want_type = sighash_type(entry.input_index).map_or(0, |t| t.to_u32());
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
        &change.address_at(0, 5, Network::Testnet).unwrap()
    );
    assert!(approval.inputs.iter().all(|i| i.signed_by_us));

    common::sign_through_psbt(&mut psbt, &plan.entries, &signers);
    let (_, tx) = common::finalize_extract_verify(psbt, &plan.entries);
    assert_eq!(tx.input.len(), INPUTS);
}
