//! Variable-time sums of public points, for NonceAgg.
//!
//! `PublicKey::combine_keys` is constant time and converts every sum to affine coordinates with
//! its own constant-time inversion (~1.7 µs per call whatever the number of points), which is
//! most of NonceAgg's cost at small n. Public nonces are public, so here both sums run in
//! Jacobian coordinates with variable-time formulas and share one variable-time inversion
//! (Montgomery's trick), as libsecp256k1's own nonce aggregation does. The inversion is a port
//! of libsecp256k1's `modinv64_var` (safegcd, Bernstein–Yang; MIT, Peter Dettman).
//!
//! Points enter through `serialize_uncompressed` and leave through
//! `from_byte_array_uncompressed`, which checks that the result is on the curve; the inverse is
//! checked by one multiplication. If either check fails the sums are recomputed with
//! `combine_keys`, so a defect here can cost time but not change a result that fails those
//! checks. No secret value ever passes through this module.

use secp256k1::PublicKey;

/// An integer modulo `p = 2^256 - 2^32 - 977`, little-endian 64-bit limbs, always `< p`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Fe([u64; 4]);

/// `2^256 mod p`.
const C: u64 = 0x1_0000_03D1;
const P: [u64; 4] = [
    0xFFFF_FFFE_FFFF_FC2F,
    0xFFFF_FFFF_FFFF_FFFF,
    0xFFFF_FFFF_FFFF_FFFF,
    0xFFFF_FFFF_FFFF_FFFF,
];

impl Fe {
    const ZERO: Fe = Fe([0; 4]);
    const ONE: Fe = Fe([1, 0, 0, 0]);

    /// 32 big-endian bytes that encode a value below `p` (a coordinate from libsecp256k1).
    fn from_be(bytes: &[u8]) -> Fe {
        let mut l = [0u64; 4];
        for (i, limb) in l.iter_mut().enumerate() {
            let start = 32 - 8 * (i + 1);
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[start..start + 8]);
            *limb = u64::from_be_bytes(b);
        }
        Fe(l)
    }

    fn write_be(&self, out: &mut [u8]) {
        for (i, limb) in self.0.iter().enumerate() {
            let start = 32 - 8 * (i + 1);
            out[start..start + 8].copy_from_slice(&limb.to_be_bytes());
        }
    }

    fn is_zero(&self) -> bool {
        *self == Fe::ZERO
    }

    /// `limbs - P` when `limbs >= P`.
    fn reduce_once(mut l: [u64; 4]) -> Fe {
        if geq_p(&l) {
            let mut borrow = false;
            for (x, p) in l.iter_mut().zip(P) {
                let (d, b1) = x.overflowing_sub(p);
                let (d, b2) = d.overflowing_sub(u64::from(borrow));
                *x = d;
                borrow = b1 | b2;
            }
        }
        Fe(l)
    }

    fn add(&self, other: &Fe) -> Fe {
        let mut l = [0u64; 4];
        let mut carry = false;
        for (i, limb) in l.iter_mut().enumerate() {
            let (s, c1) = self.0[i].overflowing_add(other.0[i]);
            let (s, c2) = s.overflowing_add(u64::from(carry));
            *limb = s;
            carry = c1 | c2;
        }
        if carry {
            // The true sum is `l + 2^256 < 2p`; subtracting p leaves `l + C`, which fits.
            add_small(&mut l, C);
            Fe(l)
        } else {
            Fe::reduce_once(l)
        }
    }

    fn sub(&self, other: &Fe) -> Fe {
        let mut l = [0u64; 4];
        let mut borrow = false;
        for (i, limb) in l.iter_mut().enumerate() {
            let (d, b1) = self.0[i].overflowing_sub(other.0[i]);
            let (d, b2) = d.overflowing_sub(u64::from(borrow));
            *limb = d;
            borrow = b1 | b2;
        }
        if borrow {
            // The stored value is `a - b + 2^256`; adding p means subtracting C (no underflow).
            let mut borrow = false;
            for (i, limb) in l.iter_mut().enumerate() {
                let sub = if i == 0 { C } else { 0 };
                let (d, b1) = limb.overflowing_sub(sub);
                let (d, b2) = d.overflowing_sub(u64::from(borrow));
                *limb = d;
                borrow = b1 | b2;
            }
        }
        Fe(l)
    }

    fn mul(&self, other: &Fe) -> Fe {
        let mut t = [0u64; 8];
        for i in 0..4 {
            let mut carry = 0u128;
            for j in 0..4 {
                let v =
                    u128::from(t[i + j]) + u128::from(self.0[i]) * u128::from(other.0[j]) + carry;
                t[i + j] = v as u64;
                carry = v >> 64;
            }
            t[i + 4] = carry as u64;
        }
        // t = lo + hi·2^256 ≡ lo + hi·C.
        let mut l = [0u64; 4];
        let mut carry = 0u128;
        for i in 0..4 {
            let v = u128::from(t[i]) + u128::from(t[i + 4]) * u128::from(C) + carry;
            l[i] = v as u64;
            carry = v >> 64;
        }
        // carry < 2^34; fold it in once more.
        let mut v = u128::from(l[0]) + carry * u128::from(C);
        l[0] = v as u64;
        let mut i = 1;
        while v >> 64 != 0 && i < 4 {
            v = u128::from(l[i]) + (v >> 64);
            l[i] = v as u64;
            i += 1;
        }
        if i == 4 && v >> 64 != 0 {
            // Wrapped past 2^256: the low limbs are now tiny, add 2^256 mod p.
            add_small(&mut l, C);
        }
        Fe::reduce_once(l)
    }

    fn sqr(&self) -> Fe {
        self.mul(self)
    }

    fn double(&self) -> Fe {
        self.add(self)
    }

    /// `1/self` (variable time), `None` for zero or if the result fails its check.
    fn inv_var(&self) -> Option<Fe> {
        if self.is_zero() {
            return None;
        }
        let inv = from_signed62(&modinv64_var(to_signed62(self))?);
        (self.mul(&inv) == Fe::ONE).then_some(inv)
    }
}

