//! KeySort, KeyAgg and tweaking (BIP327 "Key Generation and Aggregation").

use std::sync::Arc;

use secp256k1::{PublicKey, XOnlyPublicKey};
use sha2::Digest;

use crate::error::{Contribution, Culprit, Error, Result};
use crate::hash;
use crate::scalar::Scalar;

/// Sorts compressed public keys lexicographically (BIP327 KeySort).
pub fn key_sort(keys: &mut [PublicKey]) {
    keys.sort_by_cached_key(|k| k.serialize());
}

/// Sorts 33-byte encodings lexicographically without parsing them (BIP327 KeySort on bytes).
pub fn key_sort_bytes(keys: &mut [[u8; 33]]) {
    keys.sort_unstable();
}

/// Parses a 33-byte compressed public key contributed by signer `index`.
pub fn parse_pubkey(bytes: &[u8; 33], index: usize) -> Result<PublicKey> {
    PublicKey::from_byte_array_compressed(*bytes).map_err(|_| Error::InvalidContribution {
        culprit: Culprit::Signer(index),
        contribution: Contribution::PubKey,
    })
}

/// A tweak to apply to an aggregate key: a scalar below the group order, plain or x-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tweak {
    value: [u8; 32],
    x_only: bool,
}

impl Tweak {
    /// A tweak of the given kind; fails with [`Error::TweakOutOfRange`] if `value >= n`.
    pub fn new(value: [u8; 32], x_only: bool) -> Result<Tweak> {
        Scalar::from_bytes(value).ok_or(Error::TweakOutOfRange)?;
        Ok(Tweak { value, x_only })
    }

    /// A plain (BIP32-style) tweak: `Q' = Q + t·G`.
    pub fn plain(value: [u8; 32]) -> Result<Tweak> {
        Tweak::new(value, false)
    }

    /// The BIP341 Taproot tweak of `internal_key`: the x-only tweak
    /// `t = hash_TapTweak(internal_key || merkle_root)` (no script tree: `merkle_root = None`).
    /// Apply it last, to the key it was computed from
    /// ([`KeyAggContext::with_taproot_tweak`] does both).
    pub fn taproot(internal_key: &XOnlyPublicKey, merkle_root: Option<&[u8; 32]>) -> Result<Tweak> {
        let tag = sha2::Sha256::digest(b"TapTweak");
        let mut h = sha2::Sha256::new();
        h.update(tag);
        h.update(tag);
        h.update(internal_key.to_byte_array());
        if let Some(root) = merkle_root {
            h.update(root);
        }
        Tweak::x_only(h.finalize().into())
    }

    /// An x-only (Taproot-style) tweak: `Q' = with_even_y(Q) + t·G`.
    pub fn x_only(value: [u8; 32]) -> Result<Tweak> {
        Tweak::new(value, true)
    }

    /// The tweak value, 32 bytes big-endian.
    pub fn value(&self) -> [u8; 32] {
        self.value
    }

    /// Whether this is an x-only tweak.
    pub fn is_x_only(&self) -> bool {
        self.x_only
    }
}

/// Everything about a signer list that does not change with tweaks, computed once.
#[derive(Debug)]
struct SignerSet {
    keys: Vec<PublicKey>,
    key_bytes: Vec<[u8; 33]>,
    coefficients: Vec<Scalar>,
    /// `a_i·P_i`, reused by partial-signature verification. `None` only if `a_i = 0`.
    weighted: Vec<Option<PublicKey>>,
    untweaked: PublicKey,
}

/// A key-aggregation context: the signer list, its coefficients and the (tweaked) aggregate key.
///
/// Cloning is cheap: the per-signer data is shared.
#[derive(Debug, Clone)]
pub struct KeyAggContext {
    set: Arc<SignerSet>,
    q: PublicKey,
    gacc_negated: bool,
    tacc: Scalar,
}

impl KeyAggContext {
    /// BIP327 KeyAgg over parsed keys, in the order given (sort first with [`key_sort`] if the
    /// order should not matter).
    pub fn new(keys: &[PublicKey]) -> Result<KeyAggContext> {
        let first = keys.first().ok_or(Error::NoKeys)?;
        let key_bytes: Vec<[u8; 33]> = keys.iter().map(PublicKey::serialize).collect();
        let first_bytes = first.serialize();
        let second = key_bytes.iter().find(|k| **k != first_bytes).copied();

        let mut list_hash = hash::keyagg_list();
        for k in &key_bytes {
            list_hash.update(k);
        }
        let list_hash = hash::finish(list_hash);

        let mut coefficients = Vec::with_capacity(keys.len());
        let mut weighted = Vec::with_capacity(keys.len());
        for (key, bytes) in keys.iter().zip(&key_bytes) {
            let coefficient = if Some(*bytes) == second {
                Scalar::ONE
            } else {
                let mut h = hash::keyagg_coef();
                h.update(list_hash);
                h.update(bytes);
                Scalar::reduce(hash::finish(h))
            };
            let term = if coefficient == Scalar::ONE {
                Some(*key)
            } else {
                key.mul_tweak(&coefficient.tweak()).ok()
            };
            coefficients.push(coefficient);
            weighted.push(term);
        }
        let terms: Vec<&PublicKey> = weighted.iter().flatten().collect();
        let untweaked = PublicKey::combine_keys(&terms).map_err(|_| Error::AggregateKeyInfinity)?;
        Ok(KeyAggContext {
            set: Arc::new(SignerSet {
                keys: keys.to_vec(),
                key_bytes,
                coefficients,
                weighted,
                untweaked,
            }),
            q: untweaked,
            gacc_negated: false,
            tacc: Scalar::ZERO,
        })
    }

