//! Signing sessions: session values, Sign, DeterministicSign, PartialSigVerify, PartialSigAgg.

use std::fmt;

use secp256k1::{Keypair, PublicKey, SecretKey, XOnlyPublicKey, schnorr};
use sha2::Digest;
use zeroize::Zeroizing;

use crate::error::{Contribution, Culprit, Error, Result};
use crate::hash;
use crate::keyagg::KeyAggContext;
use crate::nonce::{AggNonce, GENERATOR, PubNonce, SecNonce, hex, secret_nonce_pair};
use crate::scalar::Scalar;

/// A partial signature: a scalar below the group order, 32 bytes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartialSignature([u8; 32]);

impl PartialSignature {
    /// Parses 32 bytes, refusing values `>= n` (unattributed until [`Error::blame_signer`];
    /// [`SessionContext::verify_partial_bytes`] and [`SessionContext::aggregate_bytes`] blame
    /// the signer themselves).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PartialSignature> {
        Scalar::from_bytes(*bytes)
            .map(|_| PartialSignature(*bytes))
            .ok_or(Error::unattributed(Contribution::PartialSig))
    }

    /// The 32-byte encoding.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    fn scalar(&self) -> Scalar {
        Scalar::reduce(self.0)
    }
}

impl fmt::Debug for PartialSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartialSignature({})", hex(&self.0))
    }
}

/// A signing session: key aggregation context, aggregate nonce and message, with BIP327's
/// session values (`b`, `R`, `e`) computed once.
#[derive(Clone)]
pub struct SessionContext {
    key_agg: KeyAggContext,
    aggnonce: AggNonce,
    msg: Vec<u8>,
    b: Scalar,
    r_x: [u8; 32],
    r_even: bool,
    /// `R1 + b·R2` was the point at infinity and `R = G` stands in for it.
    r_infinite: bool,
    e: Scalar,
}

impl fmt::Debug for SessionContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionContext")
            .field("aggregate_key", &self.key_agg.x_only_key())
            .field("aggnonce", &self.aggnonce)
            .field("msg", &hex(&self.msg))
            .finish_non_exhaustive()
    }
}

impl SessionContext {
    /// BIP327 GetSessionValues for a message of any length.
    pub fn new(key_agg: &KeyAggContext, aggnonce: &AggNonce, msg: &[u8]) -> SessionContext {
        let q_x = key_agg.x_only_bytes();
        let mut h = hash::musig_noncecoef();
        h.update(aggnonce.to_bytes());
        h.update(q_x);
        h.update(msg);
        let b = Scalar::reduce(hash::finish(h));

        let (r1, r2) = aggnonce.points();
        let b_r2 = r2.and_then(|p| p.mul_tweak(&b.tweak()).ok());
        let r = match (r1, b_r2) {
            (Some(a), Some(c)) => a.combine(&c).ok(),
            (a, c) => a.or(c),
        };
        // BIP327: an infinite final nonce is replaced by G so signing stays well defined.
        let r_infinite = r.is_none();
        let r = r.unwrap_or_else(|| *GENERATOR);
        let (r_xonly, parity) = r.x_only_public_key();
        let r_x = r_xonly.to_byte_array();

        let mut h = hash::bip340_challenge();
        h.update(r_x);
        h.update(q_x);
        h.update(msg);
        let e = Scalar::reduce(hash::finish(h));

        SessionContext {
            key_agg: key_agg.clone(),
            aggnonce: *aggnonce,
            msg: msg.to_vec(),
            b,
            r_x,
            r_even: parity == secp256k1::Parity::Even,
            r_infinite,
            e,
        }
    }

    /// The key-aggregation context of this session.
    pub fn key_agg(&self) -> &KeyAggContext {
        &self.key_agg
    }

    /// The aggregate nonce of this session.
    pub fn aggnonce(&self) -> &AggNonce {
        &self.aggnonce
    }

    /// The message being signed.
    pub fn message(&self) -> &[u8] {
        &self.msg
    }

