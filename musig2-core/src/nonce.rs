//! Nonces: generation (BIP327 NonceGen), public nonces, aggregation (NonceAgg).

use std::fmt;
use std::sync::LazyLock;

use secp256k1::{PublicKey, SecretKey, XOnlyPublicKey, constants};
use sha2::Digest;
use zeroize::{Zeroize, Zeroizing};

use crate::blinded::generator_mul;
use crate::error::{Contribution, Culprit, Error, Result};
use crate::hash;
use crate::keyagg::KeyAggContext;
use crate::pointsum;
use crate::scalar::Scalar;

/// A secret nonce pair `(k1, k2)` bound to the public key that will sign with it.
///
/// It is deliberately not `Clone`, `Copy` or serialisable: signing consumes it by value, so the
/// compiler refuses a second use. It is erased from memory when dropped and never printed.
///
/// ```compile_fail
/// # use musig2_core::*;
/// # fn reuse(nonce: SecNonce, session: &SessionContext, kp: &secp256k1::Keypair) {
/// let _ = session.sign(nonce, kp);
/// let _ = session.sign(nonce, kp); // error[E0382]: use of moved value
/// # }
/// ```
pub struct SecNonce {
    k1: [u8; 32],
    k2: [u8; 32],
    pk: PublicKey,
}

impl SecNonce {
    /// The public key this nonce was generated for.
    pub fn public_key(&self) -> PublicKey {
        self.pk
    }

    /// Imports a 97-byte BIP327 secret nonce (`k1 || k2 || pk`) for test vectors.
    ///
    /// Importing a secret nonce is how nonces get reused; only the official vectors need it, so it
    /// exists only with the `test-vectors` feature.
    #[cfg(feature = "test-vectors")]
    pub fn dangerous_from_bytes(bytes: &[u8; 97]) -> Result<SecNonce> {
        let mut k1 = [0u8; 32];
        let mut k2 = [0u8; 32];
        k1.copy_from_slice(&bytes[..32]);
        k2.copy_from_slice(&bytes[32..64]);
        let mut pk = [0u8; 33];
        pk.copy_from_slice(&bytes[64..]);
        let pk = PublicKey::from_byte_array_compressed(pk).map_err(|_| Error::InvalidSecNonce)?;
        Ok(SecNonce { k1, k2, pk })
    }

    /// The public nonce `(k1·G, k2·G)` of this secret nonce; fails if it has been erased.
    pub fn public_nonce(&self) -> Result<PubNonce> {
        let (k1, k2) = self.scalars()?;
        let k1 = SecretKey::from_secret_bytes(k1.to_bytes()).map_err(|_| Error::InvalidSecNonce)?;
        let k2 = SecretKey::from_secret_bytes(k2.to_bytes()).map_err(|_| Error::InvalidSecNonce)?;
        Ok(PubNonce {
            r1: generator_mul(&k1),
            r2: generator_mul(&k2),
        })
    }

    /// `(k1, k2)` as scalars, refusing zero or out-of-range values (an erased nonce).
    pub(crate) fn scalars(&self) -> Result<(Zeroizing<Scalar>, Zeroizing<Scalar>)> {
        let k1 = Scalar::from_bytes(self.k1).filter(|k| !k.is_zero());
        let k2 = Scalar::from_bytes(self.k2).filter(|k| !k.is_zero());
        match (k1, k2) {
            (Some(k1), Some(k2)) => Ok((Zeroizing::new(k1), Zeroizing::new(k2))),
            _ => Err(Error::InvalidSecNonce),
        }
    }
}

impl Drop for SecNonce {
    fn drop(&mut self) {
        self.k1.zeroize();
        self.k2.zeroize();
    }
}

impl fmt::Debug for SecNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecNonce")
            .field("k1", &"<redacted>")
            .field("k2", &"<redacted>")
            .field("pk", &self.pk)
            .finish()
    }
}

/// A public nonce `(R1, R2)`, 66 bytes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PubNonce {
    r1: PublicKey,
    r2: PublicKey,
}

