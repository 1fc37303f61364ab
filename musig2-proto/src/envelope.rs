//! Envelopes: every message a signer acts on, signed by its sender's key.

use std::sync::Arc;

use secp256k1::Keypair;
use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;
use crate::announcement::{FrameRef, Topology, VerifiedAnnouncement};
use crate::auth::{Auth, AuthState, Batch, Sealed};
use crate::error::ProtoError;
use crate::frame::{Frame, Limits, encode_frame};
use crate::hash::{Tag, tagged_encoding};
use crate::types::{
    AggNonceBytes, Attempt, NonceCommitment, PartialSigBytes, PeerIdBytes, PubNonceBytes, SeqNo,
    SessionId, Signature64, SignerIndex, byte_array, byte_vec,
};

/// Why a signer aborts a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AbortReason {
    /// A phase deadline passed without all contributions.
    Timeout,
    /// The session expired.
    Expired,
    /// A signer sent an invalid public nonce.
    InvalidNonce,
    /// A nonce reveal did not match its commitment.
    CommitmentMismatch,
    /// A signer sent an invalid partial signature.
    InvalidPartialSig,
    /// The aggregate nonce did not match the signed nonces.
    InvalidAggregateNonce,
    /// A signer sent two different values for the same contribution.
    Equivocation,
    /// Every coordinator candidate the failover order allows missed its deadline (star
    /// aggregation); the blamed signer is the last of them.
    FailoverExhausted,
    /// The signer's operator or application cancelled.
    Cancelled,
    /// An internal error on the aborting node.
    Internal,
    /// The announcement lists, at the aborting signer's index, a peer id that is not the one it
    /// speaks from (the creator misrouted it); the signer refuses the session and blames the
    /// creator.
    Misrouted,
    /// The named signer lost, in a crash or a restore, a nonce it had sent, and the session has
    /// no attempt left to start again with fresh nonces (not equivocation: it never signed
    /// twice).
    Restarted,
    /// The named signer sent a failover claim it had no right to: for a position in the
    /// election order that is not its own or past the announcement's `max_failovers`, or
    /// earlier than any honest claim can be.
    InvalidClaim,
}

/// Maximum length of the opaque receipt in [`Body::BroadcastConfirmed`].
pub const MAX_RECEIPT_BYTES: usize = 256;

