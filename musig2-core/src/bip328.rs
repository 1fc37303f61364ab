//! BIP328: a synthetic extended public key for an aggregate key, and unhardened BIP32
//! derivation from it expressed as plain tweaks.

use hmac::{Hmac, Mac};
use ripemd::Ripemd160;
use secp256k1::PublicKey;
use sha2::{Digest, Sha256, Sha512};

use crate::error::{Error, Result};
use crate::keyagg::{KeyAggContext, Tweak};
use crate::scalar::Scalar;

/// The fixed chain code BIP328 assigns to every aggregate key
/// (`SHA256("MuSig2MuSig2MuSig2")`).
pub const BIP328_CHAIN_CODE: [u8; 32] = [
    0x86, 0x80, 0x87, 0xca, 0x02, 0xa6, 0xf9, 0x74, 0xc4, 0x59, 0x89, 0x24, 0xc3, 0x6b, 0x57, 0x76,
    0x2d, 0x32, 0xcb, 0x45, 0x71, 0x71, 0x67, 0xe3, 0x00, 0x62, 0x2c, 0x71, 0x67, 0xe3, 0x89, 0x65,
];

/// Mainnet `xpub` version bytes.
const XPUB_VERSION: [u8; 4] = [0x04, 0x88, 0xb2, 0x1e];

/// An extended public key rooted at an aggregate key (BIP328), or derived from one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregateXpub {
    key: PublicKey,
    chain_code: [u8; 32],
    depth: u8,
    parent_fingerprint: [u8; 4],
    child_number: u32,
}

impl AggregateXpub {
    /// The synthetic xpub of an aggregate key (use the untweaked key from KeyAgg).
    pub fn new(aggregate_key: PublicKey) -> AggregateXpub {
        AggregateXpub {
            key: aggregate_key,
            chain_code: BIP328_CHAIN_CODE,
            depth: 0,
            parent_fingerprint: [0; 4],
            child_number: 0,
        }
    }

    /// The synthetic xpub of a key-aggregation context's untweaked aggregate key.
    pub fn from_key_agg(ctx: &KeyAggContext) -> AggregateXpub {
        AggregateXpub::new(ctx.untweaked_key())
    }

    /// The public key at this node.
    pub fn public_key(&self) -> PublicKey {
        self.key
    }

    /// The chain code at this node.
    pub fn chain_code(&self) -> [u8; 32] {
        self.chain_code
    }

    /// Base58Check `xpub...` serialisation (BIP32, mainnet version).
    pub fn to_base58(&self) -> String {
        let mut data = Vec::with_capacity(78);
        data.extend_from_slice(&XPUB_VERSION);
        data.push(self.depth);
        data.extend_from_slice(&self.parent_fingerprint);
        data.extend_from_slice(&self.child_number.to_be_bytes());
        data.extend_from_slice(&self.chain_code);
        data.extend_from_slice(&self.key.serialize());
        bs58::encode(data).with_check().into_string()
    }

    /// BIP32 CKDpub for an unhardened `index`, returning the child and the plain tweak that
    /// moves this node's key to the child's key.
    pub fn derive_child(&self, index: u32) -> Result<(AggregateXpub, Tweak)> {
        if index >= 0x8000_0000 {
            return Err(Error::HardenedDerivation(index));
        }
        let mut mac = Hmac::<Sha512>::new_from_slice(&self.chain_code)
            .map_err(|_| Error::InvalidDerivation(index))?;
        mac.update(&self.key.serialize());
        mac.update(&index.to_be_bytes());
        let out = mac.finalize().into_bytes();
        let mut il = [0u8; 32];
        let mut ir = [0u8; 32];
        il.copy_from_slice(&out[..32]);
        ir.copy_from_slice(&out[32..]);
        let tweak_scalar = Scalar::from_bytes(il).ok_or(Error::InvalidDerivation(index))?;
        let key = self
            .key
            .add_exp_tweak(&tweak_scalar.tweak())
            .map_err(|_| Error::InvalidDerivation(index))?;
        let child = AggregateXpub {
            key,
            chain_code: ir,
            depth: self.depth.saturating_add(1),
            parent_fingerprint: self.fingerprint(),
            child_number: index,
        };
        Ok((child, Tweak::plain(il)?))
    }

    /// Derives along an unhardened path; returns the final node and the plain tweaks to apply
    /// (in order) to the key-aggregation context to sign for the derived key.
    pub fn derive_path(&self, path: &[u32]) -> Result<(AggregateXpub, Vec<Tweak>)> {
        let mut node = *self;
        let mut tweaks = Vec::with_capacity(path.len());
        for &index in path {
            let (child, tweak) = node.derive_child(index)?;
            node = child;
            tweaks.push(tweak);
        }
        Ok((node, tweaks))
    }

    /// BIP32 key fingerprint: the first four bytes of HASH160 of the compressed key.
    pub fn fingerprint(&self) -> [u8; 4] {
        let sha = Sha256::digest(self.key.serialize());
        let hash160 = Ripemd160::digest(sha);
        let mut fp = [0u8; 4];
        fp.copy_from_slice(&hash160[..4]);
        fp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_code_is_sha256_of_musig2_string() {
        let expected: [u8; 32] = Sha256::digest(b"MuSig2MuSig2MuSig2").into();
        assert_eq!(BIP328_CHAIN_CODE, expected);
    }

    #[test]
    fn hardened_index_is_refused() {
        let key = secp256k1::Keypair::new(&mut rand::rng()).public_key();
        let xpub = AggregateXpub::new(key);
        assert_eq!(
            xpub.derive_child(0x8000_0000).unwrap_err(),
            Error::HardenedDerivation(0x8000_0000)
        );
    }
}
