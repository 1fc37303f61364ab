//! The crate's one error type.

use std::fmt;

/// A BIP373 PSBT field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bip373Field {
    /// `PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS` (input `0x1a`).
    InputParticipantPubkeys,
    /// `PSBT_IN_MUSIG2_PUB_NONCE` (input `0x1b`).
    InputPubNonce,
    /// `PSBT_IN_MUSIG2_PARTIAL_SIG` (input `0x1c`).
    InputPartialSig,
    /// `PSBT_OUT_MUSIG2_PARTICIPANT_PUBKEYS` (output `0x08`).
    OutputParticipantPubkeys,
}

impl fmt::Display for Bip373Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bip373Field::InputParticipantPubkeys => "PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS",
            Bip373Field::InputPubNonce => "PSBT_IN_MUSIG2_PUB_NONCE",
            Bip373Field::InputPartialSig => "PSBT_IN_MUSIG2_PARTIAL_SIG",
            Bip373Field::OutputParticipantPubkeys => "PSBT_OUT_MUSIG2_PARTICIPANT_PUBKEYS",
        })
    }
}

/// Why a BIP373 field was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldFault {
    /// The key data has the wrong length (e.g. an x-only key where a compressed one belongs).
    KeyDataLength {
        /// Lengths BIP373 allows.
        expected: &'static [usize],
        /// Length found.
        got: usize,
    },
    /// The value has the wrong length.
    ValueLength {
        /// What BIP373 requires, in words.
        expected: &'static str,
        /// Length found.
        got: usize,
    },
    /// A 33-byte key in the key data is not a valid compressed point.
    InvalidKey,
    /// A participant key in the value is not a valid compressed point.
    InvalidParticipant {
        /// Position in the value.
        position: usize,
    },
    /// The public nonce is not two valid points.
    InvalidPubNonce,
    /// The partial signature is not a scalar below the group order.
    InvalidPartialSig,
}

impl fmt::Display for FieldFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldFault::KeyDataLength { expected, got } => {
                write!(f, "key data is {got} bytes, expected one of {expected:?}")
            }
            FieldFault::ValueLength { expected, got } => {
                write!(f, "value is {got} bytes, expected {expected}")
            }
            FieldFault::InvalidKey => {
                f.write_str("a key in the key data is not a compressed point")
            }
            FieldFault::InvalidParticipant { position } => {
                write!(f, "participant {position} is not a compressed point")
            }
            FieldFault::InvalidPubNonce => f.write_str("the public nonce is not two valid points"),
            FieldFault::InvalidPartialSig => {
                f.write_str("the partial signature is not below the group order")
            }
        }
    }
}

/// A BIP390 rule a descriptor broke.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Bip390Rule {
    /// `musig()` may appear only inside `tr()` or `rawtr()`.
    OnlyInTaproot {
        /// The top-level descriptor function it appeared in.
        context: String,
    },
    /// `musig()` inside `musig()`.
    Nested,
    /// `musig()` with no participants.
    NoParticipants,
    /// A participant is not a compressed public key, WIF, xpub or xprv expression.
    InvalidParticipant {
        /// Position of the participant.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Derivation after `musig()` needs every participant to be an extended key.
    DerivationNeedsXpubs,
    /// A derivation step after `musig()` is hardened.
    HardenedStep,
    /// The wildcard after `musig()` is hardened.
    HardenedWildcard,
    /// Participants are ranged while `musig()` is ranged too.
    RangedParticipantsInRangedMusig,
    /// Participants have child derivation (`/*`) while `musig()` has derivation steps.
    ParticipantChildDerivation,
    /// Participants are multipath while `musig()` is multipath too.
    MultipathParticipantsInMultipathMusig,
    /// Multipath expressions of different lengths.
    MultipathLengthMismatch,
    /// The derivation after `musig()` is not `/NUM`, `/<NUM;NUM...>` or a final `/*`.
    MalformedDerivation(String),
    /// Unbalanced parentheses or a stray character around `musig()`.
    Syntax(String),
}

