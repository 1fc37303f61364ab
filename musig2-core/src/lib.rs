//! # musig2-core
//!
//! [BIP327] MuSig2 on `libsecp256k1` (through the `secp256k1` crate): KeySort, KeyAgg, plain and
//! x-only tweaks, NonceGen (every optional input, plus a counter variant), NonceAgg, Sign,
//! DeterministicSign, PartialSigVerify and PartialSigAgg, BIP340 verification of the result, and
//! [BIP328] synthetic xpubs. No I/O, no async, no clock.
//!
//! Errors follow BIP327's classification: a fault of another party is an
//! [`Error::InvalidContribution`] naming the signer index (or the aggregator) and the kind of
//! contribution; everything else is a value error. The functions over encodings
//! ([`AggNonce::aggregate_bytes`], [`SessionContext::verify_partial_bytes`],
//! [`SessionContext::aggregate_bytes`]) attach the culprit themselves, in BIP327's order.
//!
//! ```
//! use musig2_core::{AggNonce, KeyAggContext, NonceGen, SessionContext, key_sort};
//! use secp256k1::Keypair;
//!
//! # fn main() -> Result<(), musig2_core::Error> {
//! let mut rng = rand::rng();
//! let keypairs: Vec<Keypair> = (0..3).map(|_| Keypair::new(&mut rng)).collect();
//! let mut pubkeys: Vec<_> = keypairs.iter().map(|k| k.public_key()).collect();
//! key_sort(&mut pubkeys);
//! let key_agg = KeyAggContext::new(&pubkeys)?.with_taproot_tweak(None)?;
//! let msg = b"a message of any length";
//!
//! // Round 1: every signer makes a nonce and publishes the public half.
//! let mut secnonces = Vec::new();
//! let mut pubnonces = vec![None; pubkeys.len()];
//! for kp in &keypairs {
//!     let sk = kp.secret_key();
//!     let (sec, public) = NonceGen::new(kp.public_key())
//!         .secret_key(&sk)
//!         .key_agg(&key_agg)
//!         .message(msg)
//!         .generate(&mut rng)?;
//!     secnonces.push(sec);
//!     pubnonces[key_agg.index_of(&kp.public_key()).unwrap()] = Some(public);
//! }
//! let pubnonces: Vec<_> = pubnonces.into_iter().flatten().collect();
//! let session = SessionContext::new(&key_agg, &AggNonce::aggregate(&pubnonces), msg);
//!
//! // Round 2: every signer signs, consuming its secret nonce.
//! let mut psigs = vec![None; pubkeys.len()];
//! for (kp, sec) in keypairs.iter().zip(secnonces) {
//!     psigs[key_agg.index_of(&kp.public_key()).unwrap()] = Some(session.sign(sec, kp)?);
//! }
//! let psigs: Vec<_> = psigs.into_iter().flatten().collect();
//!
//! // Aggregation: one verification on the happy path, blame on failure.
//! let signature = session.aggregate_and_verify(&psigs, &pubnonces)?;
//! musig2_core::verify_signature(&signature, msg, &key_agg.x_only_key())?;
//! # Ok(())
//! # }
//! ```
//!
//! [BIP327]: https://github.com/bitcoin/bips/blob/master/bip-0327.mediawiki
//! [BIP328]: https://github.com/bitcoin/bips/blob/master/bip-0328.mediawiki

mod bip328;
mod blinded;
mod error;
mod hash;
mod keyagg;
mod nonce;
mod pointsum;
mod scalar;
mod session;

pub use bip328::{AggregateXpub, BIP328_CHAIN_CODE};
pub use blinded::bip340_sign;
pub use error::{Contribution, Culprit, Error, Result};
pub use keyagg::{KeyAggContext, Tweak, key_sort, key_sort_bytes, parse_pubkey};
pub use nonce::{AggNonce, NonceGen, PubNonce, SecNonce};
pub use session::{PartialSignature, SessionContext, deterministic_sign, verify_signature};

/// Re-export of the `secp256k1` crate this library is built on, so callers use the same types.
pub use secp256k1;