fn geq_p(l: &[u64; 4]) -> bool {
    for i in (0..4).rev() {
        if l[i] != P[i] {
            return l[i] > P[i];
        }
    }
    true
}

/// `l += x` for a small `x`, where the caller knows the sum fits in 256 bits.
fn add_small(l: &mut [u64; 4], x: u64) {
    let mut carry = x;
    for limb in l.iter_mut() {
        let (s, c) = limb.overflowing_add(carry);
        *limb = s;
        carry = u64::from(c);
        if carry == 0 {
            break;
        }
    }
}

// ---- safegcd inversion, ported from libsecp256k1's modinv64_impl.h (variable-time parts) ----

const M62: u64 = u64::MAX >> 2;
/// `p` in signed 62-bit limbs.
const MODULUS: [i64; 5] = [-0x1_0000_03D1, 0, 0, 0, 256];
/// `p^-1 mod 2^62`.
const MODULUS_INV62: u64 = 0x27C7_F6E2_2DDA_CACF;

struct Trans {
    u: i64,
    v: i64,
    q: i64,
    r: i64,
}

fn to_signed62(a: &Fe) -> [i64; 5] {
    let [a0, a1, a2, a3] = a.0;
    [
        (a0 & M62) as i64,
        ((a0 >> 62 | a1 << 2) & M62) as i64,
        ((a1 >> 60 | a2 << 4) & M62) as i64,
        ((a2 >> 58 | a3 << 6) & M62) as i64,
        (a3 >> 56) as i64,
    ]
}

fn from_signed62(v: &[i64; 5]) -> Fe {
    let [v0, v1, v2, v3, v4] = v.map(|x| x as u64);
    Fe([
        v0 | v1 << 62,
        v1 >> 2 | v2 << 60,
        v2 >> 4 | v3 << 58,
        v3 >> 6 | v4 << 56,
    ])
}

