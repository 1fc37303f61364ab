//! The crate's error type, classified as BIP327 classifies failures.

use std::fmt;

/// Who supplied an invalid contribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Culprit {
    /// The signer at this index of the key list given to key aggregation.
    Signer(usize),
    /// The party that aggregated the nonces (BIP327's `signer: null`).
    Aggregator,
    /// A value parsed on its own, before it was known who sent it; attach the sender with
    /// [`Error::blame_signer`].
    Unattributed,
}

impl fmt::Display for Culprit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Culprit::Signer(i) => write!(f, "signer {i}"),
            Culprit::Aggregator => f.write_str("the nonce aggregator"),
            Culprit::Unattributed => f.write_str("an unattributed party"),
        }
    }
}

/// Which kind of contribution was invalid (BIP327's `contrib`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contribution {
    /// An individual public key.
    PubKey,
    /// A public nonce.
    PubNonce,
    /// An aggregate nonce.
    AggNonce,
    /// The aggregate of the other signers' nonces (DeterministicSign).
    AggOtherNonce,
    /// A partial signature.
    PartialSig,
}

impl fmt::Display for Contribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Contribution::PubKey => "pubkey",
            Contribution::PubNonce => "pubnonce",
            Contribution::AggNonce => "aggnonce",
            Contribution::AggOtherNonce => "aggothernonce",
            Contribution::PartialSig => "psig",
        })
    }
}

/// Everything that can go wrong in `musig2-core`.
///
/// [`Error::InvalidContribution`] and [`Error::InvalidPartialSignatures`] are faults of another
/// party and name it; [`Error::FinalNonceInfinity`] is a fault of other parties acting together
/// that names nobody; every other variant is what BIP327 calls a value error. No variant carries
/// secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A party supplied a value that is malformed or does not verify.
    #[error("invalid {contribution} from {culprit}")]
    InvalidContribution {
        /// Who supplied it.
        culprit: Culprit,
        /// What it was.
        contribution: Contribution,
    },
    /// The aggregate signature did not verify; these signers' partial signatures are invalid.
    #[error("invalid partial signatures from signers {signers:?}")]
    InvalidPartialSignatures {
        /// Indices (into the key list) of every signer whose partial signature failed.
        signers: Vec<usize>,
    },
    /// A tweak is not below the group order.
    #[error("the tweak must be less than n")]
    TweakOutOfRange,
    /// Applying a tweak produced the point at infinity.
    #[error("the result of tweaking cannot be infinity")]
    TweakResultInfinity,
    /// The aggregate public key is the point at infinity (only possible with crafted keys).
    #[error("the aggregate public key is the point at infinity")]
    AggregateKeyInfinity,
    /// Key aggregation was given no keys.
    #[error("key aggregation needs at least one public key")]
    NoKeys,
    /// The signer's public key is not in the session's key list.
    #[error("the signer's pubkey must be included in the list of pubkeys")]
    SignerKeyNotInList,
    /// A signer index is outside the key list.
    #[error("signer index {index} is out of range for {len} signers")]
    SignerIndexOutOfRange {
        /// The index given.
        index: usize,
        /// The number of signers.
        len: usize,
    },
    /// The number of items given does not match the number of signers.
    #[error("expected {expected} items, got {got}")]
    LengthMismatch {
        /// Expected count (the number of signers).
        expected: usize,
        /// Count supplied.
        got: usize,
    },
    /// The secret nonce was generated for a different public key than the one signing.
    #[error("the secret nonce was generated for a different public key")]
    SecNonceKeyMismatch,
    /// A secret nonce value is zero or out of range (e.g. erased after use).
    #[error("secret nonce value is out of range, which may indicate nonce reuse")]
    InvalidSecNonce,
    /// A secret key is zero or out of range.
    #[error("the secret key is out of range")]
    InvalidSecretKey,
    /// A derived nonce was zero (probability about 2^-128; generate again).
    #[error("nonce derivation produced zero")]
    ZeroNonce,
    /// The counter-based nonce variant needs the signer's secret key.
    #[error("counter-based nonce generation needs the secret key")]
    CounterNonceNeedsSecretKey,
    /// The final signature does not verify under the aggregate key.
    #[error("the signature does not verify")]
    InvalidSignature,
    /// Every partial signature verified and the aggregate nonce is the sum of the public nonces,
    /// yet the final nonce `R1 + b·R2` is the point at infinity, so BIP327 signs with `R = G`
    /// and no valid signature results.
    ///
    /// The public nonces cancel out (typically both halves of the aggregate nonce are
    /// infinity). Neither the aggregator (it summed correctly) nor any single signer can be
    /// blamed: producing valid partial signatures for such nonces needs the secret nonces of
    /// every signer whose nonce takes part in the cancellation, i.e. signers acting together.
    /// A lone signer who picks its nonce to cancel the others' cannot sign for it and is named
    /// by [`Error::InvalidPartialSignatures`] instead.
    #[error("the public nonces cancel out (final nonce at infinity); no single party is to blame")]
    FinalNonceInfinity,
    /// BIP328 derivation supports unhardened indices only.
    #[error("child index {0:#x} is hardened; aggregate keys support unhardened derivation only")]
    HardenedDerivation(u32),
    /// BIP32 derivation produced an invalid tweak or key (probability about 2^-127).
    #[error("BIP32 derivation produced an invalid key at index {0}")]
    InvalidDerivation(u32),
}

impl Error {
    /// True for the errors BIP327 classifies as value errors (not caused by another party).
    pub fn is_value_error(&self) -> bool {
        !matches!(
            self,
            Error::InvalidContribution { .. }
                | Error::InvalidPartialSignatures { .. }
                | Error::FinalNonceInfinity
        )
    }

    /// The signer indices this error blames (empty when nobody or the aggregator is at fault).
    pub fn culprits(&self) -> Vec<usize> {
        match self {
            Error::InvalidContribution {
                culprit: Culprit::Signer(i),
                ..
            } => vec![*i],
            Error::InvalidPartialSignatures { signers } => signers.clone(),
            _ => Vec::new(),
        }
    }

    /// Attributes an unattributed invalid contribution to signer `index`.
    pub fn blame_signer(self, index: usize) -> Error {
        match self {
            Error::InvalidContribution {
                culprit: Culprit::Unattributed,
                contribution,
            } => Error::InvalidContribution {
                culprit: Culprit::Signer(index),
                contribution,
            },
            other => other,
        }
    }

    pub(crate) fn unattributed(contribution: Contribution) -> Error {
        Error::InvalidContribution {
            culprit: Culprit::Unattributed,
            contribution,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