    /// BIP327 Sign: consumes the secret nonce and returns this signer's partial signature.
    ///
    /// Fails (never panics) when the nonce is erased, belongs to another key, or the key is not
    /// one of the session's signers.
    pub fn sign(&self, secnonce: SecNonce, keypair: &Keypair) -> Result<PartialSignature> {
        let (k1, k2) = secnonce.scalars()?;
        let pk = keypair.public_key();
        if secnonce.public_key() != pk {
            return Err(Error::SecNonceKeyMismatch);
        }
        drop(secnonce);
        let index = self
            .key_agg
            .index_of(&pk)
            .ok_or(Error::SignerKeyNotInList)?;
        let sk = Zeroizing::new(keypair.secret_key().to_secret_bytes());
        let d = Zeroizing::new(Scalar::from_bytes(*sk).ok_or(Error::InvalidSecretKey)?);
        self.sign_with_scalars(k1, k2, &d, index)
    }

    fn sign_with_scalars(
        &self,
        k1: Zeroizing<Scalar>,
        k2: Zeroizing<Scalar>,
        d_prime: &Scalar,
        index: usize,
    ) -> Result<PartialSignature> {
        let negate_nonce = !self.r_even;
        let k1 = Zeroizing::new(k1.negate_if(negate_nonce));
        let k2 = Zeroizing::new(k2.negate_if(negate_nonce));
        let d = Zeroizing::new(d_prime.negate_if(self.key_agg.signing_key_negated()));
        let ea = self.e.mul(self.key_agg.coefficient(index));
        let ead = Zeroizing::new(ea.mul(&d));
        let bk2 = Zeroizing::new(self.b.mul(&k2));
        let k = Zeroizing::new(k1.add(&bk2));
        let s = k.add(&ead);
        Ok(PartialSignature(s.to_bytes()))
    }

    /// BIP327 PartialSigVerifyInternal for the signer at `index` of the key list.
    ///
    /// On failure the error blames that signer's `psig`.
    pub fn verify_partial(
        &self,
        index: usize,
        psig: &PartialSignature,
        pubnonce: &PubNonce,
    ) -> Result<()> {
        self.check_index(index)?;
        let invalid = Error::InvalidContribution {
            culprit: Culprit::Signer(index),
            contribution: Contribution::PartialSig,
        };
        // Check Re + e·a·g'·P − s·G = ∞ with Re = ±(R1 + b·R2), using cached a·P.
        let (r1, r2) = pubnonce.points();
        let negate_nonce = !self.r_even;
        let mut terms: Vec<PublicKey> = Vec::with_capacity(3);
        terms.push(if negate_nonce { r1.negate() } else { r1 });
        if let Ok(p) = r2.mul_tweak(&self.b.negate_if(negate_nonce).tweak()) {
            terms.push(p);
        }
        let challenge = self.e.negate_if(self.key_agg.signing_key_negated());
        if let Some(ap) = self.key_agg.weighted_key(index) {
            if let Ok(p) = ap.mul_tweak(&challenge.tweak()) {
                terms.push(p);
            }
        }
        let refs: Vec<&PublicKey> = terms.iter().collect();
        let s = psig.scalar();
        let valid = match PublicKey::combine_keys(&refs) {
            // The sum is infinity: valid only if s·G is too, i.e. s = 0.
            Err(_) => s.is_zero(),
            // tweak-add fails exactly when the result is infinity, i.e. sum = s·G.
            Ok(sum) => sum.add_exp_tweak(&s.negate().tweak()).is_err(),
        };
        if valid { Ok(()) } else { Err(invalid) }
    }