/// 62 divsteps on the low limbs (`divsteps_62_var`); returns the new eta and the matrix.
fn divsteps_62_var(mut eta: i64, f0: u64, g0: u64) -> (i64, Trans) {
    let (mut u, mut v, mut q, mut r) = (1u64, 0u64, 0u64, 1u64);
    let (mut f, mut g) = (f0, g0);
    let mut i: i64 = 62;
    loop {
        let zeros = (g | (u64::MAX << i)).trailing_zeros() as i64;
        g >>= zeros;
        u <<= zeros;
        v <<= zeros;
        eta -= zeros;
        i -= zeros;
        if i == 0 {
            break;
        }
        let m: u64;
        let w: u64;
        if eta < 0 {
            eta = -eta;
            let tmp = f;
            f = g;
            g = tmp.wrapping_neg();
            let tmp = u;
            u = q;
            q = tmp.wrapping_neg();
            let tmp = v;
            v = r;
            r = tmp.wrapping_neg();
            let limit = (eta + 1).min(i);
            m = (u64::MAX >> (64 - limit)) & 63;
            w = f
                .wrapping_mul(g)
                .wrapping_mul(f.wrapping_mul(f).wrapping_sub(2))
                & m;
        } else {
            let limit = (eta + 1).min(i);
            m = (u64::MAX >> (64 - limit)) & 15;
            let w0 = f.wrapping_add((f.wrapping_add(1) & 4) << 1);
            w = w0.wrapping_neg().wrapping_mul(g) & m;
        }
        g = g.wrapping_add(f.wrapping_mul(w));
        q = q.wrapping_add(u.wrapping_mul(w));
        r = r.wrapping_add(v.wrapping_mul(w));
    }
    (
        eta,
        Trans {
            u: u as i64,
            v: v as i64,
            q: q as i64,
            r: r as i64,
        },
    )
}

/// `(t / 2^62)·[d, e] mod p` (`update_de_62`).
fn update_de_62(d: &mut [i64; 5], e: &mut [i64; 5], t: &Trans) {
    let (u, v, q, r) = (t.u, t.v, t.q, t.r);
    let sd = d[4] >> 63;
    let se = e[4] >> 63;
    let mut md = (u & sd) + (v & se);
    let mut me = (q & sd) + (r & se);
    let mut cd = i128::from(u) * i128::from(d[0]) + i128::from(v) * i128::from(e[0]);
    let mut ce = i128::from(q) * i128::from(d[0]) + i128::from(r) * i128::from(e[0]);
    md -= (MODULUS_INV62
        .wrapping_mul(cd as u64)
        .wrapping_add(md as u64)
        & M62) as i64;
    me -= (MODULUS_INV62
        .wrapping_mul(ce as u64)
        .wrapping_add(me as u64)
        & M62) as i64;
    cd += i128::from(MODULUS[0]) * i128::from(md);
    ce += i128::from(MODULUS[0]) * i128::from(me);
    cd >>= 62;
    ce >>= 62;
    for i in 1..5 {
        cd += i128::from(u) * i128::from(d[i]) + i128::from(v) * i128::from(e[i]);
        ce += i128::from(q) * i128::from(d[i]) + i128::from(r) * i128::from(e[i]);
        if MODULUS[i] != 0 {
            cd += i128::from(MODULUS[i]) * i128::from(md);
            ce += i128::from(MODULUS[i]) * i128::from(me);
        }
        d[i - 1] = ((cd as u64) & M62) as i64;
        e[i - 1] = ((ce as u64) & M62) as i64;
        cd >>= 62;
        ce >>= 62;
    }
    d[4] = cd as i64;
    e[4] = ce as i64;
}