/// The payload of an envelope.
///
/// The variant order is part of the wire format (the tag is the variant index); append new
/// variants at the end only, with a version bump.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Binds the sender's signer index to the peer id it speaks from.
    Join {
        /// The sender's peer id.
        peer_id: PeerIdBytes,
    },
    /// Round 0: a commitment to the public nonce the sender will reveal.
    NonceCommit {
        /// The signing attempt.
        attempt: Attempt,
        /// See [`NonceCommitment::compute`].
        commitment: NonceCommitment,
    },
    /// Round 1: the sender's public nonces (the reveal, when commitments are on), one per
    /// message of the announcement, in its order.
    Nonce {
        /// The signing attempt.
        attempt: Attempt,
        /// The BIP327 public nonces, one per message.
        pub_nonces: Vec<PubNonceBytes>,
    },
    /// Round 2: the sender's partial signatures, one per message.
    PartialSig {
        /// The signing attempt.
        attempt: Attempt,
        /// The BIP327 partial signatures, one per message.
        partial_sigs: Vec<PartialSigBytes>,
        /// The aggregate nonces the signatures were made under, named by
        /// [`Body::aggregate_ref`]: required in star (ADR 0011), and by a mesh node since ADR
        /// 0023 (one without it, as mesh sent before, still verifies here, for old stores and
        /// transcripts). A receiver judges a partial signature only under its own aggregate.
        aggregate: Option<AggregateRef>,
    },
    /// Star topology: the coordinator sends the aggregate nonces, and commits to the exact set
    /// of signed nonces it summed (revealed as [`Body::NonceSet`] only when the session fails).
    AggregateNonce {
        /// The signing attempt.
        attempt: Attempt,
        /// The BIP327 aggregate nonce of each message (sum of the signers' public nonces for it).
        agg_nonces: Vec<AggNonceBytes>,
        /// [`Body::nonce_set_digest`] of the signers' signed nonces it summed.
        nonce_set: NonceSetDigest,
    },
    /// The final BIP340 signatures, one per message.
    FinalSignature {
        /// The signing attempt that produced them.
        attempt: Attempt,
        /// The 64-byte BIP340 signatures, one per message.
        signatures: Vec<Signature64>,
    },
    /// The coordinator performed the broadcast action.
    BroadcastConfirmed {
        /// The signing attempt.
        attempt: Attempt,
        /// Opaque application receipt (e.g. a txid), at most [`MAX_RECEIPT_BYTES`].
        #[serde(with = "receipt")]
        receipt: Vec<u8>,
    },
    /// A backup claims the coordinator role after the previous one missed its deadline.
    FailoverClaim {
        /// The signing attempt.
        attempt: Attempt,
        /// The claimant's position in the election order (0 is the first coordinator).
        rank: u16,
    },
    /// The sender aborts the session.
    Abort {
        /// Why.
        reason: AbortReason,
        /// The signer the sender blames, if any.
        blamed: Option<SignerIndex>,
    },
    /// The sender restarted (e.g. after a crash) and starts a new attempt with fresh nonces.
    Restart {
        /// The new attempt number.
        attempt: Attempt,
    },
    /// Star topology, on failure: the coordinator reveals the signed nonces its
    /// AggregateNonce committed to, so every signer can assign blame itself (ADR 0011).
    NonceSet {
        /// The signing attempt.
        attempt: Attempt,
        /// Every signer's signed Nonce envelope, one per signer, in signer index order.
        nonces: Vec<SignedNonce>,
    },
    /// Mesh topology: the sender lacks a contribution the recipient has shown it holds (a
    /// reveal sent while the sender still waits for a commitment, a partial signature while
    /// it waits for a nonce) and asks for the recipient's signed set of that kind. Answered
    /// at most once per signer, attempt and kind (ADR 0023).
    Request {
        /// The signing attempt.
        attempt: Attempt,
        /// Which set is asked for.
        set: RequestedSet,
    },
}

/// The set a [`Body::Request`] asks for: every signer's signed envelope of that kind that the
/// recipient holds (the requester's own left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RequestedSet {
    /// The nonce commitments (round 0).
    Commitments,
    /// The public nonces (round 1).
    Nonces,
}

/// A digest of a star coordinator's signed nonce set ([`Body::nonce_set_digest`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NonceSetDigest(#[serde(with = "byte_array")] pub [u8; 32]);

/// What a star partial signature names as the aggregate nonces it was made under
/// ([`Body::aggregate_ref`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AggregateRef(#[serde(with = "byte_array")] pub [u8; 32]);

mod receipt {
    use super::*;
    use crate::error::de_error;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        byte_vec::serialize(v, s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let v = byte_vec::deserialize(d)?;
        if v.len() > MAX_RECEIPT_BYTES {
            return Err(de_error(ProtoError::OutOfRange {
                field: "broadcast receipt",
                reason: "at most 256 bytes",
            }));
        }
        Ok(v)
    }
}