    /// BIP327 PartialSigVerify over encodings for the signer at `index` of the key list: parses
    /// that signer's `pubnonce` and `psig` and verifies them against this session.
    ///
    /// Every failure caused by the signer already names it ([`Culprit::Signer`]`(index)`), so
    /// no [`Error::blame_signer`] is needed: an invalid `pubnonce` is blamed as
    /// [`Contribution::PubNonce`], a `psig` that is `>= n` or does not verify as
    /// [`Contribution::PartialSig`]. The public nonce is checked first, as in BIP327
    /// PartialSigVerify, whose NonceAgg parses it before the partial signature is read. An
    /// `index` outside the key list is [`Error::SignerIndexOutOfRange`].
    pub fn verify_partial_bytes(
        &self,
        index: usize,
        psig: &[u8; 32],
        pubnonce: &[u8; 66],
    ) -> Result<()> {
        self.check_index(index)?;
        let pubnonce = PubNonce::from_bytes(pubnonce).map_err(|e| e.blame_signer(index))?;
        let psig = PartialSignature::from_bytes(psig).map_err(|e| e.blame_signer(index))?;
        self.verify_partial(index, &psig, &pubnonce)
    }

    /// BIP327 PartialSigAgg over encodings: one partial signature per signer, in key-list order,
    /// summed into a BIP340 signature without verifying it.
    ///
    /// As BIP327 says, a value `>= n` fails and blames its signer ([`Culprit::Signer`] with
    /// [`Contribution::PartialSig`]; the first such in index order), so no
    /// [`Error::blame_signer`] is needed. A count other than the number of signers is
    /// [`Error::LengthMismatch`].
    pub fn aggregate_bytes(&self, psigs: &[[u8; 32]]) -> Result<schnorr::Signature> {
        self.check_len(psigs.len())?;
        let psigs = psigs
            .iter()
            .enumerate()
            .map(|(i, p)| PartialSignature::from_bytes(p).map_err(|e| e.blame_signer(i)))
            .collect::<Result<Vec<_>>>()?;
        self.aggregate(&psigs)
    }

    /// BIP327 PartialSigAgg: sums one partial signature per signer (in key-list order) into a
    /// BIP340 signature, without verifying it.
    pub fn aggregate(&self, psigs: &[PartialSignature]) -> Result<schnorr::Signature> {
        let mut s = Scalar::sum(psigs.iter().map(PartialSignature::scalar));
        // tacc is public (zero without tweaks): skip the multiplication then.
        if !self.key_agg.tacc().is_zero() {
            let q_negated = !self.key_agg.has_even_y();
            let etacc = self.e.mul(&self.key_agg.tacc().negate_if(q_negated));
            s = s.add(&etacc);
        }
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&self.r_x);
        sig[32..].copy_from_slice(&s.to_bytes());
        Ok(schnorr::Signature::from_byte_array(sig))
    }

    /// The coordinator's fast path: aggregate, verify the final signature once, and only if it
    /// fails verify every partial signature to name the culprits.
    ///
    /// When the final signature fails:
    /// - some partial signatures do not verify: [`Error::InvalidPartialSignatures`] names every
    ///   such signer;
    /// - all verify, but this session's aggregate nonce is not the sum of `pubnonces`: the
    ///   aggregator is blamed ([`Culprit::Aggregator`], [`Contribution::AggNonce`]);
    /// - all verify and the aggregate nonce is their sum, but the nonces cancel out (BIP327's
    ///   fallback to `R = G`, e.g. both halves of the aggregate nonce infinity):
    ///   [`Error::FinalNonceInfinity`], which blames nobody; the aggregator summed correctly.
    pub fn aggregate_and_verify(
        &self,
        psigs: &[PartialSignature],
        pubnonces: &[PubNonce],
    ) -> Result<schnorr::Signature> {
        let n = self.key_agg.len();
        self.check_len(psigs.len())?;
        self.check_len(pubnonces.len())?;
        let sig = self.aggregate(psigs)?;
        if self.verify_signature(&sig).is_ok() {
            return Ok(sig);
        }
        let signers: Vec<usize> = (0..n)
            .filter(|&i| self.verify_partial(i, &psigs[i], &pubnonces[i]).is_err())
            .collect();
        if signers.is_empty() {
            return Err(self.fault_with_valid_partials(pubnonces));
        }
        Err(Error::InvalidPartialSignatures { signers })
    }

    /// Whose fault it is that valid partial signatures sum to an invalid signature.
    fn fault_with_valid_partials(&self, pubnonces: &[PubNonce]) -> Error {
        if AggNonce::aggregate(pubnonces) != self.aggnonce {
            // The aggregate nonce is not the sum of these public nonces.
            Error::InvalidContribution {
                culprit: Culprit::Aggregator,
                contribution: Contribution::AggNonce,
            }
        } else if self.r_infinite {
            // The sum is right and `R1 + b·R2` is infinity: the signatures were made for R = G,
            // which the nonces do not add up to. Only signers who know each other's secret
            // nonces can make every partial signature verify here.
            Error::FinalNonceInfinity
        } else {
            // Not reachable: with the right aggregate nonce and a finite final nonce, valid
            // partial signatures sum to a valid signature. Blame nobody.
            Error::InvalidSignature
        }
    }

    fn check_index(&self, index: usize) -> Result<()> {
        let len = self.key_agg.len();
        if index >= len {
            return Err(Error::SignerIndexOutOfRange { index, len });
        }
        Ok(())
    }

    fn check_len(&self, got: usize) -> Result<()> {
        let expected = self.key_agg.len();
        if got != expected {
            return Err(Error::LengthMismatch { expected, got });
        }
        Ok(())
    }

    /// Verifies a final signature on this session's message under its aggregate key.
    pub fn verify_signature(&self, sig: &schnorr::Signature) -> Result<()> {
        verify_signature(sig, &self.msg, &self.key_agg.x_only_key())
    }
}