/// `(t / 2^62)·[f, g]` on the first `len` limbs (`update_fg_62_var`).
fn update_fg_62_var(len: usize, f: &mut [i64; 5], g: &mut [i64; 5], t: &Trans) {
    let (u, v, q, r) = (t.u, t.v, t.q, t.r);
    let mut cf = i128::from(u) * i128::from(f[0]) + i128::from(v) * i128::from(g[0]);
    let mut cg = i128::from(q) * i128::from(f[0]) + i128::from(r) * i128::from(g[0]);
    cf >>= 62;
    cg >>= 62;
    for i in 1..len {
        cf += i128::from(u) * i128::from(f[i]) + i128::from(v) * i128::from(g[i]);
        cg += i128::from(q) * i128::from(f[i]) + i128::from(r) * i128::from(g[i]);
        f[i - 1] = ((cf as u64) & M62) as i64;
        g[i - 1] = ((cg as u64) & M62) as i64;
        cf >>= 62;
        cg >>= 62;
    }
    f[len - 1] = cf as i64;
    g[len - 1] = cg as i64;
}

/// Brings `r` from (-2p, p) to [0, p), negating first if `sign < 0` (`normalize_62`).
fn normalize_62(r: &mut [i64; 5], sign: i64) {
    let m62 = M62 as i64;
    let cond_add = r[4] >> 63;
    for (x, m) in r.iter_mut().zip(MODULUS) {
        *x += m & cond_add;
    }
    let cond_negate = sign >> 63;
    for x in r.iter_mut() {
        *x = (*x ^ cond_negate) - cond_negate;
    }
    for i in 0..4 {
        r[i + 1] += r[i] >> 62;
        r[i] &= m62;
    }
    let cond_add = r[4] >> 63;
    for (x, m) in r.iter_mut().zip(MODULUS) {
        *x += m & cond_add;
    }
    for i in 0..4 {
        r[i + 1] += r[i] >> 62;
        r[i] &= m62;
    }
}

/// `x^-1 mod p` for `0 < x < p` (`modinv64_var`); `None` if it does not converge in the
/// proven bound of 12 rounds (it always does; this only guards against a porting defect).
fn modinv64_var(x: [i64; 5]) -> Option<[i64; 5]> {
    let mut d = [0i64; 5];
    let mut e = [1i64, 0, 0, 0, 0];
    let mut f = MODULUS;
    let mut g = x;
    let mut len = 5usize;
    let mut eta: i64 = -1;
    for _ in 0..12 {
        let (new_eta, t) = divsteps_62_var(eta, f[0] as u64, g[0] as u64);
        eta = new_eta;
        update_de_62(&mut d, &mut e, &t);
        update_fg_62_var(len, &mut f, &mut g, &t);
        if g[0] == 0 && g[1..len].iter().all(|&l| l == 0) {
            normalize_62(&mut d, f[len - 1]);
            return Some(d);
        }
        let fn_ = f[len - 1];
        let gn = g[len - 1];
        let mut cond = (len as i64 - 2) >> 63;
        cond |= fn_ ^ (fn_ >> 63);
        cond |= gn ^ (gn >> 63);
        if cond == 0 {
            f[len - 2] |= ((fn_ as u64) << 62) as i64;
            g[len - 2] |= ((gn as u64) << 62) as i64;
            len -= 1;
        }
    }
    None
}

// ---- points ----

/// A finite point in Jacobian coordinates `(X/Z^2, Y/Z^3)`.
#[derive(Clone, Copy)]
struct Jac {
    x: Fe,
    y: Fe,
    z: Fe,
}

fn affine_coordinates(p: &PublicKey) -> (Fe, Fe) {
    let s = p.serialize_uncompressed();
    (Fe::from_be(&s[1..33]), Fe::from_be(&s[33..]))
}

fn double(a: &Jac) -> Option<Jac> {
    if a.y.is_zero() {
        return None;
    }
    let ysq = a.y.sqr();
    let s = a.x.mul(&ysq).double().double();
    let xsq = a.x.sqr();
    let m = xsq.double().add(&xsq);
    let x = m.sqr().sub(&s.double());
    let y8 = ysq.sqr().double().double().double();
    let y = m.mul(&s.sub(&x)).sub(&y8);
    let z = a.y.mul(&a.z).double();
    Some(Jac { x, y, z })
}