impl Body {
    /// A short name for the body kind (for logs and errors).
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Join { .. } => "join",
            Body::NonceCommit { .. } => "nonce-commit",
            Body::Nonce { .. } => "nonce",
            Body::PartialSig { .. } => "partial-sig",
            Body::AggregateNonce { .. } => "aggregate-nonce",
            Body::FinalSignature { .. } => "final-signature",
            Body::BroadcastConfirmed { .. } => "broadcast-confirmed",
            Body::FailoverClaim { .. } => "failover-claim",
            Body::Abort { .. } => "abort",
            Body::Restart { .. } => "restart",
            Body::NonceSet { .. } => "nonce-set",
            Body::Request { .. } => "request",
        }
    }

    /// Builds the star coordinator's two bodies from every signer's verified Nonce envelope,
    /// in signer index order: the [`Body::NonceSet`] (kept, revealed on failure) and the
    /// [`Body::AggregateNonce`] that commits to it, with each message's aggregate (BIP327
    /// NonceAgg). Returns `(aggregate_nonce, nonce_set)`.
    ///
    /// Fails if `nonces` is not exactly one Nonce envelope per signer (index `i` at position
    /// `i`) of `attempt`.
    pub fn aggregate_nonce(
        announcement: &VerifiedAnnouncement,
        attempt: Attempt,
        nonces: &[VerifiedEnvelope],
    ) -> Result<(Body, Body), ProtoError> {
        if nonces.len() != announcement.signer_count() {
            return Err(ProtoError::LimitExceeded {
                what: "nonces for the aggregate (must equal the signer count)",
                actual: nonces.len(),
                max: announcement.signer_count(),
            });
        }
        let k = announcement.announcement().message_count();
        let mut relayed = Vec::with_capacity(nonces.len());
        for (i, env) in nonces.iter().enumerate() {
            let e = env.envelope();
            let (a, pub_nonces) = match &e.body {
                Body::Nonce {
                    attempt,
                    pub_nonces,
                } => (*attempt, pub_nonces),
                _ => {
                    return Err(ProtoError::UnexpectedFrame {
                        expected: "nonce envelope",
                        found: e.body.kind(),
                    });
                }
            };
            if e.signer.as_usize() != i || e.session_id != announcement.session_id() {
                return Err(ProtoError::AggregateNonceIncomplete { signer: e.signer });
            }
            if a != attempt {
                return Err(ProtoError::AttemptMismatch {
                    signer: e.signer,
                    relayed: e.signer,
                    expected: attempt.get(),
                    found: a.get(),
                });
            }
            check_count(e.signer, "public nonces", k, pub_nonces.len())?;
            relayed.push(SignedNonce {
                signer: e.signer,
                seq: e.seq,
                timestamp_ms: e.timestamp_ms,
                attempt: a,
                pub_nonces: pub_nonces.clone(),
                auth: env.signed.auth().clone(),
            });
        }
        let agg_nonces = Body::sum_nonce_set(&relayed, k).ok_or(ProtoError::OutOfRange {
            field: "nonces",
            reason: "at least one nonce is required",
        })?;
        let nonce_set = Body::nonce_set_digest(&announcement.session_id(), attempt, &relayed);
        Ok((
            Body::AggregateNonce {
                attempt,
                agg_nonces,
                nonce_set,
            },
            Body::NonceSet {
                attempt,
                nonces: relayed,
            },
        ))
    }

    /// `TH("musig2-p2p/nonce-set", session_id || attempt || vec<signed-nonce>)`: what a star
    /// AggregateNonce commits to.
    pub fn nonce_set_digest(
        session_id: &SessionId,
        attempt: Attempt,
        nonces: &[SignedNonce],
    ) -> NonceSetDigest {
        NonceSetDigest(tagged_encoding(
            Tag::NonceSet,
            &(session_id, attempt, nonces),
        ))
    }

    /// `TH("musig2-p2p/aggregate-nonce", session_id || attempt || vec<[66]>)`: how a star
    /// partial signature names the aggregate nonces it was made under.
    pub fn aggregate_ref(
        session_id: &SessionId,
        attempt: Attempt,
        agg_nonces: &[AggNonceBytes],
    ) -> AggregateRef {
        AggregateRef(tagged_encoding(
            Tag::AggregateNonce,
            &(session_id, attempt, agg_nonces),
        ))
    }

    /// Each message's aggregate nonce (BIP327 NonceAgg) over a nonce set, or `None` if the set
    /// is empty or a list is shorter than `k`.
    pub fn sum_nonce_set(nonces: &[SignedNonce], k: usize) -> Option<Vec<AggNonceBytes>> {
        aggregate_columns(nonces, k)
    }
}

/// Each message's aggregate nonce (BIP327 NonceAgg over the signers' nonces for it).
fn aggregate_columns(nonces: &[SignedNonce], k: usize) -> Option<Vec<AggNonceBytes>> {
    (0..k)
        .map(|m| {
            let column: Option<Vec<PubNonceBytes>> = nonces
                .iter()
                .map(|sn| sn.pub_nonces.get(m).copied())
                .collect();
            AggNonceBytes::aggregate(&column?)
        })
        .collect()
}