/// BIP340 verification of a final signature on a message of any length.
pub fn verify_signature(
    sig: &schnorr::Signature,
    msg: &[u8],
    pubkey: &XOnlyPublicKey,
) -> Result<()> {
    schnorr::verify(sig, msg, pubkey).map_err(|_| Error::InvalidSignature)
}

/// BIP327 DeterministicSign: a stateless signer that derives its nonce from its key, the other
/// signers' aggregate nonce, the aggregate key and the message. It must sign last (after
/// `aggothernonce` is fixed). Returns its public nonce and partial signature.
pub fn deterministic_sign(
    sk: &SecretKey,
    aggothernonce: &[u8; 66],
    key_agg: &KeyAggContext,
    msg: &[u8],
    rand: Option<&[u8; 32]>,
) -> Result<(PubNonce, PartialSignature)> {
    let mut sk_prime = Zeroizing::new(sk.to_secret_bytes());
    if let Some(rand) = rand {
        let mut h = hash::musig_aux();
        h.update(rand);
        for (s, m) in sk_prime.iter_mut().zip(hash::finish(h)) {
            *s ^= m;
        }
    }
    let mut h = hash::musig_deterministic_nonce();
    h.update(&sk_prime[..]);
    h.update(aggothernonce);
    h.update(key_agg.x_only_bytes());
    h.update((msg.len() as u64).to_be_bytes());
    h.update(msg);
    let derive = |i: u8| {
        let mut hi = h.clone();
        hi.update([i]);
        Zeroizing::new(Scalar::reduce(hash::finish(hi)))
    };
    let pk = crate::blinded::generator_mul(sk);
    let (secnonce, pubnonce) = secret_nonce_pair(derive(0), derive(1), pk)?;
    // NonceAgg parses every input strictly, so neither half of aggothernonce may be infinity.
    let others = PubNonce::from_bytes(aggothernonce).map_err(|_| Error::InvalidContribution {
        culprit: Culprit::Aggregator,
        contribution: Contribution::AggOtherNonce,
    })?;
    let aggnonce = AggNonce::aggregate(&[pubnonce, others]);
    let session = SessionContext::new(key_agg, &aggnonce, msg);
    let (k1, k2) = secnonce.scalars()?;
    drop(secnonce);
    let index = key_agg.index_of(&pk).ok_or(Error::SignerKeyNotInList)?;
    let d =
        Zeroizing::new(Scalar::from_bytes(sk.to_secret_bytes()).ok_or(Error::InvalidSecretKey)?);
    let psig = session.sign_with_scalars(k1, k2, &d, index)?;
    Ok((pubnonce, psig))
}
