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
