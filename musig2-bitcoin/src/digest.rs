//! A digest that names "this PSBT" while its signers add their contributions.

use bitcoin::hashes::{Hash, sha256};
use bitcoin::psbt::Psbt;

use crate::bip373::{PSBT_IN_MUSIG2_PARTIAL_SIG, PSBT_IN_MUSIG2_PUB_NONCE};

/// SHA256 of the PSBT's BIP174 serialization after removing, from every input, what signers
/// add while signing:
///
/// * BIP373 `PSBT_IN_MUSIG2_PUB_NONCE` (`0x1b`) and `PSBT_IN_MUSIG2_PARTIAL_SIG` (`0x1c`);
/// * `PSBT_IN_PARTIAL_SIG`, `PSBT_IN_TAP_KEY_SIG` and `PSBT_IN_TAP_SCRIPT_SIG`;
/// * `PSBT_IN_FINAL_SCRIPTSIG` and `PSBT_IN_FINAL_SCRIPTWITNESS`.
///
/// Everything else is covered, byte for byte as serialized: the unsigned transaction, the
/// global fields, and every input and output field (UTXOs, sighash types, Taproot keys,
/// scripts and derivations, BIP373 participant keys, unknown and proprietary fields). So
/// signers who compare this digest know they approve the same transaction with the same
/// spending data, and it stays the same as nonces and (partial) signatures come in. A
/// finalized PSBT has lost its signing data (BIP174's finalizer clears it), so its digest
/// differs; compare before finalizing.
pub fn psbt_digest(psbt: &Psbt) -> [u8; 32] {
    let mut stripped = psbt.clone();
    for input in &mut stripped.inputs {
        input.unknown.retain(|key, _| {
            key.type_value != PSBT_IN_MUSIG2_PUB_NONCE
                && key.type_value != PSBT_IN_MUSIG2_PARTIAL_SIG
        });
        input.partial_sigs.clear();
        input.tap_key_sig = None;
        input.tap_script_sigs.clear();
        input.final_script_sig = None;
        input.final_script_witness = None;
    }
    sha256::Hash::hash(&stripped.serialize()).to_byte_array()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::absolute::LockTime;
    use bitcoin::psbt::raw;
    use bitcoin::transaction::Version;
    use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut};

    fn psbt() -> Psbt {
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                sequence: Sequence::MAX,
                ..Default::default()
            }],
            output: vec![TxOut {
                value: Amount::from_sat(1_000),
                script_pubkey: ScriptBuf::new_op_return([1, 2, 3]),
            }],
        };
        Psbt::from_unsigned_tx(tx).expect("unsigned")
    }

    fn field(type_value: u8, key: u8) -> raw::Key {
        raw::Key {
            type_value,
            key: vec![key; 66],
        }
    }

    #[test]
    fn contributions_do_not_change_the_digest_but_the_transaction_does() {
        let base = psbt();
        let digest = psbt_digest(&base);

        let mut signed = base.clone();
        let input = &mut signed.inputs[0];
        input
            .unknown
            .insert(field(PSBT_IN_MUSIG2_PUB_NONCE, 2), vec![7; 66]);
        input
            .unknown
            .insert(field(PSBT_IN_MUSIG2_PARTIAL_SIG, 3), vec![8; 32]);
        input.final_script_witness = Some(bitcoin::Witness::from_slice(&[[9u8; 64]]));
        assert_ne!(signed.serialize(), base.serialize());
        assert_eq!(psbt_digest(&signed), digest);

        // Any other unknown field is covered.
        let mut other = base.clone();
        other.inputs[0].unknown.insert(field(0x1a, 2), vec![7; 33]);
        assert_ne!(psbt_digest(&other), digest);

        let mut more = base.clone();
        more.unsigned_tx.output[0].value = Amount::from_sat(1_001);
        assert_ne!(psbt_digest(&more), digest);
    }
}
