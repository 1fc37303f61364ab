//! Writing signatures and MuSig2 contributions into a PSBT, finalizing, extracting.

use bitcoin::hashes::Hash;
use bitcoin::opcodes::all::OP_CHECKSIG;
use bitcoin::psbt::Psbt;
use bitcoin::script::Instruction;
use bitcoin::taproot::{self, TapLeafHash};
use bitcoin::{Transaction, Witness};
use musig2_core::secp256k1::{PublicKey, schnorr};
use musig2_core::{AggNonce, PartialSignature, PubNonce, SessionContext};

use crate::bip373::{input_partial_sigs, input_pubnonces, set_partial_sig, set_pubnonce};
use crate::convert::{to_btc_signature, to_btc_xonly};
use crate::error::{Bip373Field, Error, Result};
use crate::plan::PlanEntry;

fn input_mut(psbt: &mut Psbt, index: usize) -> Result<&mut bitcoin::psbt::Input> {
    psbt.inputs.get_mut(index).ok_or(Error::NoSuchInput(index))
}

/// Writes our public nonce for `entry` (`PSBT_IN_MUSIG2_PUB_NONCE`), so a BIP373 wallet can
/// continue the session.
pub fn write_pubnonce(
    psbt: &mut Psbt,
    entry: &PlanEntry,
    participant: &PublicKey,
    nonce: &PubNonce,
) -> Result<()> {
    let key = entry.contribution_key(participant);
    set_pubnonce(input_mut(psbt, entry.input_index)?, &key, nonce);
    Ok(())
}

/// Writes our partial signature for `entry` (`PSBT_IN_MUSIG2_PARTIAL_SIG`).
pub fn write_partial_sig(
    psbt: &mut Psbt,
    entry: &PlanEntry,
    participant: &PublicKey,
    psig: &PartialSignature,
) -> Result<()> {
    let key = entry.contribution_key(participant);
    set_partial_sig(input_mut(psbt, entry.input_index)?, &key, psig);
    Ok(())
}

/// The public nonces the PSBT holds for `entry`, one slot per signer in KeyAgg order.
pub fn read_pubnonces(psbt: &Psbt, entry: &PlanEntry) -> Result<Vec<Option<PubNonce>>> {
    let input = psbt
        .inputs
        .get(entry.input_index)
        .ok_or(Error::NoSuchInput(entry.input_index))?;
    let found = input_pubnonces(input, entry.input_index)?;
    Ok(slots(entry, &found))
}

/// The partial signatures the PSBT holds for `entry`, one slot per signer in KeyAgg order.
pub fn read_partial_sigs(psbt: &Psbt, entry: &PlanEntry) -> Result<Vec<Option<PartialSignature>>> {
    let input = psbt
        .inputs
        .get(entry.input_index)
        .ok_or(Error::NoSuchInput(entry.input_index))?;
    let found = input_partial_sigs(input, entry.input_index)?;
    Ok(slots(entry, &found))
}

fn slots<T: Copy>(entry: &PlanEntry, found: &[(crate::ContributionKey, T)]) -> Vec<Option<T>> {
    entry
        .signers
        .iter()
        .map(|signer| {
            let want = entry.contribution_key(signer);
            found.iter().find(|(k, _)| *k == want).map(|(_, v)| *v)
        })
        .collect()
}

/// Every slot filled, or [`Error::MissingContributions`] naming the empty ones.
fn complete<T>(entry: &PlanEntry, slots: Vec<Option<T>>, field: Bip373Field) -> Result<Vec<T>> {
    let participants: Vec<PublicKey> = entry
        .signers
        .iter()
        .zip(&slots)
        .filter(|(_, slot)| slot.is_none())
        .map(|(signer, _)| *signer)
        .collect();
    if !participants.is_empty() {
        return Err(Error::MissingContributions {
            input: entry.input_index,
            field,
            participants,
        });
    }
    Ok(slots.into_iter().flatten().collect())
}

/// What a BIP373 finalizer does for one input: takes every participant's public nonce and
/// partial signature from the PSBT, aggregates the nonces, aggregates the partial signatures
/// and verifies the result under `entry` (its key and BIP341 message).
///
/// Missing contributions are [`Error::MissingContributions`] (naming the holdouts); partial
/// signatures that do not verify are [`Error::InvalidPartialSigs`] (naming the culprits). The
/// signature is returned, not written: [`add_signature`] does that.
pub fn aggregate_input(psbt: &Psbt, entry: &PlanEntry) -> Result<schnorr::Signature> {
    let nonces = complete(
        entry,
        read_pubnonces(psbt, entry)?,
        Bip373Field::InputPubNonce,
    )?;
    let psigs = complete(
        entry,
        read_partial_sigs(psbt, entry)?,
        Bip373Field::InputPartialSig,
    )?;
    let ctx = entry.key_agg()?;
    let session = SessionContext::new(&ctx, &AggNonce::aggregate(&nonces), &entry.message);
    session
        .aggregate_and_verify(&psigs, &nonces)
        .map_err(|e| match e {
            musig2_core::Error::InvalidPartialSignatures { signers } => Error::InvalidPartialSigs {
                input: entry.input_index,
                participants: signers
                    .iter()
                    .filter_map(|i| entry.signers.get(*i).copied())
                    .collect(),
            },
            other => Error::Musig(other),
        })
}