    /// BIP327 KeyAgg over 33-byte encodings; an invalid key is blamed on its index.
    pub fn from_bytes(keys: &[[u8; 33]]) -> Result<KeyAggContext> {
        let parsed = keys
            .iter()
            .enumerate()
            .map(|(i, k)| parse_pubkey(k, i))
            .collect::<Result<Vec<_>>>()?;
        KeyAggContext::new(&parsed)
    }

    /// BIP327 ApplyTweak: returns the context with `tweak` applied.
    pub fn with_tweak(mut self, tweak: &Tweak) -> Result<KeyAggContext> {
        let negate = tweak.x_only && !self.has_even_y();
        let t = Scalar::from_bytes(tweak.value).ok_or(Error::TweakOutOfRange)?;
        let base = if negate { self.q.negate() } else { self.q };
        self.q = base
            .add_exp_tweak(&t.tweak())
            .map_err(|_| Error::TweakResultInfinity)?;
        self.gacc_negated ^= negate;
        self.tacc = t.add(&self.tacc.negate_if(negate));
        Ok(self)
    }

    /// Applies several tweaks in order.
    pub fn with_tweaks<'a>(
        self,
        tweaks: impl IntoIterator<Item = &'a Tweak>,
    ) -> Result<KeyAggContext> {
        tweaks
            .into_iter()
            .try_fold(self, |ctx, t| ctx.with_tweak(t))
    }

    /// Applies the BIP341 Taproot tweak `hash_TapTweak(xbytes(Q) || merkle_root)` as an x-only
    /// tweak (key-path only when `merkle_root` is `None`).
    pub fn with_taproot_tweak(self, merkle_root: Option<&[u8; 32]>) -> Result<KeyAggContext> {
        let tweak = Tweak::taproot(&self.x_only_key(), merkle_root)?;
        self.with_tweak(&tweak)
    }

    /// The (tweaked) aggregate key as a full point (BIP327 GetPlainPubkey).
    pub fn aggregate_key(&self) -> PublicKey {
        self.q
    }

    /// The (tweaked) aggregate key as an x-only key (BIP327 GetXonlyPubkey): what the final
    /// signature verifies under.
    pub fn x_only_key(&self) -> XOnlyPublicKey {
        self.q.x_only_public_key().0
    }

    /// The aggregate key before any tweak.
    pub fn untweaked_key(&self) -> PublicKey {
        self.set.untweaked
    }

    /// The signers' keys, in key-aggregation order.
    pub fn pubkeys(&self) -> &[PublicKey] {
        &self.set.keys
    }

    /// The number of signers.
    pub fn len(&self) -> usize {
        self.set.keys.len()
    }

    /// Always false: a context has at least one key.
    pub fn is_empty(&self) -> bool {
        self.set.keys.is_empty()
    }

    /// The index of the first occurrence of `key` in the signer list.
    pub fn index_of(&self, key: &PublicKey) -> Option<usize> {
        let bytes = key.serialize();
        self.set.key_bytes.iter().position(|k| *k == bytes)
    }

    pub(crate) fn has_even_y(&self) -> bool {
        self.q.serialize()[0] == 0x02
    }

    pub(crate) fn x_only_bytes(&self) -> [u8; 32] {
        self.x_only_key().to_byte_array()
    }

    /// `g·gacc` of BIP327 is −1.
    pub(crate) fn signing_key_negated(&self) -> bool {
        !self.has_even_y() ^ self.gacc_negated
    }

    pub(crate) fn tacc(&self) -> &Scalar {
        &self.tacc
    }

    pub(crate) fn coefficient(&self, index: usize) -> &Scalar {
        &self.set.coefficients[index]
    }

    pub(crate) fn weighted_key(&self, index: usize) -> Option<&PublicKey> {
        self.set.weighted[index].as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// BIP341 wallet test vector `scriptPubKey` #0: key-path only (no script tree).
    #[test]
    fn taproot_tweak_matches_bip341() {
        let internal = XOnlyPublicKey::from_str(
            "d6889cb081036e0faefa3a35157ad71086b123b2b144b649798b494c300a961d",
        )
        .expect("key");
        let tweak = Tweak::taproot(&internal, None).expect("tweak");
        assert_eq!(
            hex_string(&tweak.value),
            "b86e7be8f39bab32a6f2c0443abbc210f0edac0e2c53d501b36b64437d9c6c70"
        );
        assert!(tweak.x_only);
        let (tweaked, _) = internal
            .add_tweak(&secp256k1::Scalar::from_be_bytes(tweak.value).expect("scalar"))
            .expect("tweaked");
        assert_eq!(
            tweaked.to_string(),
            "53a1f6e454df1aa2776a2814a721372d6258050de330b3c6d10ee8f4e0dda343"
        );
    }

    fn hex_string(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
