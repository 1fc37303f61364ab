//! Test fixtures (feature `fixtures`): a synthetic many-input MuSig2 PSBT and an independent
//! check of an extracted transaction. For this crate's tests and for the crates that sign
//! PSBTs over the network on top of it; not for production use.

use bitcoin::absolute::LockTime;
use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint};
use bitcoin::hashes::{Hash, sha256};
use bitcoin::key::TweakedPublicKey;
use bitcoin::psbt::{Input, Psbt, PsbtSighashType};
use bitcoin::script::Builder;
use bitcoin::secp256k1::{Message, Secp256k1};
use bitcoin::sighash::{Prevouts, SighashCache};
use bitcoin::taproot::{LeafVersion, TapLeafHash, TaprootBuilder};
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, NetworkKind, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use musig2_core::secp256k1::{Keypair, PublicKey, XOnlyPublicKey};
use musig2_core::{AggregateXpub, KeyAggContext, key_sort};

use crate::{
    MusigDescriptor, ParticipantPubkeys, PlanEntry, SpendPath, set_input_participants,
    set_output_participants, signer_set_descriptors, to_btc_xonly,
};

/// Each input's value in [`multi_input_psbt`].
pub const INPUT_VALUE: Amount = Amount::from_sat(10_000);
/// The fee [`multi_input_psbt`] leaves.
pub const FEE: Amount = Amount::from_sat(5_000);
/// What [`multi_input_psbt`] pays to its one external output.
pub const PAY: Amount = Amount::from_sat(100_000);
/// The index on the change branch (`/1/*`) of [`multi_input_psbt`]'s change output.
pub const CHANGE_INDEX: u32 = 5;

/// A synthetic PSBT spending `inputs` MuSig2 outputs of one signer set, and the set's wallet.
#[derive(Debug, Clone)]
pub struct MultiInputPsbt {
    /// The PSBT, with BIP373 participant fields on every input and on the change output.
    pub psbt: Psbt,
    /// The signer set's receive descriptor (`tr(musig(...)/0/*)`).
    pub receive: MusigDescriptor,
    /// Its change descriptor (`tr(musig(...)/1/*)`).
    pub change: MusigDescriptor,
}

/// The Taproot sighash types, spread over the inputs so every type meets every spend kind:
/// SINGLE and SINGLE|ANYONECANPAY on inputs 0 and 1 (which have outputs), the five others
/// cycling over the rest (5 and 4 are coprime). `None` is SIGHASH_DEFAULT left implicit.
pub fn sighash_type_of_input(i: usize) -> Option<PsbtSighashType> {
    let value = match i {
        0 => 0x03,
        1 => 0x83,
        _ => [0x00, 0x01, 0x02, 0x81, 0x82][i % 5],
    };
    (value != 0).then(|| PsbtSighashType::from_u32(value))
}

/// A deterministic key that belongs to nobody in the signer set.
fn outsider_key(label: &[u8]) -> XOnlyPublicKey {
    let mut seed = sha256::Hash::hash(label).to_byte_array();
    loop {
        if let Ok(kp) = Keypair::from_secret_bytes(seed) {
            return kp.public_key().x_only_public_key().0;
        }
        seed = sha256::Hash::hash(&seed).to_byte_array();
    }
}

fn origin(xpub: &AggregateXpub, path: &[u32]) -> (Fingerprint, DerivationPath) {
    let path: Vec<ChildNumber> = path
        .iter()
        .filter_map(|i| ChildNumber::from_normal_idx(*i).ok())
        .collect();
    (
        Fingerprint::from(xpub.fingerprint()),
        DerivationPath::from(path),
    )
}