impl PubNonce {
    /// Parses 66 bytes; both halves must be valid compressed points.
    ///
    /// The error is unattributed; use [`Error::blame_signer`] once the sender is known, or
    /// [`AggNonce::aggregate_bytes`] or
    /// [`SessionContext::verify_partial_bytes`](crate::SessionContext::verify_partial_bytes),
    /// which blame the sender themselves.
    pub fn from_bytes(bytes: &[u8; 66]) -> Result<PubNonce> {
        let (a, b) = split66(bytes);
        let parse = |h| {
            PublicKey::from_byte_array_compressed(h)
                .map_err(|_| Error::unattributed(Contribution::PubNonce))
        };
        Ok(PubNonce {
            r1: parse(a)?,
            r2: parse(b)?,
        })
    }

    /// A public nonce from two already parsed points (no re-parsing).
    pub fn from_points(r1: PublicKey, r2: PublicKey) -> PubNonce {
        PubNonce { r1, r2 }
    }

    /// The 66-byte encoding.
    pub fn to_bytes(&self) -> [u8; 66] {
        join66(&self.r1.serialize(), &self.r2.serialize())
    }

    /// The two points.
    pub fn points(&self) -> (PublicKey, PublicKey) {
        (self.r1, self.r2)
    }
}

impl fmt::Debug for PubNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PubNonce({})", hex(&self.to_bytes()))
    }
}

/// An aggregate nonce `(R1, R2)`; either point may be infinity (encoded as 33 zero bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AggNonce {
    r1: Option<PublicKey>,
    r2: Option<PublicKey>,
}

impl AggNonce {
    /// BIP327 NonceAgg over parsed public nonces.
    ///
    /// Public nonces are public data, so the two sums use variable-time point arithmetic and
    /// share one inversion, as libsecp256k1's nonce aggregation does.
    pub fn aggregate(nonces: &[PubNonce]) -> AggNonce {
        let (r1, r2) = pointsum::sum_pairs(nonces.iter().map(|n| (&n.r1, &n.r2)));
        AggNonce { r1, r2 }
    }

    /// BIP327 NonceAgg over encodings; an invalid nonce is blamed on its index.
    ///
    /// The order of the checks is BIP327's: the first half of every nonce, then the second half
    /// of every nonce, and the first failure in that order is blamed. When signer 0 sends
    /// (valid, invalid) and signer 1 sends (invalid, valid), signer 1 is blamed.
    pub fn aggregate_bytes(nonces: &[[u8; 66]]) -> Result<AggNonce> {
        let half = |j: usize| -> Result<Vec<PublicKey>> {
            nonces
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let mut h = [0u8; 33];
                    h.copy_from_slice(&n[33 * j..33 * (j + 1)]);
                    PublicKey::from_byte_array_compressed(h)
                        .map_err(|_| Error::unattributed(Contribution::PubNonce).blame_signer(i))
                })
                .collect()
        };
        let firsts = half(0)?;
        let seconds = half(1)?;
        let (r1, r2) = pointsum::sum_pairs(firsts.iter().zip(&seconds));
        Ok(AggNonce { r1, r2 })
    }

    /// Parses 66 bytes sent by the nonce aggregator.
    pub fn from_bytes(bytes: &[u8; 66]) -> Result<AggNonce> {
        let (a, b) = split66(bytes);
        let parse = |h: [u8; 33]| {
            if h == [0u8; 33] {
                return Ok(None);
            }
            PublicKey::from_byte_array_compressed(h)
                .map(Some)
                .map_err(|_| Error::InvalidContribution {
                    culprit: Culprit::Aggregator,
                    contribution: Contribution::AggNonce,
                })
        };
        Ok(AggNonce {
            r1: parse(a)?,
            r2: parse(b)?,
        })
    }

    /// The 66-byte encoding (infinity as 33 zero bytes).
    pub fn to_bytes(&self) -> [u8; 66] {
        let enc = |p: &Option<PublicKey>| p.map(|p| p.serialize()).unwrap_or([0u8; 33]);
        join66(&enc(&self.r1), &enc(&self.r2))
    }

    /// An aggregate nonce from its two points (`None` for infinity), e.g. ones parsed or
    /// summed before; no check is needed, any two points (or infinities) are an aggregate.
    pub fn from_points(r1: Option<PublicKey>, r2: Option<PublicKey>) -> AggNonce {
        AggNonce { r1, r2 }
    }

    /// The two points `R1`, `R2` (`None` for infinity).
    pub fn points(&self) -> (Option<PublicKey>, Option<PublicKey>) {
        (self.r1, self.r2)
    }
}