/// A per-message list must have one entry per message of the announcement.
fn check_count(
    signer: SignerIndex,
    what: &'static str,
    expected: usize,
    found: usize,
) -> Result<(), ProtoError> {
    if expected == found {
        Ok(())
    } else {
        Err(ProtoError::WrongCount {
            signer,
            what,
            expected,
            found,
        })
    }
}

impl NonceCommitment {
    /// `tagged_hash("musig2-p2p/nonce-commitment", session_id || signer || attempt ||
    /// pub_nonces)` over the canonical (postcard) encoding of the tuple.
    pub fn compute(
        session_id: &SessionId,
        signer: SignerIndex,
        attempt: Attempt,
        pub_nonces: &[PubNonceBytes],
    ) -> NonceCommitment {
        NonceCommitment::from_hash(tagged_encoding(
            Tag::NonceCommitment,
            &(session_id, signer, attempt, pub_nonces),
        ))
    }

    /// Checks a reveal against this commitment; the error names the signer.
    pub fn check_reveal(
        &self,
        session_id: &SessionId,
        signer: SignerIndex,
        attempt: Attempt,
        pub_nonces: &[PubNonceBytes],
    ) -> Result<(), ProtoError> {
        if NonceCommitment::compute(session_id, signer, attempt, pub_nonces) == *self {
            Ok(())
        } else {
            Err(ProtoError::CommitmentMismatch { signer })
        }
    }

    /// Checks a verified Nonce envelope against a verified NonceCommit envelope from the same
    /// signer, session and attempt.
    pub fn check_reveal_envelopes(
        commit: &VerifiedEnvelope,
        reveal: &VerifiedEnvelope,
    ) -> Result<(), ProtoError> {
        let c = commit.envelope();
        let r = reveal.envelope();
        match (&c.body, &r.body) {
            (
                Body::NonceCommit {
                    attempt: ca,
                    commitment,
                },
                Body::Nonce {
                    attempt: ra,
                    pub_nonces,
                },
            ) if c.signer == r.signer && c.session_id == r.session_id && ca == ra => {
                commitment.check_reveal(&r.session_id, r.signer, *ra, pub_nonces)
            }
            _ => Err(ProtoError::CommitmentMismatch { signer: r.signer }),
        }
    }
}

/// A signer's Nonce envelope as relayed inside [`Body::AggregateNonce`].
///
/// The version and session id are those of the enclosing envelope (the signature covers them:
/// it is the original Nonce envelope's signature), so they are not repeated, and a relayed nonce
/// cannot itself contain envelopes (no recursion on the wire).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedNonce {
    /// The signer whose nonce this is.
    pub signer: SignerIndex,
    /// Its sequence number in the original envelope.
    pub seq: SeqNo,
    /// Its timestamp in the original envelope.
    pub timestamp_ms: u64,
    /// The attempt.
    pub attempt: Attempt,
    /// The public nonces, one per message.
    pub pub_nonces: Vec<PubNonceBytes>,
    /// The original envelope's authentication.
    pub auth: Auth,
}

impl SignedNonce {
    fn as_envelope(&self, version: u8, session_id: SessionId) -> Envelope {
        Envelope {
            version,
            session_id,
            signer: self.signer,
            seq: self.seq,
            timestamp_ms: self.timestamp_ms,
            body: Body::Nonce {
                attempt: self.attempt,
                pub_nonces: self.pub_nonces.clone(),
            },
        }
    }

    /// Rebuilds the original signed Nonce envelope (for feeding it to the session machine).
    pub fn to_signed_envelope(&self, session_id: SessionId) -> SignedEnvelope {
        SignedEnvelope {
            envelope: Arc::new(self.as_envelope(PROTOCOL_VERSION, session_id)),
            auth: AuthState::ready(self.auth.clone()),
        }
    }
}

/// The signed fields of an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    version: u8,
    session_id: SessionId,
    signer: SignerIndex,
    seq: SeqNo,
    timestamp_ms: u64,
    body: Body,
}