/// A PSBT spending `inputs` outputs of the signer set `signers`, four spend kinds in turn:
/// input `i % 4 == 0` the receive descriptor's address `i` (BIP328-derived internal key),
/// `1` the aggregate as internal key, `2` the aggregate as output key, `3` a `pk()` leaf with
/// the key derived at `/0/i`. Sighash types follow [`sighash_type_of_input`]. Outputs: [`PAY`]
/// to an outsider, then change at [`CHANGE_INDEX`] of the change descriptor, with BIP373's
/// output participant field; the fee is [`FEE`]. Every signer's plan signs every input.
pub fn multi_input_psbt(
    signers: &[PublicKey],
    inputs: usize,
) -> std::result::Result<MultiInputPsbt, String> {
    let err = |e: crate::Error| e.to_string();
    let secp = Secp256k1::verification_only();
    let mut keys = signers.to_vec();
    let [receive, change] = signer_set_descriptors(&keys, NetworkKind::Test).map_err(err)?;
    key_sort(&mut keys);
    let aggregate = KeyAggContext::new(&keys)
        .map_err(|e| e.to_string())?
        .aggregate_key();
    let xpub = AggregateXpub::new(aggregate);
    let set = ParticipantPubkeys {
        aggregate,
        participants: keys,
    };
    let agg_x = to_btc_xonly(&aggregate.x_only_public_key().0);
    let other = to_btc_xonly(&outsider_key(
        b"musig2-bitcoin fixture: script-path internal key",
    ));
    let derived_at = |path: &[u32]| -> std::result::Result<bitcoin::XOnlyPublicKey, String> {
        let (derived, _) = xpub.derive_path(path).map_err(|e| e.to_string())?;
        Ok(to_btc_xonly(&derived.public_key().x_only_public_key().0))
    };

    let mut psbt_inputs = Vec::with_capacity(inputs);
    let mut txins = Vec::with_capacity(inputs);
    for i in 0..inputs {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let mut input = Input::default();
        let derived = derived_at(&[0, index])?;
        let script_pubkey = match i % 4 {
            0 => {
                input.tap_internal_key = Some(derived);
                input
                    .tap_key_origins
                    .insert(derived, (vec![], origin(&xpub, &[0, index])));
                receive.script_pubkey(index).map_err(err)?
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
                    .map_err(|e| e.to_string())?
                    .finalize(&secp, other)
                    .map_err(|_| "taproot tree".to_owned())?;
                let control_block = info
                    .control_block(&(script.clone(), LeafVersion::TapScript))
                    .ok_or("control block")?;
                let leaf = TapLeafHash::from_script(&script, LeafVersion::TapScript);
                input.tap_internal_key = Some(other);
                input.tap_merkle_root = info.merkle_root();
                input
                    .tap_scripts
                    .insert(control_block, (script, LeafVersion::TapScript));
                input
                    .tap_key_origins
                    .insert(derived, (vec![leaf], origin(&xpub, &[0, index])));
                ScriptBuf::new_p2tr_tweaked(info.output_key())
            }
        };
        input.sighash_type = sighash_type_of_input(i);
        input.witness_utxo = Some(TxOut {
            value: INPUT_VALUE,
            script_pubkey,
        });
        set_input_participants(&mut input, &set);
        psbt_inputs.push(input);
        let mut txid = [0u8; 32];
        txid[..4].copy_from_slice(&index.to_le_bytes());
        txins.push(TxIn {
            previous_output: OutPoint {
                txid: Txid::from_byte_array(txid),
                vout: index,
            },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        });
    }
    let payee = to_btc_xonly(&outsider_key(b"musig2-bitcoin fixture: payee"));
    let total = INPUT_VALUE * u64::try_from(inputs).unwrap_or(u64::MAX);
    let change_value = total
        .checked_sub(PAY + FEE)
        .ok_or("too few inputs to pay")?;
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: txins,
        output: vec![
            TxOut {
                value: PAY,
                script_pubkey: ScriptBuf::new_p2tr(&secp, payee, None),
            },
            TxOut {
                value: change_value,
                script_pubkey: change.script_pubkey(CHANGE_INDEX).map_err(err)?,
            },
        ],
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).map_err(|e| e.to_string())?;
    psbt.inputs = psbt_inputs;
    let change_key = derived_at(&[1, CHANGE_INDEX])?;
    psbt.outputs[1].tap_internal_key = Some(change_key);
    psbt.outputs[1]
        .tap_key_origins
        .insert(change_key, (vec![], origin(&xpub, &[1, CHANGE_INDEX])));
    set_output_participants(&mut psbt.outputs[1], &set);
    Ok(MultiInputPsbt {
        psbt,
        receive,
        change,
    })
}

