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

use bitcoin::psbt::Psbt;
use bitcoin::{Transaction, TxOut};
use musig2_bitcoin::{
    PlanEntry, add_signature, read_partial_sigs, read_pubnonces, write_partial_sig, write_pubnonce,
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

/// [`musig2_bitcoin::fixtures::verify_extracted`], panicking with its reason.
pub fn verify_extracted(tx: &Transaction, prevouts: &[TxOut], entries: &[PlanEntry]) {
    musig2_bitcoin::fixtures::verify_extracted(tx, prevouts, entries).unwrap();
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
