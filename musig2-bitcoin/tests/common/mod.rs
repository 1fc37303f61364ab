//! The BIP373 vector file as typed structs, shared by the tests that use it.

#![allow(dead_code)]

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bip373Vectors {
    pub source: String,
    pub aggregate_pubkey: String,
    pub participants: Vec<Participant>,
    pub psbts: Vec<PsbtCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Participant {
    pub pubkey: String,
    pub wif_mainnet: String,
    pub wif_testnet: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsbtCase {
    pub case: String,
    pub variant: Option<String>,
    pub valid: bool,
    pub psbt_hex: String,
}

impl PsbtCase {
    pub fn bytes(&self) -> Vec<u8> {
        hex::decode(&self.psbt_hex).unwrap()
    }

    pub fn name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{} / {v}", self.case),
            None => self.case.clone(),
        }
    }
}

pub fn bip373() -> Bip373Vectors {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/bip373/bip373-vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

use bitcoin::hashes::Hash;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{Message, Secp256k1};
use bitcoin::sighash::{Prevouts, SighashCache};
use bitcoin::{Transaction, TxOut};
use musig2_bitcoin::{
    PlanEntry, SpendPath, add_signature, read_partial_sigs, read_pubnonces, write_partial_sig,
    write_pubnonce,
};
use musig2_core::secp256k1::Keypair;
use musig2_core::{AggNonce, NonceGen, PartialSignature, PubNonce, SessionContext};

/// A participant's keypair from a WIF string.
pub fn keypair_from_wif(wif: &str) -> Keypair {
    let sk = bitcoin::PrivateKey::from_wif(wif).unwrap();
    Keypair::from_secret_bytes(sk.inner.secret_bytes()).unwrap()
}

/// Runs the whole MuSig2 protocol for every entry of a plan, through the PSBT as BIP373 says:
/// every signer writes its nonce, then reads all of them, signs, writes its partial signature;
/// then anyone aggregates and writes the final signature.
pub fn sign_through_psbt(psbt: &mut Psbt, entries: &[PlanEntry], signers: &[Keypair]) {
    let mut rng = rand::rng();
    for entry in entries {
        let ctx = entry.key_agg().unwrap();
        let mut secnonces = Vec::new();
        for kp in signers
            .iter()
            .filter(|kp| entry.signers.contains(&kp.public_key()))
        {
            let sk = kp.secret_key();
            let (sec, public) = NonceGen::new(kp.public_key())
                .secret_key(&sk)
                .key_agg(&ctx)
                .message(&entry.message)
                .generate(&mut rng)
                .unwrap();
            write_pubnonce(psbt, entry, &kp.public_key(), &public).unwrap();
            secnonces.push((kp, sec));
        }
        let pubnonces: Vec<PubNonce> = read_pubnonces(psbt, entry)
            .unwrap()
            .into_iter()
            .map(Option::unwrap)
            .collect();
        let session = SessionContext::new(&ctx, &AggNonce::aggregate(&pubnonces), &entry.message);
        for (kp, sec) in secnonces {
            let psig = session.sign(sec, kp).unwrap();
            write_partial_sig(psbt, entry, &kp.public_key(), &psig).unwrap();
        }
        let psigs: Vec<PartialSignature> = read_partial_sigs(psbt, entry)
            .unwrap()
            .into_iter()
            .map(Option::unwrap)
            .collect();
        let signature = session.aggregate_and_verify(&psigs, &pubnonces).unwrap();
        add_signature(psbt, entry, &signature).unwrap();
    }
}

/// Checks every planned input of an extracted transaction with `bitcoin`'s own code: the
/// sighash recomputed from the transaction, the witness shape, BIP340 verification under the
/// output key (key path) or the leaf key with a valid Taproot commitment (script path), and
/// `miniscript`'s interpreter executing the witness.
pub fn verify_extracted(tx: &Transaction, prevouts: &[TxOut], entries: &[PlanEntry]) {
    let secp = Secp256k1::verification_only();
    let mut cache = SighashCache::new(tx);
    for entry in entries {
        let i = entry.input_index;
        let witness = &tx.input[i].witness;
        let spk = &prevouts[i].script_pubkey;
        let output_key =
            bitcoin::secp256k1::XOnlyPublicKey::from_slice(&spk.as_bytes()[2..34]).unwrap();
        let sig = bitcoin::taproot::Signature::from_slice(&witness[0]).unwrap();
        assert_eq!(sig.sighash_type, entry.sighash_type, "input {i}");
        let (hash, key) = match &entry.path {
            SpendPath::ScriptLeaf {
                script,
                control_block,
                ..
            } => {
                assert_eq!(witness.len(), 3, "input {i}");
                assert_eq!(&witness[1], script.as_bytes(), "input {i}");
                let cb = bitcoin::taproot::ControlBlock::decode(&witness[2]).unwrap();
                assert_eq!(&cb, control_block);
                assert!(
                    cb.verify_taproot_commitment(&secp, output_key, script),
                    "input {i}"
                );
                let leaf = bitcoin::taproot::TapLeafHash::from_script(script, cb.leaf_version);
                let hash = cache
                    .taproot_script_spend_signature_hash(
                        i,
                        &Prevouts::All(prevouts),
                        leaf,
                        sig.sighash_type,
                    )
                    .unwrap();
                let key = bitcoin::secp256k1::XOnlyPublicKey::from_slice(&script.as_bytes()[1..33])
                    .unwrap();
                (hash, key)
            }
            _ => {
                assert_eq!(witness.len(), 1, "input {i}");
                let hash = cache
                    .taproot_key_spend_signature_hash(i, &Prevouts::All(prevouts), sig.sighash_type)
                    .unwrap();
                (hash, output_key)
            }
        };
        assert_eq!(hash.to_byte_array(), entry.message, "input {i}: sighash");
        // Independently, miniscript's interpreter runs the witness against the spent script
        // and checks every signature with its own sighash computation.
        let txin = &tx.input[i];
        let interpreter = miniscript::Interpreter::from_txdata(
            spk,
            &txin.script_sig,
            &txin.witness,
            txin.sequence,
            tx.lock_time,
        )
        .unwrap_or_else(|e| panic!("input {i}: {e}"));
        let satisfied: Vec<_> = interpreter
            .iter(&secp, tx, i, &Prevouts::All(prevouts))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("input {i}: {e}"));
        assert!(!satisfied.is_empty(), "input {i}: nothing satisfied");
        let msg = Message::from_digest(hash.to_byte_array());
        secp.verify_schnorr(&sig.signature, &msg, &key)
            .unwrap_or_else(|e| panic!("input {i}: {e}"));
    }
}

/// Finalizes the planned inputs, extracts the transaction and verifies it
/// ([`verify_extracted`]); returns the finalized PSBT too.
pub fn finalize_extract_verify(mut psbt: Psbt, entries: &[PlanEntry]) -> (Psbt, Transaction) {
    let prevouts: Vec<TxOut> = psbt
        .inputs
        .iter()
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    musig2_bitcoin::finalize(&mut psbt, entries).unwrap();
    let tx = musig2_bitcoin::extract(psbt.clone()).unwrap();
    verify_extracted(&tx, &prevouts, entries);
    (psbt, tx)
}