/// Checks every planned input of an extracted transaction with `bitcoin`'s and `miniscript`'s
/// own code, not ours: the sighash recomputed from the transaction equals the entry's message,
/// the witness has the spend path's shape, the signature verifies (BIP340) under the output
/// key (key path) or under the leaf key with a valid Taproot commitment (script path), and
/// `miniscript`'s interpreter runs the witness against the spent script. The error says which
/// input failed and how.
pub fn verify_extracted(
    tx: &Transaction,
    prevouts: &[TxOut],
    entries: &[PlanEntry],
) -> std::result::Result<(), String> {
    let secp = Secp256k1::verification_only();
    let mut cache = SighashCache::new(tx);
    let all = Prevouts::All(prevouts);
    for entry in entries {
        let i = entry.input_index;
        let fail = |what: &str| format!("input {i}: {what}");
        let txin = tx.input.get(i).ok_or_else(|| fail("missing"))?;
        let witness = &txin.witness;
        let spk = &prevouts
            .get(i)
            .ok_or_else(|| fail("no prevout"))?
            .script_pubkey;
        if !spk.is_p2tr() {
            return Err(fail("not a Taproot output"));
        }
        let output_key = bitcoin::secp256k1::XOnlyPublicKey::from_slice(&spk.as_bytes()[2..34])
            .map_err(|e| fail(&e.to_string()))?;
        let first = witness.nth(0).ok_or_else(|| fail("empty witness"))?;
        let sig =
            bitcoin::taproot::Signature::from_slice(first).map_err(|e| fail(&e.to_string()))?;
        if sig.sighash_type != entry.sighash_type {
            return Err(fail("sighash type"));
        }
        let (hash, key) = match &entry.path {
            SpendPath::ScriptLeaf {
                script,
                control_block,
                ..
            } => {
                if witness.len() != 3 || witness.nth(1) != Some(script.as_bytes()) {
                    return Err(fail("script-path witness shape"));
                }
                let cb = bitcoin::taproot::ControlBlock::decode(witness.nth(2).unwrap_or(&[]))
                    .map_err(|e| fail(&e.to_string()))?;
                if &cb != control_block || !cb.verify_taproot_commitment(&secp, output_key, script)
                {
                    return Err(fail("control block"));
                }
                let leaf = TapLeafHash::from_script(script, cb.leaf_version);
                let hash = cache
                    .taproot_script_spend_signature_hash(i, &all, leaf, sig.sighash_type)
                    .map_err(|e| fail(&e.to_string()))?;
                let key = script
                    .as_bytes()
                    .get(1..33)
                    .and_then(|k| bitcoin::secp256k1::XOnlyPublicKey::from_slice(k).ok())
                    .ok_or_else(|| fail("leaf key"))?;
                (hash, key)
            }
            _ => {
                if witness.len() != 1 {
                    return Err(fail("key-path witness shape"));
                }
                let hash = cache
                    .taproot_key_spend_signature_hash(i, &all, sig.sighash_type)
                    .map_err(|e| fail(&e.to_string()))?;
                (hash, output_key)
            }
        };
        if hash.to_byte_array() != entry.message {
            return Err(fail("sighash differs from the planned message"));
        }
        let interpreter = miniscript::Interpreter::from_txdata(
            spk,
            &txin.script_sig,
            &txin.witness,
            txin.sequence,
            tx.lock_time,
        )
        .map_err(|e| fail(&e.to_string()))?;
        let satisfied = interpreter
            .iter(&secp, tx, i, &all)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| fail(&e.to_string()))?;
        if satisfied.is_empty() {
            return Err(fail("the interpreter satisfied nothing"));
        }
        let msg = Message::from_digest(hash.to_byte_array());
        secp.verify_schnorr(&sig.signature, &msg, &key)
            .map_err(|e| fail(&e.to_string()))?;
    }
    Ok(())
}

/// The spent outputs of `psbt`'s inputs, from their `witness_utxo`s.
pub fn prevouts(psbt: &Psbt) -> std::result::Result<Vec<TxOut>, String> {
    psbt.inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            input
                .witness_utxo
                .clone()
                .ok_or_else(|| format!("input {i}: no witness UTXO"))
        })
        .collect()
}
