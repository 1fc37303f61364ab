//! Crossing between our `secp256k1` (0.33, through `musig2_core`) and the one `bitcoin` and
//! `miniscript` are built on (0.29). The two are different crates with different types; every
//! key and signature crosses as its canonical bytes, which both parse and check.

use bitcoin::secp256k1 as btc;
use musig2_core::secp256k1::{PublicKey, XOnlyPublicKey, schnorr};

/// Our compressed key as `bitcoin`'s.
pub fn to_btc_pubkey(key: &PublicKey) -> btc::PublicKey {
    btc::PublicKey::from_slice(&key.serialize()).expect("a valid key stays valid across versions")
}

/// `bitcoin`'s compressed key as ours.
pub fn from_btc_pubkey(key: &btc::PublicKey) -> PublicKey {
    PublicKey::from_byte_array_compressed(key.serialize())
        .expect("a valid key stays valid across versions")
}

/// Our x-only key as `bitcoin`'s.
pub fn to_btc_xonly(key: &XOnlyPublicKey) -> btc::XOnlyPublicKey {
    btc::XOnlyPublicKey::from_slice(&key.to_byte_array())
        .expect("a valid key stays valid across versions")
}

/// `bitcoin`'s x-only key as ours.
pub fn from_btc_xonly(key: &btc::XOnlyPublicKey) -> XOnlyPublicKey {
    XOnlyPublicKey::from_byte_array(key.serialize())
        .expect("a valid key stays valid across versions")
}

/// Our BIP340 signature as `bitcoin`'s.
pub fn to_btc_signature(sig: &schnorr::Signature) -> btc::schnorr::Signature {
    btc::schnorr::Signature::from_slice(&sig.to_byte_array()).expect("64 bytes")
}