impl Envelope {
    /// Signs a new envelope (BIP340 with fresh auxiliary randomness) over
    /// `tagged_hash("musig2-p2p/envelope", canonical encoding of every other field)`.
    ///
    /// `session` is a [`SessionId`] or `&VerifiedAnnouncement`. This does not check that
    /// `keypair` is the key at `signer`; [`VerifiedAnnouncement::sign_envelope`] does.
    pub fn sign(
        session: impl Into<SessionId>,
        signer: SignerIndex,
        seq: SeqNo,
        timestamp_ms: u64,
        body: Body,
        keypair: &Keypair,
    ) -> SignedEnvelope {
        Self::sign_with_aux_rand(
            session,
            signer,
            seq,
            timestamp_ms,
            body,
            keypair,
            &rand::random(),
        )
    }

    /// Like [`Envelope::sign`] with caller-chosen auxiliary randomness (deterministic output,
    /// for test vectors).
    pub fn sign_with_aux_rand(
        session: impl Into<SessionId>,
        signer: SignerIndex,
        seq: SeqNo,
        timestamp_ms: u64,
        body: Body,
        keypair: &Keypair,
        aux_rand: &[u8; 32],
    ) -> SignedEnvelope {
        let envelope = Envelope::current(session.into(), signer, seq, timestamp_ms, body);
        let msg = envelope.signing_hash();
        let signature = crate::auth::sign_counted(&msg, keypair, aux_rand);
        SignedEnvelope {
            envelope: Arc::new(envelope),
            auth: AuthState::ready(Auth::direct(signature)),
        }
    }

    /// A new envelope whose signature is made later (ADR 0016): by
    /// [`SignedEnvelope::seal_batch`], one signature over the root of a tree of this and the
    /// author's other pending envelopes, or, if nothing sealed it first, a signature over it
    /// alone when its authentication is first needed. With `batchable` false it is always
    /// signed alone (for sessions whose frames leave no room for a path).
    pub fn sign_batchable(
        session: impl Into<SessionId>,
        signer: SignerIndex,
        seq: SeqNo,
        timestamp_ms: u64,
        body: Body,
        keypair: Arc<Keypair>,
        batchable: bool,
    ) -> SignedEnvelope {
        let envelope = Envelope::current(session.into(), signer, seq, timestamp_ms, body);
        let leaf = envelope.signing_hash();
        SignedEnvelope {
            envelope: Arc::new(envelope),
            auth: AuthState::pending(leaf, keypair, batchable),
        }
    }

    /// An envelope of this protocol version.
    fn current(
        session_id: SessionId,
        signer: SignerIndex,
        seq: SeqNo,
        timestamp_ms: u64,
        body: Body,
    ) -> Envelope {
        Envelope {
            version: PROTOCOL_VERSION,
            session_id,
            signer,
            seq,
            timestamp_ms,
            body,
        }
    }

    /// The 32-byte tagged hash the sender signs.
    pub fn signing_hash(&self) -> [u8; 32] {
        tagged_encoding(Tag::Envelope, self)
    }

    /// Protocol version.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Session id.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// Claimed sender index.
    pub fn signer(&self) -> SignerIndex {
        self.signer
    }

    /// Sender's sequence number.
    pub fn seq(&self) -> SeqNo {
        self.seq
    }

    /// Sender's timestamp (milliseconds since the UNIX epoch).
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// The payload.
    pub fn body(&self) -> &Body {
        &self.body
    }
}

impl From<&SessionId> for SessionId {
    fn from(id: &SessionId) -> SessionId {
        *id
    }
}

/// An envelope with its sender's authentication ([`Auth`]: a signature over it alone, or over
/// a batch it belongs to), as carried on the wire. Not trusted until verified.
///
/// One made by [`Envelope::sign_batchable`] is signed later: by [`SignedEnvelope::seal_batch`]
/// together with its author's other pending envelopes, or alone the first time its
/// authentication is needed (encoding it, [`SignedEnvelope::auth`], verifying it). Its clones
/// share that state, so every copy ends up with the same authentication.
#[derive(Clone, Debug)]
pub struct SignedEnvelope {
    // Shared: a received envelope is kept as evidence, relayed and persisted, and each of those
    // holds a copy.
    envelope: Arc<Envelope>,
    auth: AuthState,
}

impl PartialEq for SignedEnvelope {
    /// Same fields and same authentication; two copies of one pending envelope are equal, and a
    /// pending envelope not yet signed equals no signed one.
    fn eq(&self, other: &Self) -> bool {
        self.envelope == other.envelope && self.auth.same_as(&other.auth)
    }
}

