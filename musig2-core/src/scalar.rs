//! Scalars modulo the group order `n`, zero included.
//!
//! `secp256k1` only offers scalar arithmetic through secret-key tweaks, which are constant time
//! but refuse zero. This wrapper adds zero so that BIP327's formulas can be written as they are
//! specified; the only branches are on "is this value zero", which for secret values happens with
//! negligible probability.

use secp256k1::{Scalar as TweakScalar, SecretKey};
use zeroize::Zeroize;

/// An integer modulo the secp256k1 group order, big-endian, always reduced.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Scalar([u8; 32]);

impl Scalar {
    pub(crate) const ZERO: Scalar = Scalar([0u8; 32]);
    pub(crate) const ONE: Scalar = {
        let mut bytes = [0u8; 32];
        bytes[31] = 1;
        Scalar(bytes)
    };

    /// Parses 32 big-endian bytes, refusing values `>= n`.
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Option<Scalar> {
        TweakScalar::from_be_bytes(bytes)
            .ok()
            .map(|_| Scalar(bytes))
    }

    /// Interprets a hash output as an integer modulo `n` (reduction, as BIP327's `int(..) mod n`).
    pub(crate) fn reduce(bytes: [u8; 32]) -> Scalar {
        match Scalar::from_bytes(bytes) {
            Some(s) => s,
            // A 256-bit value is below 2n, so one subtraction of n (= adding 2^256 - n) suffices.
            None => Scalar(sub_order(bytes)),
        }
    }

    pub(crate) fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    pub(crate) fn is_zero(&self) -> bool {
        // Non-short-circuiting fold: the check itself does not leak which byte differs.
        self.0.iter().fold(0u8, |acc, b| acc | b) == 0
    }

    fn as_secret(&self) -> Option<SecretKey> {
        SecretKey::from_secret_bytes(self.0).ok()
    }

    fn as_tweak(&self) -> TweakScalar {
        TweakScalar::from_be_bytes(self.0).unwrap_or(TweakScalar::ZERO)
    }

    /// The value as a tweak for `secp256k1` point operations.
    pub(crate) fn tweak(&self) -> TweakScalar {
        self.as_tweak()
    }

    pub(crate) fn add(&self, other: &Scalar) -> Scalar {
        match self.as_secret() {
            None => other.clone(),
            Some(sk) => sk
                .add_tweak(&other.as_tweak())
                .map(|k| Scalar(k.to_secret_bytes()))
                .unwrap_or(Scalar::ZERO),
        }
    }

    pub(crate) fn mul(&self, other: &Scalar) -> Scalar {
        match self.as_secret() {
            None => Scalar::ZERO,
            Some(sk) if !other.is_zero() => sk
                .mul_tweak(&other.as_tweak())
                .map(|k| Scalar(k.to_secret_bytes()))
                .unwrap_or(Scalar::ZERO),
            Some(_) => Scalar::ZERO,
        }
    }

    pub(crate) fn negate(&self) -> Scalar {
        match self.as_secret() {
            None => Scalar::ZERO,
            Some(sk) => Scalar(sk.negate().to_secret_bytes()),
        }
    }

    /// `-self` when `negate` is true, `self` otherwise.
    pub(crate) fn negate_if(&self, negate: bool) -> Scalar {
        if negate { self.negate() } else { self.clone() }
    }
}

impl std::fmt::Debug for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Some scalars are secret; never print any.
        f.write_str("Scalar(<redacted>)")
    }
}

impl Zeroize for Scalar {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

/// `bytes - n` for `n <= bytes < 2^256`, computed as `bytes + (2^256 - n)` with wrap-around.
fn sub_order(bytes: [u8; 32]) -> [u8; 32] {
    // 2^256 - n
    const COMPLEMENT: [u8; 32] = [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x45, 0x51, 0x23, 0x19, 0x50, 0xb7, 0x5f,
        0xc4, 0x40, 0x2d, 0xa1, 0x73, 0x2f, 0xc9, 0xbe, 0xbf,
    ];
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in (0..32).rev() {
        let sum = u16::from(bytes[i]) + u16::from(COMPLEMENT[i]) + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: [u8; 32] = secp256k1::constants::CURVE_ORDER;

    #[test]
    fn reduce_maps_n_to_zero_and_max_to_small() {
        assert!(Scalar::reduce(N).is_zero());
        let max = Scalar::reduce([0xff; 32]);
        // 2^256 - 1 - n = COMPLEMENT - 1
        let mut expected = [0u8; 32];
        expected[15] = 1;
        expected[16..].copy_from_slice(&[
            0x45, 0x51, 0x23, 0x19, 0x50, 0xb7, 0x5f, 0xc4, 0x40, 0x2d, 0xa1, 0x73, 0x2f, 0xc9,
            0xbe, 0xbe,
        ]);
        assert_eq!(max.to_bytes(), expected);
    }

    #[test]
    fn arithmetic_handles_zero() {
        let two = Scalar::ONE.add(&Scalar::ONE);
        assert_eq!(two.to_bytes()[31], 2);
        assert!(Scalar::ONE.add(&Scalar::ONE.negate()).is_zero());
        assert!(Scalar::ZERO.mul(&two).is_zero());
        assert!(two.mul(&Scalar::ZERO).is_zero());
        assert_eq!(Scalar::ZERO.add(&two), two);
        assert!(Scalar::ZERO.negate().is_zero());
        assert_eq!(two.negate().negate(), two);
        assert!(Scalar::from_bytes(N).is_none());
    }
}
