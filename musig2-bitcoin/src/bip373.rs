//! BIP373 PSBT fields: participant public keys (input `0x1a`, output `0x08`), public nonces
//! (input `0x1b`) and partial signatures (input `0x1c`).
//!
//! `bitcoin`'s PSBT keeps key types it does not know in the `unknown` maps of each input and
//! output, byte for byte, and writes them back sorted by key; so these fields are read from and
//! written to those maps, and a PSBT round-trips unchanged.

use bitcoin::hashes::Hash;
use bitcoin::psbt::{Input, Output, Psbt, raw};
use bitcoin::taproot::TapLeafHash;
use musig2_core::secp256k1::PublicKey;
use musig2_core::{PartialSignature, PubNonce};

use crate::error::{Bip373Field, Error, FieldFault, Location, Result};

/// Input key type `PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS`.
pub const PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS: u8 = 0x1a;
/// Input key type `PSBT_IN_MUSIG2_PUB_NONCE`.
pub const PSBT_IN_MUSIG2_PUB_NONCE: u8 = 0x1b;
/// Input key type `PSBT_IN_MUSIG2_PARTIAL_SIG`.
pub const PSBT_IN_MUSIG2_PARTIAL_SIG: u8 = 0x1c;
/// Output key type `PSBT_OUT_MUSIG2_PARTICIPANT_PUBKEYS`.
pub const PSBT_OUT_MUSIG2_PARTICIPANT_PUBKEYS: u8 = 0x08;

/// The participants of one aggregate key, in KeyAgg order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantPubkeys {
    /// The aggregate key (untweaked, underived), compressed.
    pub aggregate: PublicKey,
    /// The participants, in the order they are aggregated.
    pub participants: Vec<PublicKey>,
}

/// The key data of a public nonce or partial signature: whose, for which key, for which leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContributionKey {
    /// The participant contributing.
    pub participant: PublicKey,
    /// The plain key being signed for: the (tweaked) output key on the key path, the key in the
    /// leaf script on the script path (derived, if it was derived from an aggregate).
    pub signing_key: PublicKey,
    /// The leaf hash on the script path; `None` on the key path.
    pub leaf_hash: Option<TapLeafHash>,
}

impl ContributionKey {
    fn key_data(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(98);
        v.extend_from_slice(&self.participant.serialize());
        v.extend_from_slice(&self.signing_key.serialize());
        if let Some(h) = self.leaf_hash {
            v.extend_from_slice(h.as_byte_array());
        }
        v
    }

    fn parse(data: &[u8], location: Location, field: Bip373Field) -> Result<ContributionKey> {
        let fault = |fault| Error::Bip373 {
            location,
            field,
            fault,
        };
        if data.len() != 66 && data.len() != 98 {
            return Err(fault(FieldFault::KeyDataLength {
                expected: &[66, 98],
                got: data.len(),
            }));
        }
        let participant = parse_key(&data[..33]).ok_or_else(|| fault(FieldFault::InvalidKey))?;
        let signing_key = parse_key(&data[33..66]).ok_or_else(|| fault(FieldFault::InvalidKey))?;
        let leaf_hash =
            (data.len() == 98).then(|| TapLeafHash::from_slice(&data[66..]).expect("32 bytes"));
        Ok(ContributionKey {
            participant,
            signing_key,
            leaf_hash,
        })
    }
}

fn parse_key(bytes: &[u8]) -> Option<PublicKey> {
    let arr: [u8; 33] = bytes.try_into().ok()?;
    PublicKey::from_byte_array_compressed(arr).ok()
}