impl Eq for SignedEnvelope {}

impl Serialize for SignedEnvelope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = serializer.serialize_struct("SignedEnvelope", 2)?;
        st.serialize_field("envelope", &*self.envelope)?;
        st.serialize_field("auth", self.auth())?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for SignedEnvelope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "SignedEnvelope")]
        struct Wire {
            envelope: Envelope,
            auth: Auth,
        }
        let wire = Wire::deserialize(deserializer)?;
        Ok(SignedEnvelope {
            envelope: Arc::new(wire.envelope),
            auth: AuthState::ready(wire.auth),
        })
    }
}

impl SignedEnvelope {
    /// An envelope with an authentication made elsewhere (e.g. rebuilt from stored parts).
    pub fn from_parts(envelope: Envelope, auth: Auth) -> SignedEnvelope {
        SignedEnvelope {
            envelope: Arc::new(envelope),
            auth: AuthState::ready(auth),
        }
    }

    /// The (unverified) signed fields.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The authentication, signing this envelope alone first if it is still pending.
    pub fn auth(&self) -> &Auth {
        self.auth.auth()
    }

    pub(crate) fn auth_state(&self) -> &AuthState {
        &self.auth
    }

    /// The authentication if there is one yet (`None` for a pending envelope not yet signed).
    pub fn sealed_auth(&self) -> Option<&Auth> {
        self.auth.sealed()
    }

    /// The BIP340 signature that authenticates it (over it alone, or over its batch's root),
    /// signing first if it is still pending.
    pub fn signature(&self) -> &[u8; 64] {
        self.auth().signature()
    }

    /// The signing hash ([`Envelope::signing_hash`]), without re-encoding a pending envelope.
    pub fn signing_hash(&self) -> [u8; 32] {
        self.auth
            .pending_leaf()
            .unwrap_or_else(|| self.envelope.signing_hash())
    }

    /// Signs every still-pending envelope among `envelopes` (see [`Envelope::sign_batchable`]):
    /// one BIP340 signature per author and per [`crate::MAX_BATCH_LEAVES`] envelopes, each
    /// envelope carrying its path to the signed root. Signed envelopes are left as they are.
    pub fn seal_batch<'a>(envelopes: impl IntoIterator<Item = &'a SignedEnvelope>) -> Sealed {
        Self::seal(envelopes, None)
    }

    /// [`SignedEnvelope::seal_batch`] with fixed BIP340 auxiliary randomness (for reproducible
    /// examples and tests; nodes use fresh randomness).
    pub fn seal_batch_with_aux_rand<'a>(
        envelopes: impl IntoIterator<Item = &'a SignedEnvelope>,
        aux_rand: &[u8; 32],
    ) -> Sealed {
        Self::seal(envelopes, Some(aux_rand))
    }

    fn seal<'a>(
        envelopes: impl IntoIterator<Item = &'a SignedEnvelope>,
        aux: Option<&[u8; 32]>,
    ) -> Sealed {
        let mut batch = Batch::new();
        for e in envelopes {
            batch.add_envelope(e);
        }
        match aux {
            Some(aux) => batch.seal_with_aux_rand(aux),
            None => batch.seal(),
        }
    }

    /// Encodes as a complete frame.
    pub fn to_frame_bytes(&self) -> Vec<u8> {
        encode_frame(FrameRef::Envelope(self))
    }

    /// Decodes a frame that must hold a single envelope (see [`crate::decode_frame`]).
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, ProtoError> {
        match crate::frame::decode_frame(bytes, limits)? {
            Frame::Envelope(e) => Ok(e),
            other => Err(ProtoError::UnexpectedFrame {
                expected: "envelope",
                found: other.kind(),
            }),
        }
    }

    /// Verifies the envelope against the session's verified announcement: version, session id,
    /// that the signer index exists, the signature under that signer's key, and body rules
    /// (a Join's peer id matches the announced one, an Abort blames an existing index, one
    /// nonce, partial signature or final signature per message, a partial signature names its
    /// aggregate nonce in star and only there, an AggregateNonce or NonceSet only in star
    /// topology, a NonceSet carrying one correctly signed nonce list per signer). Whether an
    /// AggregateNonce's aggregates are the sum of the nonces it committed to is checked only
    /// against a revealed NonceSet, by the session (ADR 0011).
    pub fn verify(
        &self,
        announcement: &VerifiedAnnouncement,
    ) -> Result<VerifiedEnvelope, ProtoError> {
        let e = &self.envelope;
        check_addressed_to(e, announcement)?;
        let signing_hash = verify_sig(announcement, e, self.signing_hash(), self.auth())?;
        check_body(e, announcement)?;
        Ok(VerifiedEnvelope {
            signed: self.clone(),
            signing_hash,
        })
    }

    /// An envelope this process made ([`Envelope::sign_batchable`]) with the key of its signer
    /// in `announcement`: every check of [`Self::verify`] but the signature's, which this
    /// process makes itself (now, or when a batch seals it). Any other envelope (received, or
    /// made with another key) is verified as [`Self::verify`] does.
    pub fn verified_own(
        &self,
        announcement: &VerifiedAnnouncement,
    ) -> Result<VerifiedEnvelope, ProtoError> {
        let e = &self.envelope;
        let ours = self
            .auth
            .made_with()
            .is_some_and(|key| announcement.x_only(e.signer) == Some(&key));
        if !ours {
            return self.verify(announcement);
        }
        check_addressed_to(e, announcement)?;
        check_body(e, announcement)?;
        Ok(VerifiedEnvelope {
            signed: self.clone(),
            signing_hash: self.signing_hash(),
        })
    }

    /// Every check of [`Self::verify`] except the signature's: for a receiver that acts on an
    /// envelope its transport authenticated and checks the signature only if the envelope
    /// becomes evidence (ADR 0022). What passes is not proof of anything to anyone else.
    pub fn check_unsigned(&self, announcement: &VerifiedAnnouncement) -> Result<(), ProtoError> {
        check_addressed_to(&self.envelope, announcement)?;
        check_body(&self.envelope, announcement)
    }
}