impl fmt::Display for Bip390Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bip390Rule::OnlyInTaproot { context } => {
                write!(f, "musig() is only allowed in tr() and rawtr(), not in {context}()")
            }
            Bip390Rule::Nested => f.write_str("musig() cannot be nested"),
            Bip390Rule::NoParticipants => f.write_str("musig() needs at least one participant"),
            Bip390Rule::InvalidParticipant { index, reason } => {
                write!(f, "participant {index}: {reason}")
            }
            Bip390Rule::DerivationNeedsXpubs => {
                f.write_str("musig() with derivation requires all participants to be xpubs")
            }
            Bip390Rule::HardenedStep => f.write_str("musig() cannot have hardened derivation steps"),
            Bip390Rule::HardenedWildcard => {
                f.write_str("musig() cannot have hardened child derivation")
            }
            Bip390Rule::RangedParticipantsInRangedMusig => {
                f.write_str("cannot have ranged participants if musig() is also ranged")
            }
            Bip390Rule::ParticipantChildDerivation => f.write_str(
                "musig() cannot have participants with child derivation when musig() has derivation steps",
            ),
            Bip390Rule::MultipathParticipantsInMultipathMusig => {
                f.write_str("cannot have multipath participants if musig() is also multipath")
            }
            Bip390Rule::MultipathLengthMismatch => {
                f.write_str("multipath expressions have different lengths")
            }
            Bip390Rule::MalformedDerivation(s) => write!(f, "malformed musig() derivation {s:?}"),
            Bip390Rule::Syntax(s) => write!(f, "syntax: {s}"),
        }
    }
}

/// Where in a PSBT a fault was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// Input at this index.
    Input(usize),
    /// Output at this index.
    Output(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Input(i) => write!(f, "input {i}"),
            Location::Output(i) => write!(f, "output {i}"),
        }
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A BIP373 field is malformed.
    #[error("{location}: {field}: {fault}")]
    Bip373 {
        /// Where.
        location: Location,
        /// Which field.
        field: Bip373Field,
        /// Why it was refused.
        fault: FieldFault,
    },
    /// A descriptor breaks a BIP390 rule.
    #[error("BIP390: {0}")]
    Bip390(Bip390Rule),
    /// `miniscript` refused the descriptor (after `musig()` was rewritten).
    #[error("descriptor: {0}")]
    Descriptor(String),
    /// The descriptor is ranged or multipath and no index or branch was given, or too few.
    #[error("descriptor needs {0}")]
    DescriptorArgument(&'static str),
    /// The PSBT bytes do not parse.
    #[error("PSBT: {0}")]
    Psbt(#[from] bitcoin::psbt::Error),
    /// An input index is out of range.
    #[error("input {0} does not exist")]
    NoSuchInput(usize),
    /// An input lacks the UTXO it spends.
    #[error("input {0}: the spent output is unknown (no witness or non-witness UTXO)")]
    MissingUtxo(usize),
    /// The participant list of a `PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS` does not aggregate to its key.
    #[error("{location}: participants do not aggregate to the aggregate key in the key data")]
    AggregateMismatch {
        /// Where.
        location: Location,
    },
    /// The input's sighash type is not a Taproot sighash type.
    #[error("input {input}: sighash type {value:#x} is not valid for Taproot")]
    InvalidSighashType {
        /// The input.
        input: usize,
        /// The raw value.
        value: u32,
    },
    /// Computing a BIP341 sighash failed.
    #[error("input {input}: sighash: {reason}")]
    Sighash {
        /// The input.
        input: usize,
        /// Why.
        reason: String,
    },
    /// A final signature does not verify for its plan entry.
    #[error("input {0}: the signature does not verify under the key and sighash of the plan")]
    InvalidSignature(usize),
    /// An input cannot be finalized (no signature, or a script this crate does not satisfy).
    #[error("input {input}: cannot finalize: {reason}")]
    Finalize {
        /// The input.
        input: usize,
        /// Why.
        reason: &'static str,
    },
    /// Extracting the transaction failed.
    #[error("extract: {0}")]
    Extract(String),
    /// An error from the MuSig2 core (key aggregation, tweaks).
    #[error("musig2: {0}")]
    Musig(#[from] musig2_core::Error),
    /// An input lacks some participants' public nonces or partial signatures, so it cannot be
    /// aggregated yet; `participants` are the holdouts, in KeyAgg order.
    #[error(
        "input {input}: no {field} from participants {}",
        hex_keys(participants)
    )]
    MissingContributions {
        /// The input.
        input: usize,
        /// The field that is missing (`PSBT_IN_MUSIG2_PUB_NONCE` or
        /// `PSBT_IN_MUSIG2_PARTIAL_SIG`).
        field: Bip373Field,
        /// Who has not contributed it.
        participants: Vec<musig2_core::secp256k1::PublicKey>,
    },
    /// Partial signatures in the PSBT do not verify (BIP327 PartialSigVerify); `participants`
    /// are the culprits, in KeyAgg order.
    #[error(
        "input {input}: invalid partial signature from participants {}",
        hex_keys(participants)
    )]
    InvalidPartialSigs {
        /// The input.
        input: usize,
        /// Whose partial signatures failed.
        participants: Vec<musig2_core::secp256k1::PublicKey>,
    },
    /// Fee computation overflowed or outputs exceed inputs.
    #[error("the outputs spend more than the inputs")]
    NegativeFee,
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn hex_keys(keys: &[musig2_core::secp256k1::PublicKey]) -> String {
    keys.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