/// `acc + (px, py)`, `None` standing for infinity.
fn add_affine(acc: Option<Jac>, (px, py): (Fe, Fe)) -> Option<Jac> {
    let Some(a) = acc else {
        return Some(Jac {
            x: px,
            y: py,
            z: Fe::ONE,
        });
    };
    let z2 = a.z.sqr();
    let u2 = px.mul(&z2);
    let s2 = py.mul(&z2).mul(&a.z);
    let h = u2.sub(&a.x);
    let r = s2.sub(&a.y);
    if h.is_zero() {
        return if r.is_zero() { double(&a) } else { None };
    }
    let h2 = h.sqr();
    let h3 = h2.mul(&h);
    let v = a.x.mul(&h2);
    let x = r.sqr().sub(&h3).sub(&v.double());
    let y = r.mul(&v.sub(&x)).sub(&a.y.mul(&h3));
    let z = a.z.mul(&h);
    Some(Jac { x, y, z })
}

fn to_public_key(p: &Jac, zinv: &Fe) -> Option<PublicKey> {
    let zinv2 = zinv.sqr();
    let mut out = [0x04u8; 65];
    p.x.mul(&zinv2).write_be(&mut out[1..33]);
    p.y.mul(&zinv2).mul(zinv).write_be(&mut out[33..]);
    PublicKey::from_byte_array_uncompressed(out).ok()
}

/// Both sums in affine form with one shared inversion; `None` when a check fails.
fn normalise_both(
    a: Option<Jac>,
    b: Option<Jac>,
) -> Option<(Option<PublicKey>, Option<PublicKey>)> {
    match (a, b) {
        (None, None) => Some((None, None)),
        (Some(a), None) => Some((Some(to_public_key(&a, &a.z.inv_var()?)?), None)),
        (None, Some(b)) => Some((None, Some(to_public_key(&b, &b.z.inv_var()?)?))),
        (Some(a), Some(b)) => {
            let inv = a.z.mul(&b.z).inv_var()?;
            let ainv = inv.mul(&b.z);
            let binv = inv.mul(&a.z);
            Some((
                Some(to_public_key(&a, &ainv)?),
                Some(to_public_key(&b, &binv)?),
            ))
        }
    }
}