/// Version, signer index and session id: that `e` belongs to the announced session.
fn check_addressed_to(e: &Envelope, announcement: &VerifiedAnnouncement) -> Result<(), ProtoError> {
    check_header(e.version, e.signer, announcement)?;
    if e.session_id != announcement.session_id() {
        return Err(ProtoError::WrongSession { signer: e.signer });
    }
    Ok(())
}

fn check_header(
    version: u8,
    signer: SignerIndex,
    announcement: &VerifiedAnnouncement,
) -> Result<(), ProtoError> {
    if version != PROTOCOL_VERSION {
        return Err(ProtoError::UnsupportedVersion {
            version,
            supported: PROTOCOL_VERSION,
        });
    }
    if signer.as_usize() >= announcement.signer_count() {
        return Err(ProtoError::UnknownSigner {
            index: signer.get(),
            signers: announcement.signer_count(),
        });
    }
    Ok(())
}

fn verify_sig(
    announcement: &VerifiedAnnouncement,
    e: &Envelope,
    hash: [u8; 32],
    auth: &Auth,
) -> Result<[u8; 32], ProtoError> {
    let key = announcement
        .x_only(e.signer)
        .ok_or(ProtoError::UnknownSigner {
            index: e.signer.get(),
            signers: announcement.signer_count(),
        })?;
    if !auth.verifies(key, hash) {
        return Err(ProtoError::BadEnvelopeSignature { signer: e.signer });
    }
    Ok(hash)
}

