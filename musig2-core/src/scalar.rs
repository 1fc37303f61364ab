//! Scalars modulo the group order `n`, zero included.
//!
//! The `secp256k1` crate exposes no scalar type with arithmetic. Range checks, addition and
//! negation are done here in constant-time Rust on 64-bit limbs; multiplication goes through
//! `SecretKey::mul_tweak` (libsecp256k1's constant-time scalar multiplication), which refuses
//! zero, so zero is handled explicitly. The only data-dependent branches are on "is this value
//! zero", which for secret values happens with negligible probability.

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
    ///
    /// The range check is constant time (secret nonces and keys pass through here); only the
    /// final accept/refuse is a branch.
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Option<Scalar> {
        let (_, borrow) = sub_limbs(&to_limbs(&bytes), &N_LIMBS);
        // `bytes - n` borrows exactly when `bytes < n`.
        (borrow == 1).then_some(Scalar(bytes))
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

    /// The value as a tweak for `secp256k1` point operations. Public values only: the
    /// conversion's range check is not constant time.
    pub(crate) fn tweak(&self) -> TweakScalar {
        TweakScalar::from_be_bytes(self.0).unwrap_or(TweakScalar::ZERO)
    }

    /// `self + other mod n`, constant time, in plain Rust (no FFI round trip: partial-signature
    /// aggregation does one of these per signer).
    pub(crate) fn add(&self, other: &Scalar) -> Scalar {
        Scalar(from_limbs(&add_mod(
            &to_limbs(&self.0),
            &to_limbs(&other.0),
        )))
    }

    /// The sum of `items` mod n, constant time.
    pub(crate) fn sum(items: impl IntoIterator<Item = Scalar>) -> Scalar {
        let acc = items
            .into_iter()
            .fold([0u64; 4], |acc, s| add_mod(&acc, &to_limbs(&s.0)));
        Scalar(from_limbs(&acc))
    }

    /// `self * other mod n`, constant time (libsecp's scalar multiplication). Both operands go
    /// through `SecretKey` (constant-time validity check), never through
    /// `secp256k1::Scalar::from_be_bytes`, whose range check is not constant time.
    pub(crate) fn mul(&self, other: &Scalar) -> Scalar {
        if self.is_zero() || other.is_zero() {
            return Scalar::ZERO;
        }
        match (self.as_secret(), other.as_secret()) {
            (Some(a), Some(b)) => a
                .mul_tweak(&TweakScalar::from(b))
                .map(|k| Scalar(k.to_secret_bytes()))
                .unwrap_or(Scalar::ZERO),
            _ => Scalar::ZERO,
        }
    }

    /// `-self mod n` (zero stays zero), constant time.
    pub(crate) fn negate(&self) -> Scalar {
        let limbs = to_limbs(&self.0);
        let (diff, _) = sub_limbs(&N_LIMBS, &limbs);
        let any = limbs.iter().fold(0u64, |acc, l| acc | l);
        // 1 when self != 0, without a branch.
        let nonzero = (any | any.wrapping_neg()) >> 63;
        Scalar(from_limbs(&select(nonzero, &diff, &[0; 4])))
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

/// The group order `n` as little-endian 64-bit limbs.
const N_LIMBS: [u64; 4] = [
    0xbfd2_5e8c_d036_4141,
    0xbaae_dce6_af48_a03b,
    0xffff_ffff_ffff_fffe,
    0xffff_ffff_ffff_ffff,
];

/// Big-endian bytes to little-endian limbs.
fn to_limbs(bytes: &[u8; 32]) -> [u64; 4] {
    let mut limbs = [0u64; 4];
    for (i, limb) in limbs.iter_mut().enumerate() {
        let start = 24 - 8 * i;
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[start..start + 8]);
        *limb = u64::from_be_bytes(word);
    }
    limbs
}

fn from_limbs(limbs: &[u64; 4]) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for (i, limb) in limbs.iter().enumerate() {
        let start = 24 - 8 * i;
        bytes[start..start + 8].copy_from_slice(&limb.to_be_bytes());
    }
    bytes
}