impl fmt::Debug for AggNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AggNonce({})", hex(&self.to_bytes()))
    }
}

/// BIP327 NonceGen with every optional input, as a builder.
///
/// ```
/// use musig2_core::NonceGen;
/// use secp256k1::Keypair;
///
/// let keypair = Keypair::new(&mut rand::rng());
/// let sk = keypair.secret_key();
/// let (secnonce, pubnonce) = NonceGen::new(keypair.public_key())
///     .secret_key(&sk)
///     .message(b"any length message")
///     .generate(&mut rand::rng())
///     .unwrap();
/// assert_eq!(secnonce.public_key(), keypair.public_key());
/// assert_eq!(pubnonce.to_bytes().len(), 66);
/// ```
#[derive(Clone)]
pub struct NonceGen<'a> {
    pk: PublicKey,
    sk: Option<&'a SecretKey>,
    aggpk: Option<[u8; 32]>,
    msg: Option<&'a [u8]>,
    extra_in: Option<&'a [u8]>,
}

impl fmt::Debug for NonceGen<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceGen")
            .field("pk", &self.pk)
            .field("sk", &self.sk.map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl<'a> NonceGen<'a> {
    /// Starts nonce generation for the signer with public key `pk`.
    pub fn new(pk: PublicKey) -> Self {
        NonceGen {
            pk,
            sk: None,
            aggpk: None,
            msg: None,
            extra_in: None,
        }
    }

    /// Mixes in the signer's secret key (defence in depth against a weak RNG).
    pub fn secret_key(mut self, sk: &'a SecretKey) -> Self {
        self.sk = Some(sk);
        self
    }

    /// Mixes in the x-only aggregate key.
    pub fn aggregate_key(mut self, aggpk: &XOnlyPublicKey) -> Self {
        self.aggpk = Some(aggpk.to_byte_array());
        self
    }

    /// Mixes in the aggregate key as raw 32 bytes (BIP327 allows any 32 bytes here).
    pub fn aggregate_key_bytes(mut self, aggpk: [u8; 32]) -> Self {
        self.aggpk = Some(aggpk);
        self
    }

    /// Mixes in the x-only key of a key-aggregation context.
    pub fn key_agg(self, ctx: &KeyAggContext) -> Self {
        self.aggregate_key(&ctx.x_only_key())
    }

    /// Mixes in the message to be signed (any length, including zero).
    pub fn message(mut self, msg: &'a [u8]) -> Self {
        self.msg = Some(msg);
        self
    }

    /// Mixes in extra input of any length (e.g. a session id or counter).
    pub fn extra_input(mut self, extra_in: &'a [u8]) -> Self {
        self.extra_in = Some(extra_in);
        self
    }

    /// Generates a nonce with 32 bytes from `rng`.
    pub fn generate<R: rand::CryptoRng + ?Sized>(
        self,
        rng: &mut R,
    ) -> Result<(SecNonce, PubNonce)> {
        let mut rand = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut rand[..]);
        self.generate_from_rand(&rand)
    }

    /// Generates a nonce for callers without a good RNG: `counter` must never repeat for this
    /// secret key (e.g. a persisted, incremented-before-use counter). Needs the secret key.
    pub fn generate_with_counter(self, counter: u64) -> Result<(SecNonce, PubNonce)> {
        if self.sk.is_none() {
            return Err(Error::CounterNonceNeedsSecretKey);
        }
        let mut rand = [0u8; 32];
        rand[..8].copy_from_slice(&counter.to_be_bytes());
        self.generate_from_rand(&rand)
    }

    /// BIP327 NonceGen exactly, with the caller's 32 bytes `rand'`, which must be uniformly
    /// random and never reused (vectors and deterministic tests use this directly).
    pub fn generate_from_rand(self, rand_prime: &[u8; 32]) -> Result<(SecNonce, PubNonce)> {
        let mut rand = Zeroizing::new(*rand_prime);
        if let Some(sk) = self.sk {
            let mut h = hash::musig_aux();
            h.update(rand_prime);
            let mask = hash::finish(h);
            let sk_bytes = Zeroizing::new(sk.to_secret_bytes());
            for (r, (s, m)) in rand.iter_mut().zip(sk_bytes.iter().zip(mask)) {
                *r = s ^ m;
            }
        }
        let mut h = hash::musig_nonce();
        h.update(&rand[..]);
        h.update([33u8]);
        h.update(self.pk.serialize());
        match &self.aggpk {
            Some(aggpk) => {
                h.update([32u8]);
                h.update(aggpk);
            }
            None => h.update([0u8]),
        }
        match self.msg {
            Some(m) => {
                h.update([1u8]);
                h.update((m.len() as u64).to_be_bytes());
                h.update(m);
            }
            None => h.update([0u8]),
        }
        let extra = self.extra_in.unwrap_or(&[]);
        h.update(u32::try_from(extra.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(extra);
        let derive = |i: u8| {
            let mut hi = h.clone();
            hi.update([i]);
            Zeroizing::new(Scalar::reduce(hash::finish(hi)))
        };
        secret_nonce_pair(derive(0), derive(1), self.pk)
    }
}

/// Builds `(secnonce, pubnonce)` from two derived scalars, refusing zero. `k·G` is libsecp256k1's
/// constant-time `ecmult_gen` on this thread's blinded context (ADR 0014).
pub(crate) fn secret_nonce_pair(
    k1: Zeroizing<Scalar>,
    k2: Zeroizing<Scalar>,
    pk: PublicKey,
) -> Result<(SecNonce, PubNonce)> {
    let k1 = SecretKey::from_secret_bytes(k1.to_bytes()).map_err(|_| Error::ZeroNonce)?;
    let k2 = SecretKey::from_secret_bytes(k2.to_bytes()).map_err(|_| Error::ZeroNonce)?;
    let pubnonce = PubNonce {
        r1: generator_mul(&k1),
        r2: generator_mul(&k2),
    };
    let secnonce = SecNonce {
        k1: k1.to_secret_bytes(),
        k2: k2.to_secret_bytes(),
        pk,
    };
    Ok((secnonce, pubnonce))
}

/// The generator `G`.
pub(crate) static GENERATOR: LazyLock<PublicKey> = LazyLock::new(|| {
    let mut xy = [0x04; 65];
    xy[1..33].copy_from_slice(&constants::GENERATOR_X);
    xy[33..].copy_from_slice(&constants::GENERATOR_Y);
    PublicKey::from_byte_array_uncompressed(xy)
        .unwrap_or_else(|_| unreachable!("G is on the curve"))
});

fn split66(bytes: &[u8; 66]) -> ([u8; 33], [u8; 33]) {
    let mut a = [0u8; 33];
    let mut b = [0u8; 33];
    a.copy_from_slice(&bytes[..33]);
    b.copy_from_slice(&bytes[33..]);
    (a, b)
}

fn join66(a: &[u8; 33], b: &[u8; 33]) -> [u8; 66] {
    let mut out = [0u8; 66];
    out[..33].copy_from_slice(a);
    out[33..].copy_from_slice(b);
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_multiples_equal_the_crates_at_the_range_ends_and_on_hashed_scalars() {
        let mut n_minus_one = [0xff; 32];
        n_minus_one[16..].copy_from_slice(&[
            0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36,
            0x41, 0x40,
        ]);
        n_minus_one[15] = 0xfe;
        let mut one = [0u8; 32];
        one[31] = 1;
        let mut cases = vec![one, n_minus_one];
        let mut seed = [0u8; 32];
        for i in 0..32u8 {
            seed = hash::finish({
                let mut h = hash::musig_aux();
                h.update(seed);
                h.update([i]);
                h
            });
            cases.push(seed);
        }
        assert_eq!(
            *GENERATOR,
            PublicKey::from_secret_key(&SecretKey::from_secret_bytes(one).unwrap())
        );
        for bytes in cases {
            let k = SecretKey::from_secret_bytes(bytes).expect("in range");
            assert_eq!(
                generator_mul(&k),
                PublicKey::from_secret_key(&k),
                "k = {}",
                hex(&bytes)
            );
        }
    }
}