fn check_body(e: &Envelope, announcement: &VerifiedAnnouncement) -> Result<(), ProtoError> {
    let n = announcement.signer_count();
    let k = announcement.announcement().message_count();
    match &e.body {
        Body::Nonce { pub_nonces, .. } => {
            check_count(e.signer, "public nonces", k, pub_nonces.len())?;
        }
        Body::PartialSig {
            partial_sigs,
            aggregate,
            ..
        } => {
            // Required in star. In mesh a node requires it since ADR 0023 and refuses a
            // partial signature without it; one without it (as sent before) still verifies, so
            // stored sessions and transcripts made before stay readable.
            let star = announcement.announcement().policy.topology == Topology::Star;
            if star && aggregate.is_none() {
                return Err(ProtoError::AggregateBinding { signer: e.signer });
            }
            check_count(e.signer, "partial signatures", k, partial_sigs.len())?;
        }
        Body::FinalSignature { signatures, .. } => {
            check_count(e.signer, "final signatures", k, signatures.len())?;
        }
        Body::Join { peer_id } => {
            let announced = &announcement.announcement().signers[e.signer.as_usize()].peer_id;
            if let Some(expected) = announced {
                if expected != peer_id {
                    return Err(ProtoError::PeerIdMismatch { signer: e.signer });
                }
            }
        }
        Body::Abort {
            blamed: Some(blamed),
            ..
        } if blamed.as_usize() >= n => {
            return Err(ProtoError::BlamedOutOfRange {
                signer: e.signer,
                blamed: blamed.get(),
            });
        }
        Body::AggregateNonce { agg_nonces, .. } => {
            if announcement.announcement().policy.topology != Topology::Star {
                return Err(ProtoError::UnexpectedAggregateNonce { signer: e.signer });
            }
            check_count(e.signer, "aggregate nonces", k, agg_nonces.len())?;
        }
        Body::NonceSet { attempt, nonces } => {
            if announcement.announcement().policy.topology != Topology::Star {
                return Err(ProtoError::UnexpectedAggregateNonce { signer: e.signer });
            }
            if nonces.len() != n
                || nonces
                    .iter()
                    .enumerate()
                    .any(|(i, sn)| sn.signer.as_usize() != i)
            {
                return Err(ProtoError::AggregateNonceIncomplete { signer: e.signer });
            }
            for sn in nonces {
                // Counted before any signature check: a wrong count costs nothing to refuse.
                check_count(sn.signer, "relayed public nonces", k, sn.pub_nonces.len())?;
                if sn.attempt != *attempt {
                    return Err(ProtoError::AttemptMismatch {
                        signer: e.signer,
                        relayed: sn.signer,
                        expected: attempt.get(),
                        found: sn.attempt.get(),
                    });
                }
            }
            for sn in nonces {
                let relayed = sn.as_envelope(e.version, e.session_id);
                verify_sig(announcement, &relayed, relayed.signing_hash(), &sn.auth).map_err(
                    |_| ProtoError::RelayedNonceForged {
                        signer: e.signer,
                        relayed: sn.signer,
                    },
                )?;
            }
        }
        Body::Request { .. } if announcement.announcement().policy.topology != Topology::Mesh => {
            return Err(ProtoError::UnexpectedRequest { signer: e.signer });
        }
        _ => {}
    }
    Ok(())
}

/// An envelope whose signature verified under the key of its claimed signer index in a
/// verified announcement, and whose body passed the protocol's structural rules.
///
/// Only [`SignedEnvelope::verify`] creates one. Replay and phase checks (sequence windows,
/// timestamp skew, whether the body is expected now) are the session machine's job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedEnvelope {
    signed: SignedEnvelope,
    signing_hash: [u8; 32],
}

impl VerifiedEnvelope {
    /// The tagged hash its author signed ([`Envelope::signing_hash`]), computed once during
    /// verification.
    pub fn signing_hash(&self) -> [u8; 32] {
        self.signing_hash
    }

    /// The verified fields.
    pub fn envelope(&self) -> &Envelope {
        &self.signed.envelope
    }

    /// The authenticated sender.
    pub fn signer(&self) -> SignerIndex {
        self.signed.envelope.signer
    }

    /// The sender's sequence number.
    pub fn seq(&self) -> SeqNo {
        self.signed.envelope.seq
    }

    /// The sender's timestamp.
    pub fn timestamp_ms(&self) -> u64 {
        self.signed.envelope.timestamp_ms
    }

    /// The payload.
    pub fn body(&self) -> &Body {
        &self.signed.envelope.body
    }

    /// The signed form, for relaying (relayed envelopes stay verifiable by anyone).
    pub fn signed(&self) -> &SignedEnvelope {
        &self.signed
    }

    /// Consumes into the signed form.
    pub fn into_signed(self) -> SignedEnvelope {
        self.signed
    }
}