fn parse_participants(
    key: &raw::Key,
    value: &[u8],
    location: Location,
    field: Bip373Field,
) -> Result<ParticipantPubkeys> {
    let fault = |fault| Error::Bip373 {
        location,
        field,
        fault,
    };
    if key.key.len() != 33 {
        return Err(fault(FieldFault::KeyDataLength {
            expected: &[33],
            got: key.key.len(),
        }));
    }
    let aggregate = parse_key(&key.key).ok_or_else(|| fault(FieldFault::InvalidKey))?;
    if value.is_empty() || value.len() % 33 != 0 {
        return Err(fault(FieldFault::ValueLength {
            expected: "a non-empty multiple of 33",
            got: value.len(),
        }));
    }
    let participants = value
        .chunks(33)
        .enumerate()
        .map(|(position, k)| {
            parse_key(k).ok_or_else(|| fault(FieldFault::InvalidParticipant { position }))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ParticipantPubkeys {
        aggregate,
        participants,
    })
}

fn participants_value(p: &ParticipantPubkeys) -> Vec<u8> {
    p.participants.iter().flat_map(|k| k.serialize()).collect()
}

fn of_type(
    unknown: &std::collections::BTreeMap<raw::Key, Vec<u8>>,
    type_value: u8,
) -> impl Iterator<Item = (&raw::Key, &Vec<u8>)> {
    unknown
        .iter()
        .filter(move |(k, _)| k.type_value == type_value)
}

/// Every `PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS` of input `index`.
pub fn input_participants(input: &Input, index: usize) -> Result<Vec<ParticipantPubkeys>> {
    of_type(&input.unknown, PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS)
        .map(|(k, v)| {
            parse_participants(
                k,
                v,
                Location::Input(index),
                Bip373Field::InputParticipantPubkeys,
            )
        })
        .collect()
}

/// Every `PSBT_OUT_MUSIG2_PARTICIPANT_PUBKEYS` of output `index`.
pub fn output_participants(output: &Output, index: usize) -> Result<Vec<ParticipantPubkeys>> {
    of_type(&output.unknown, PSBT_OUT_MUSIG2_PARTICIPANT_PUBKEYS)
        .map(|(k, v)| {
            parse_participants(
                k,
                v,
                Location::Output(index),
                Bip373Field::OutputParticipantPubkeys,
            )
        })
        .collect()
}

/// Decodes every entry of one contribution type (nonce or partial signature) of an input.
fn contributions<T, const N: usize>(
    input: &Input,
    index: usize,
    field: Bip373Field,
    type_value: u8,
    decode: impl Fn(&[u8; N]) -> Option<T>,
    invalid: FieldFault,
) -> Result<Vec<(ContributionKey, T)>> {
    let location = Location::Input(index);
    let fault = |fault| Error::Bip373 {
        location,
        field,
        fault,
    };
    of_type(&input.unknown, type_value)
        .map(|(k, v)| {
            let key = ContributionKey::parse(&k.key, location, field)?;
            let bytes: &[u8; N] = v.as_slice().try_into().map_err(|_| {
                fault(FieldFault::ValueLength {
                    expected: if N == 66 { "66" } else { "32" },
                    got: v.len(),
                })
            })?;
            let value = decode(bytes).ok_or_else(|| fault(invalid.clone()))?;
            Ok((key, value))
        })
        .collect()
}

/// Every `PSBT_IN_MUSIG2_PUB_NONCE` of input `index`.
pub fn input_pubnonces(input: &Input, index: usize) -> Result<Vec<(ContributionKey, PubNonce)>> {
    contributions(
        input,
        index,
        Bip373Field::InputPubNonce,
        PSBT_IN_MUSIG2_PUB_NONCE,
        |b: &[u8; 66]| PubNonce::from_bytes(b).ok(),
        FieldFault::InvalidPubNonce,
    )
}

/// Every `PSBT_IN_MUSIG2_PARTIAL_SIG` of input `index`.
pub fn input_partial_sigs(
    input: &Input,
    index: usize,
) -> Result<Vec<(ContributionKey, PartialSignature)>> {
    contributions(
        input,
        index,
        Bip373Field::InputPartialSig,
        PSBT_IN_MUSIG2_PARTIAL_SIG,
        |b: &[u8; 32]| PartialSignature::from_bytes(b).ok(),
        FieldFault::InvalidPartialSig,
    )
}

/// Checks every BIP373 field of every input and output.
pub fn validate(psbt: &Psbt) -> Result<()> {
    for (i, input) in psbt.inputs.iter().enumerate() {
        input_participants(input, i)?;
        input_pubnonces(input, i)?;
        input_partial_sigs(input, i)?;
    }
    for (i, output) in psbt.outputs.iter().enumerate() {
        output_participants(output, i)?;
    }
    Ok(())
}

/// Parses PSBT bytes and checks every BIP373 field.
pub fn parse_psbt(bytes: &[u8]) -> Result<Psbt> {
    let psbt = Psbt::deserialize(bytes)?;
    validate(&psbt)?;
    Ok(psbt)
}

fn raw_key(type_value: u8, key: Vec<u8>) -> raw::Key {
    raw::Key { type_value, key }
}

/// Writes (or replaces) a `PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS`.
pub fn set_input_participants(input: &mut Input, p: &ParticipantPubkeys) {
    input.unknown.insert(
        raw_key(
            PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS,
            p.aggregate.serialize().to_vec(),
        ),
        participants_value(p),
    );
}

/// Writes (or replaces) a `PSBT_OUT_MUSIG2_PARTICIPANT_PUBKEYS`.
pub fn set_output_participants(output: &mut Output, p: &ParticipantPubkeys) {
    output.unknown.insert(
        raw_key(
            PSBT_OUT_MUSIG2_PARTICIPANT_PUBKEYS,
            p.aggregate.serialize().to_vec(),
        ),
        participants_value(p),
    );
}

/// Writes (or replaces) a `PSBT_IN_MUSIG2_PUB_NONCE`.
pub fn set_pubnonce(input: &mut Input, key: &ContributionKey, nonce: &PubNonce) {
    input.unknown.insert(
        raw_key(PSBT_IN_MUSIG2_PUB_NONCE, key.key_data()),
        nonce.to_bytes().to_vec(),
    );
}

/// Writes (or replaces) a `PSBT_IN_MUSIG2_PARTIAL_SIG`.
pub fn set_partial_sig(input: &mut Input, key: &ContributionKey, psig: &PartialSignature) {
    input.unknown.insert(
        raw_key(PSBT_IN_MUSIG2_PARTIAL_SIG, key.key_data()),
        psig.to_bytes().to_vec(),
    );
}