/// `a + b` and the carry out (0 or 1).
fn add_limbs(a: &[u64; 4], b: &[u64; 4]) -> ([u64; 4], u64) {
    let mut out = [0u64; 4];
    let mut carry = 0u64;
    for i in 0..4 {
        let sum = u128::from(a[i]) + u128::from(b[i]) + u128::from(carry);
        out[i] = sum as u64;
        carry = (sum >> 64) as u64;
    }
    (out, carry)
}

/// `a - b` and the borrow out (0 or 1).
fn sub_limbs(a: &[u64; 4], b: &[u64; 4]) -> ([u64; 4], u64) {
    let mut out = [0u64; 4];
    let mut borrow = 0u64;
    for i in 0..4 {
        let diff = u128::from(a[i])
            .wrapping_sub(u128::from(b[i]))
            .wrapping_sub(u128::from(borrow));
        out[i] = diff as u64;
        borrow = ((diff >> 64) as u64) & 1;
    }
    (out, borrow)
}

/// `a + b mod n` for `a, b < n`, constant time.
fn add_mod(a: &[u64; 4], b: &[u64; 4]) -> [u64; 4] {
    let (sum, carry) = add_limbs(a, b);
    let (reduced, borrow) = sub_limbs(&sum, &N_LIMBS);
    // The sum is below 2n: subtract n once when it overflowed 2^256 or is at least n.
    select(carry | (borrow ^ 1), &reduced, &sum)
}

/// `a` when `choice` is 1, `b` when it is 0, without a branch.
fn select(choice: u64, a: &[u64; 4], b: &[u64; 4]) -> [u64; 4] {
    let mask = choice.wrapping_neg();
    let mut out = [0u64; 4];
    for i in 0..4 {
        out[i] = (a[i] & mask) | (b[i] & !mask);
    }
    out
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

    #[test]
    fn range_check_matches_curve_order() {
        let mut below = N;
        below[31] -= 1;
        assert!(Scalar::from_bytes(below).is_some());
        assert!(Scalar::from_bytes([0xff; 32]).is_none());
        assert!(Scalar::from_bytes([0; 32]).is_some());
        let mut above = N;
        above[16] += 1;
        above[31] = 0;
        assert!(Scalar::from_bytes(above).is_none());
        let mut below_mid = N;
        below_mid[16] -= 1;
        below_mid[31] = 0xff;
        assert!(Scalar::from_bytes(below_mid).is_some());
    }

    #[test]
    fn add_and_negate_match_libsecp256k1() {
        // Pseudo-random values, plus the edges n-1, 1 and 0.
        let mut n_minus_1 = N;
        n_minus_1[31] -= 1;
        let mut values = vec![n_minus_1, [0u8; 32], Scalar::ONE.to_bytes()];
        let mut state = [7u8; 32];
        for _ in 0..200 {
            state = crate::hash::finish({
                use sha2::Digest;
                let mut h = sha2::Sha256::new();
                h.update(state);
                h
            });
            values.push(Scalar::reduce(state).to_bytes());
        }
        for a in &values {
            let sa = Scalar::from_bytes(*a).unwrap();
            let neg = sa.negate();
            let expected_neg = match SecretKey::from_secret_bytes(*a) {
                Ok(sk) => sk.negate().to_secret_bytes(),
                Err(_) => [0u8; 32],
            };
            assert_eq!(neg.to_bytes(), expected_neg);
            assert!(sa.add(&neg).is_zero());
            assert_eq!(Scalar::sum([sa.clone(), neg.clone(), sa.clone()]), sa);
            for b in values.iter().take(20) {
                let sb = Scalar::from_bytes(*b).unwrap();
                let expected = match SecretKey::from_secret_bytes(*a) {
                    Ok(sk) => sk
                        .add_tweak(&TweakScalar::from_be_bytes(*b).unwrap())
                        .map(|k| k.to_secret_bytes())
                        .unwrap_or([0u8; 32]),
                    Err(_) => *b,
                };
                assert_eq!(sa.add(&sb).to_bytes(), expected);
            }
        }
    }
}