/// Checks `signature` against `entry` (its key and BIP341 message) and writes it as
/// `PSBT_IN_TAP_KEY_SIG` (key path) or `PSBT_IN_TAP_SCRIPT_SIG` (script path), with the
/// entry's sighash type.
pub fn add_signature(
    psbt: &mut Psbt,
    entry: &PlanEntry,
    signature: &schnorr::Signature,
) -> Result<()> {
    musig2_core::verify_signature(signature, &entry.message, &entry.verify_key)
        .map_err(|_| Error::InvalidSignature(entry.input_index))?;
    let sig = taproot::Signature {
        signature: to_btc_signature(signature),
        sighash_type: entry.sighash_type,
    };
    let input = input_mut(psbt, entry.input_index)?;
    match entry.leaf_hash {
        None => input.tap_key_sig = Some(sig),
        Some(leaf) => {
            input.tap_script_sigs.insert(
                (
                    to_btc_xonly(&entry.verify_key),
                    TapLeafHash::from_byte_array(leaf),
                ),
                sig,
            );
        }
    }
    Ok(())
}

/// The key of a `<32-byte key> OP_CHECKSIG` leaf (`pk(KEY)` in a `tr()` descriptor).
fn single_key_leaf(script: &bitcoin::Script) -> Option<bitcoin::secp256k1::XOnlyPublicKey> {
    let ins: Vec<_> = script
        .instructions()
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    match ins.as_slice() {
        [Instruction::PushBytes(k), Instruction::Op(op)] if *op == OP_CHECKSIG => {
            bitcoin::secp256k1::XOnlyPublicKey::from_slice(k.as_bytes()).ok()
        }
        _ => None,
    }
}

/// Finalizes input `index` from its Taproot signature: a key-path signature gives the witness
/// `[sig]`; a script-path signature on a `pk(KEY)` leaf gives `[sig, script, control block]`.
/// As BIP174's finalizer does, it then clears the signing data, but keeps the UTXO, unknown
/// and proprietary fields (so the BIP373 fields stay).
pub fn finalize_input(psbt: &mut Psbt, index: usize) -> Result<()> {
    let input = input_mut(psbt, index)?;
    let witness = if let Some(sig) = input.tap_key_sig {
        Witness::p2tr_key_spend(&sig)
    } else {
        let mut leaves: Vec<_> = input.tap_scripts.iter().collect();
        leaves.sort_by_key(|(cb, _)| cb.merkle_branch.len());
        leaves
            .into_iter()
            .find_map(|(cb, (script, version))| {
                let key = single_key_leaf(script)?;
                let sig = input
                    .tap_script_sigs
                    .get(&(key, TapLeafHash::from_script(script, *version)))?;
                let mut w = Witness::new();
                w.push(sig.to_vec());
                w.push(script.as_bytes());
                w.push(cb.serialize());
                Some(w)
            })
            .ok_or(Error::Finalize {
                input: index,
                reason: "no key-path signature and no signed pk(KEY) leaf",
            })?
    };
    input.final_script_witness = Some(witness);
    input.partial_sigs.clear();
    input.sighash_type = None;
    input.redeem_script = None;
    input.witness_script = None;
    input.bip32_derivation.clear();
    input.tap_key_sig = None;
    input.tap_script_sigs.clear();
    input.tap_scripts.clear();
    input.tap_key_origins.clear();
    input.tap_internal_key = None;
    input.tap_merkle_root = None;
    Ok(())
}

/// Finalizes every input of `entries` (see [`finalize_input`]).
pub fn finalize(psbt: &mut Psbt, entries: &[PlanEntry]) -> Result<()> {
    entries
        .iter()
        .try_for_each(|e| finalize_input(psbt, e.input_index))
}

/// Extracts the signed transaction; every input must be finalized. The fee-rate sanity limit
/// of `bitcoin` applies.
pub fn extract(psbt: Psbt) -> Result<Transaction> {
    if let Some(i) = psbt
        .inputs
        .iter()
        .position(|i| i.final_script_witness.is_none() && i.final_script_sig.is_none())
    {
        return Err(Error::Finalize {
            input: i,
            reason: "input is not finalized",
        });
    }
    psbt.extract_tx().map_err(|e| Error::Extract(e.to_string()))
}