/// `(Σ first, Σ second)` over public point pairs; `None` is the point at infinity (also for an
/// empty list). Variable time: public values only.
pub(crate) fn sum_pairs<'a, I>(pairs: I) -> (Option<PublicKey>, Option<PublicKey>)
where
    I: Iterator<Item = (&'a PublicKey, &'a PublicKey)> + Clone,
{
    let mut first = None;
    let mut second = None;
    for (p, q) in pairs.clone() {
        first = add_affine(first, affine_coordinates(p));
        second = add_affine(second, affine_coordinates(q));
    }
    normalise_both(first, second).unwrap_or_else(|| {
        let firsts: Vec<&PublicKey> = pairs.clone().map(|(p, _)| p).collect();
        let seconds: Vec<&PublicKey> = pairs.map(|(_, q)| q).collect();
        (
            PublicKey::combine_keys(&firsts).ok(),
            PublicKey::combine_keys(&seconds).ok(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secp256k1::SecretKey;
    use sha2::{Digest, Sha256};

    fn bytes(seed: &str, i: u32) -> [u8; 32] {
        Sha256::new()
            .chain_update(seed)
            .chain_update(i.to_be_bytes())
            .finalize()
            .into()
    }

    fn point(i: u32) -> PublicKey {
        PublicKey::from_secret_key(&SecretKey::from_secret_bytes(bytes("point", i)).unwrap())
    }

    /// The fast path alone, without the `combine_keys` fallback that would hide a defect.
    fn fast(pairs: &[(PublicKey, PublicKey)]) -> (Option<PublicKey>, Option<PublicKey>) {
        let (mut a, mut b) = (None, None);
        for (p, q) in pairs {
            a = add_affine(a, affine_coordinates(p));
            b = add_affine(b, affine_coordinates(q));
        }
        normalise_both(a, b).expect("fast path succeeds")
    }

    fn combined(points: &[PublicKey]) -> Option<PublicKey> {
        PublicKey::combine_keys(&points.iter().collect::<Vec<_>>()).ok()
    }

    fn check(pairs: &[(PublicKey, PublicKey)]) {
        let firsts: Vec<PublicKey> = pairs.iter().map(|p| p.0).collect();
        let seconds: Vec<PublicKey> = pairs.iter().map(|p| p.1).collect();
        let expected = (combined(&firsts), combined(&seconds));
        assert_eq!(fast(pairs), expected, "{} pairs", pairs.len());
        assert_eq!(sum_pairs(pairs.iter().map(|(p, q)| (p, q))), expected);
    }

    #[test]
    fn field_inverse_and_products_are_right_at_the_edges_and_at_random() {
        let p_minus = |k: u64| Fe([P[0] - k, P[1], P[2], P[3]]);
        let mut values = vec![
            Fe::ONE,
            Fe([2, 0, 0, 0]),
            p_minus(1),
            p_minus(2),
            Fe([0, 0, 0, 1 << 63]),
        ];
        values.extend((0..200).map(|i| Fe::reduce_once(Fe::from_be(&bytes("fe", i)).0)));
        assert_eq!(p_minus(1).sqr(), Fe::ONE);
        for a in &values {
            let inv = a.inv_var().expect("non-zero values are invertible");
            assert_eq!(a.mul(&inv), Fe::ONE);
            for b in values.iter().take(8) {
                assert_eq!(a.mul(b).mul(&b.inv_var().unwrap()), *a);
                assert_eq!(a.add(b).sub(b), *a);
                assert_eq!(a.sub(b).add(b), *a);
            }
        }
        assert_eq!(Fe::ZERO.inv_var(), None);
    }

    #[test]
    fn sums_equal_combine_keys_including_doubling_and_infinity() {
        let pts: Vec<PublicKey> = (0..40).map(point).collect();
        for n in 1..=20 {
            let pairs: Vec<_> = (0..n).map(|i| (pts[i], pts[39 - i])).collect();
            check(&pairs);
        }
        let (p, q, r) = (pts[0], pts[1], pts[2]);
        check(&[(p, q), (p, q)]); // P + P: doubling in both halves
        check(&[(p, q), (p, q), (p, q)]);
        check(&[(p, q), (p.negate(), r)]); // first half cancels to infinity
        check(&[(p, q), (p.negate(), q.negate())]); // both halves infinity
        check(&[(p, q), (p.negate(), r), (r, p)]); // infinity midway, then a point
        check(&[
            (p, q),
            (q, p),
            (p.negate(), q.negate()),
            (q.negate(), p.negate()),
        ]);
        assert_eq!(sum_pairs(std::iter::empty()), (None, None));
    }

    #[test]
    fn random_lists_from_a_small_pool_with_negations_match_combine_keys() {
        // Three points and their negations: partial sums often equal the next point (doubling)
        // or its negation (infinity), and restart from infinity.
        let base: Vec<PublicKey> = (100..103).map(point).collect();
        let pool: Vec<PublicKey> = base.iter().flat_map(|p| [*p, p.negate()]).collect();
        for case in 0..500 {
            let r = bytes("case", case);
            let n = 1 + usize::from(r[0] % 8);
            let pairs: Vec<_> = (0..n)
                .map(|i| {
                    (
                        pool[usize::from(r[1 + 2 * i]) % 6],
                        pool[usize::from(r[2 + 2 * i]) % 6],
                    )
                })
                .collect();
            check(&pairs);
        }
    }
}
