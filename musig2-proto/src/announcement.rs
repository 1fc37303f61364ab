//! Session announcements: who signs what, under which policy, until when.

use std::sync::{Arc, OnceLock};

use secp256k1::{Keypair, PublicKey, XOnlyPublicKey};
use serde::{Deserialize, Serialize};

use crate::auth::{Auth, AuthState};
use crate::error::ProtoError;
use crate::frame::{Frame, Limits, encode_frame};
use crate::hash::{Tag, tagged, tagged_encoding};
use crate::types::{PeerIdBytes, SessionId, SignerIndex, Tweak, byte_array, byte_vec, pubkey33};
use crate::{PROTOCOL_VERSION, envelope};

/// Upper bound on a signed envelope's bytes besides its nonces (header, signature, framing),
/// used to check that a session's largest round frame fits [`Limits::max_frame_bytes`].
pub const ROUND_ENVELOPE_OVERHEAD: usize = 128;

/// How the coordinator (the signer that aggregates and broadcasts) is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ElectionMethod {
    /// Lowest compressed public key first.
    Lexicographic,
    /// Order by a hash of the session id and each key (not grindable by one party).
    HashBased,
    /// Signer index 0 first, then ascending.
    FirstSigner,
    /// The last signer index first, then descending.
    LastSigner,
}

/// Who sends what to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Topology {
    /// Every signer sends to every other signer.
    Mesh,
    /// Signers send to the coordinator, which distributes the signed nonces and the aggregate.
    Star,
}

/// Per-phase deadlines, in milliseconds. Each must be non-zero.
///
/// Two clocks: the *join window* (`join_ms`, human time: every signer reads the announcement and
/// joins within it, counted from `created_at_ms`) and the machine-time deadlines of the rounds
/// that follow. The session lives at most `join_ms + session_ms` after its creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Timeouts {
    /// Time every signer has to join, from the announcement's creation.
    pub join_ms: u64,
    /// Time allowed for the nonce (and nonce-commitment) exchange.
    pub nonce_ms: u64,
    /// Time allowed for the partial-signature exchange.
    pub partial_sig_ms: u64,
    /// Time the coordinator has to broadcast and confirm before the next backup takes over.
    pub broadcast_ms: u64,
    /// Time the rounds may take in all, after the join window.
    pub session_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            join_ms: 600_000,
            nonce_ms: 30_000,
            partial_sig_ms: 30_000,
            broadcast_ms: 60_000,
            session_ms: 600_000,
        }
    }
}

/// The session's rules, fixed by the creator and covered by the session id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Policy {
    /// Whether signers first exchange nonce commitments (round 0) before revealing nonces.
    pub nonce_commitment: bool,
    /// How the coordinator is elected.
    pub election: ElectionMethod,
    /// Mesh or star message flow.
    pub topology: Topology,
    /// Per-phase deadlines.
    pub timeouts: Timeouts,
    /// How many signing attempts the session may make in all, the first included. Each restart
    /// of a signer that lost a nonce it had sent, and each coordinator failover, starts a new
    /// attempt with fresh nonces on every node; past the last, the session aborts (0 counts
    /// as 1).
    pub max_attempts: u16,
    /// How many times the coordinator role may pass to the next signer in election order (a
    /// star aggregator that misses a phase deadline, or a coordinator that does not confirm the
    /// broadcast in time); the role never goes past position `max_failovers` of the order. A
    /// star failover also starts a new attempt, so `max_attempts` bounds it too. 0 (the default)
    /// turns failover off: then a timeout keeps naming who did not deliver, which a failover
    /// gives up (see ADR 0008).
    pub max_failovers: u16,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            nonce_commitment: true,
            election: ElectionMethod::HashBased,
            topology: Topology::Mesh,
            timeouts: Timeouts::default(),
            max_attempts: 3,
            max_failovers: 0,
        }
    }
}

/// One member of the signer set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignerInfo {
    /// The signer's key, used both for MuSig2 and to authenticate its envelopes.
    #[serde(with = "pubkey33")]
    pub key: PublicKey,
    /// The peer id the signer will speak from, when known in advance.
    pub peer_id: Option<PeerIdBytes>,
}

impl SignerInfo {
    /// A signer without a fixed peer id.
    pub fn new(key: PublicKey) -> Self {
        SignerInfo { key, peer_id: None }
    }
}

/// One message the session signs, with the tweaks of the key it is signed under.
///
/// A session signs one or more messages with the same signers in the same two rounds (e.g. the
/// BIP341 sighashes of every MuSig2 input of one transaction); each may be signed under a
/// differently tweaked aggregate key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageToSign {
    /// The message (any length up to [`Limits::max_message_bytes`]).
    #[serde(with = "byte_vec")]
    pub message: Vec<u8>,
    /// Tweaks applied to the aggregate key for this message, in order.
    pub tweaks: Vec<Tweak>,
}

impl MessageToSign {
    /// A message signed under the untweaked aggregate key.
    pub fn new(message: Vec<u8>) -> Self {
        MessageToSign {
            message,
            tweaks: Vec::new(),
        }
    }
}

/// The content of a session announcement (unsigned).
///
/// Fields are public for construction; everything is validated by [`Announcement::validate`],
/// which signing, decoding and verification all call.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Announcement {
    /// The signer set in BIP327 key order (the order used for key aggregation).
    pub signers: Vec<SignerInfo>,
    /// The messages to sign, 1 to [`Limits::max_messages`]; the session ends with one
    /// signature per message, in this order.
    pub messages: Vec<MessageToSign>,
    /// Index of the creator (who signs the announcement) in `signers`.
    pub creator: SignerIndex,
    /// The session's rules.
    pub policy: Policy,
    /// 32 random bytes so that two sessions with identical content get different ids.
    #[serde(with = "byte_array")]
    pub salt: [u8; 32],
    /// Creation time, milliseconds since the UNIX epoch.
    pub created_at_ms: u64,
    /// Expiry time, milliseconds since the UNIX epoch (exclusive).
    pub expires_at_ms: u64,
    /// A digest of the document the messages were derived from (e.g. a PSBT), so that every
    /// signer reviews the same one: a signer holding the document recomputes both the digest
    /// and the messages before joining.
    pub document_digest: Option<[u8; 32]>,
}

impl Announcement {
    /// A new announcement for one message, with a random salt, default policy, no tweaks and
    /// no peer ids.
    pub fn new(
        signers: Vec<PublicKey>,
        message: Vec<u8>,
        creator: SignerIndex,
        created_at_ms: u64,
        expires_at_ms: u64,
    ) -> Self {
        Announcement {
            signers: signers.into_iter().map(SignerInfo::new).collect(),
            messages: vec![MessageToSign::new(message)],
            creator,
            policy: Policy::default(),
            salt: rand::random(),
            created_at_ms,
            expires_at_ms,
            document_digest: None,
        }
    }

    /// Number of messages the session signs.
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    /// Checks everything that does not need a signature or a clock: signer count and limits,
    /// duplicate keys, creator index, message and tweak limits, validity window and timeouts.
    pub fn validate(&self, limits: &Limits) -> Result<(), ProtoError> {
        let n = self.signers.len();
        if n == 0 {
            return Err(ProtoError::OutOfRange {
                field: "signers",
                reason: "at least one signer is required",
            });
        }
        if n > limits.max_signers {
            return Err(ProtoError::LimitExceeded {
                what: "signers",
                actual: n,
                max: limits.max_signers,
            });
        }
        if n > usize::from(SignerIndex::MAX) + 1 {
            return Err(ProtoError::OutOfRange {
                field: "signers",
                reason: "at most 4096 signers",
            });
        }
        let k = self.messages.len();
        if k == 0 {
            return Err(ProtoError::OutOfRange {
                field: "messages",
                reason: "at least one message is required",
            });
        }
        if k > limits.max_messages {
            return Err(ProtoError::LimitExceeded {
                what: "messages",
                actual: k,
                max: limits.max_messages,
            });
        }
        for m in &self.messages {
            if m.message.len() > limits.max_message_bytes {
                return Err(ProtoError::LimitExceeded {
                    what: "message bytes",
                    actual: m.message.len(),
                    max: limits.max_message_bytes,
                });
            }
            if m.tweaks.len() > limits.max_tweaks {
                return Err(ProtoError::LimitExceeded {
                    what: "tweaks",
                    actual: m.tweaks.len(),
                    max: limits.max_tweaks,
                });
            }
        }
        // The largest frame a session needs carries every signer's nonces (a star aggregate
        // nonce, or a mesh partial signature with the nonces it was made under): it must fit.
        let round_frame =
            n.saturating_mul(k.saturating_mul(66).saturating_add(ROUND_ENVELOPE_OVERHEAD));
        if round_frame > limits.max_frame_bytes {
            return Err(ProtoError::LimitExceeded {
                what: "round frame bytes (signers x messages x 66, plus envelope overhead)",
                actual: round_frame,
                max: limits.max_frame_bytes,
            });
        }
        if self.creator.as_usize() >= n {
            return Err(ProtoError::UnknownSigner {
                index: self.creator.get(),
                signers: n,
            });
        }
        let mut keys: Vec<([u8; 33], usize)> = self
            .signers
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.serialize(), i))
            .collect();
        keys.sort_unstable();
        for pair in keys.windows(2) {
            if pair[0].0 == pair[1].0 {
                // Indices are < 4096, checked above.
                let first = SignerIndex::try_from(pair[0].1)?;
                let second = SignerIndex::try_from(pair[1].1)?;
                return Err(ProtoError::DuplicateSignerKey { first, second });
            }
        }
        if self.expires_at_ms <= self.created_at_ms {
            return Err(ProtoError::InvalidValidity {
                created_at_ms: self.created_at_ms,
                expires_at_ms: self.expires_at_ms,
            });
        }
        let t = &self.policy.timeouts;
        if t.join_ms == 0
            || t.nonce_ms == 0
            || t.partial_sig_ms == 0
            || t.broadcast_ms == 0
            || t.session_ms == 0
        {
            return Err(ProtoError::OutOfRange {
                field: "policy timeouts",
                reason: "every timeout must be non-zero",
            });
        }
        Ok(())
    }

    /// The session id this announcement will have: `tagged_hash("musig2-p2p/session-id",
    /// version || canonical encoding)`.
    pub fn session_id(&self) -> SessionId {
        session_id_of(PROTOCOL_VERSION, self)
    }

    /// Validates and signs as the creator (BIP340 with fresh auxiliary randomness).
    ///
    /// Fails if the announcement is invalid or `keypair` is not the creator's key.
    pub fn sign(
        self,
        keypair: &Keypair,
        limits: &Limits,
    ) -> Result<SignedAnnouncement, ProtoError> {
        self.sign_with_aux_rand(keypair, limits, &rand::random())
    }

    /// Signs as the creator and returns the announcement verified, without checking the
    /// signature just made with the creator's own key (its creator holds it verified at once):
    /// every other check of [`SignedAnnouncement::verify`] runs at `now_ms`.
    pub fn sign_verified(
        self,
        keypair: &Keypair,
        now_ms: u64,
        limits: &Limits,
    ) -> Result<VerifiedAnnouncement, ProtoError> {
        let signed = self.sign(keypair, limits)?;
        let (session_id, x_only) = signed.check_unsigned(now_ms, limits)?;
        Ok(VerifiedAnnouncement {
            signed,
            session_id,
            x_only,
        })
    }

    /// Like [`Announcement::sign_verified`], with the signature made later (ADR 0017): by a
    /// [`crate::Batch`] seal together with the creator's other pending envelopes and
    /// announcements, or over the announcement alone the first time its authentication is
    /// needed (encoding it, [`SignedAnnouncement::auth`], verifying it).
    pub fn sign_batchable(
        self,
        keypair: Arc<Keypair>,
        now_ms: u64,
        limits: &Limits,
    ) -> Result<VerifiedAnnouncement, ProtoError> {
        self.check_signable(&keypair, limits)?;
        let id = self.session_id();
        // Batched only if its frame still fits with the longest path, under this node's limit
        // and the default one (so no peer on default limits refuses it); else it is signed alone.
        let frame_with_path = crate::frame::to_vec(&self)
            .len()
            .saturating_add(ANNOUNCEMENT_FRAME_OVERHEAD + crate::auth::MAX_AUTH_PATH_BYTES);
        let batchable = frame_with_path
            <= limits
                .max_frame_bytes
                .min(Limits::default().max_frame_bytes);
        let signed = SignedAnnouncement {
            version: PROTOCOL_VERSION,
            announcement: Arc::new(self),
            auth: AuthState::pending(announcement_leaf(&id), keypair, batchable),
            id: OnceLock::from(id),
        };
        let (session_id, x_only) = signed.check_unsigned(now_ms, limits)?;
        Ok(VerifiedAnnouncement {
            signed,
            session_id,
            x_only,
        })
    }

    fn check_signable(&self, keypair: &Keypair, limits: &Limits) -> Result<(), ProtoError> {
        self.validate(limits)?;
        if keypair.public_key() != self.signers[self.creator.as_usize()].key {
            return Err(ProtoError::KeyMismatch {
                signer: self.creator,
            });
        }
        Ok(())
    }

    /// Like [`Announcement::sign`] with caller-chosen auxiliary randomness (deterministic output,
    /// for test vectors).
    pub fn sign_with_aux_rand(
        self,
        keypair: &Keypair,
        limits: &Limits,
        aux_rand: &[u8; 32],
    ) -> Result<SignedAnnouncement, ProtoError> {
        self.check_signable(keypair, limits)?;
        let id = self.session_id();
        let signature = crate::auth::sign_counted(&announcement_leaf(&id), keypair, aux_rand);
        Ok(SignedAnnouncement {
            version: PROTOCOL_VERSION,
            announcement: Arc::new(self),
            auth: AuthState::ready(Auth::direct(signature)),
            id: OnceLock::from(id),
        })
    }
}

/// An announcement frame's bytes around the announcement itself: frame tag, version, and an
/// `auth` with an empty path (path length, index, signature).
const ANNOUNCEMENT_FRAME_OVERHEAD: usize = 1 + 1 + 1 + 1 + 64;

/// What the creator signs for an announcement: alone, this is the BIP340 message; in a batch,
/// the leaf (ADR 0017).
fn announcement_leaf(session_id: &SessionId) -> [u8; 32] {
    tagged(Tag::Announcement, session_id.as_bytes())
}

fn session_id_of(version: u8, announcement: &Announcement) -> SessionId {
    SessionId::from_hash(tagged_encoding(Tag::SessionId, &(version, announcement)))
}

/// An announcement with its creator's authentication (a BIP340 signature over it alone, or over
/// the root of a batch with its path, ADR 0017), as sent on the wire and stored in the DHT.
///
/// Not trusted until [`SignedAnnouncement::verify`] turns it into a [`VerifiedAnnouncement`].
/// One made by [`Announcement::sign_batchable`] is signed when first sealed or encoded; its
/// clones share that state.
#[derive(Clone, Debug)]
pub struct SignedAnnouncement {
    version: u8,
    /// Shared by clones: a node hands its announcement to its store, its machines and its
    /// deferred DHT put, and a deep copy is a dozen allocations.
    announcement: Arc<Announcement>,
    auth: AuthState,
    /// The session id, computed once (the fields never change after construction).
    id: OnceLock<SessionId>,
}

impl PartialEq for SignedAnnouncement {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.announcement == other.announcement
            && self.auth.same_as(&other.auth)
    }
}

impl Eq for SignedAnnouncement {}

impl Serialize for SignedAnnouncement {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = serializer.serialize_struct("SignedAnnouncement", 3)?;
        st.serialize_field("version", &self.version)?;
        st.serialize_field("announcement", &*self.announcement)?;
        st.serialize_field("auth", self.auth.auth())?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for SignedAnnouncement {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "SignedAnnouncement")]
        struct Wire {
            version: u8,
            announcement: Announcement,
            auth: Auth,
        }
        let wire = Wire::deserialize(deserializer)?;
        Ok(SignedAnnouncement {
            version: wire.version,
            announcement: Arc::new(wire.announcement),
            auth: AuthState::ready(wire.auth),
            id: OnceLock::new(),
        })
    }
}

impl SignedAnnouncement {
    /// The protocol version the announcement was made for.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The (unverified) content.
    pub fn announcement(&self) -> &Announcement {
        &self.announcement
    }

    /// The creator's BIP340 signature (over the announcement, or over its batch's root),
    /// signing first if it is still pending.
    pub fn signature(&self) -> &[u8; 64] {
        self.auth.auth().signature()
    }

    /// An announcement of this protocol version with an authentication made elsewhere (e.g.
    /// rebuilt from stored parts); nothing is checked until [`SignedAnnouncement::verify`].
    pub fn from_parts(announcement: Announcement, auth: Auth) -> SignedAnnouncement {
        SignedAnnouncement {
            version: PROTOCOL_VERSION,
            announcement: Arc::new(announcement),
            auth: AuthState::ready(auth),
            id: OnceLock::new(),
        }
    }

    /// The creator's authentication, signing the announcement alone first if still pending.
    pub fn auth(&self) -> &Auth {
        self.auth.auth()
    }

    /// The authentication if there is one yet (`None` while pending and not yet signed).
    pub fn sealed_auth(&self) -> Option<&Auth> {
        self.auth.sealed()
    }

    pub(crate) fn auth_state(&self) -> &AuthState {
        &self.auth
    }

    /// Recomputes the session id from the content.
    pub fn session_id(&self) -> SessionId {
        *self
            .id
            .get_or_init(|| session_id_of(self.version, &self.announcement))
    }

    /// Encodes as a complete frame (what goes on the wire and into the DHT record).
    pub fn to_frame_bytes(&self) -> Vec<u8> {
        encode_frame(FrameRef::Announcement(self))
    }

    /// Decodes a frame that must hold an announcement (see [`crate::decode_frame`]).
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, ProtoError> {
        match crate::frame::decode_frame(bytes, limits)? {
            Frame::Announcement(a) => Ok(a),
            other => Err(ProtoError::UnexpectedFrame {
                expected: "announcement",
                found: other.kind(),
            }),
        }
    }

    /// Verifies the announcement at time `now_ms`: version, structure and limits
    /// ([`Announcement::validate`]), validity window (with `limits.max_clock_skew_ms` tolerance
    /// for the creation time), and the creator's signature over the recomputed session id.
    pub fn verify(&self, now_ms: u64, limits: &Limits) -> Result<VerifiedAnnouncement, ProtoError> {
        if self.version != PROTOCOL_VERSION {
            return Err(ProtoError::UnsupportedVersion {
                version: self.version,
                supported: PROTOCOL_VERSION,
            });
        }
        let (session_id, x_only) = self.check_unsigned(now_ms, limits)?;
        let a = &self.announcement;
        if !self.auth.auth().verifies(
            &x_only[a.creator.as_usize()],
            announcement_leaf(&session_id),
        ) {
            return Err(ProtoError::BadAnnouncementSignature { creator: a.creator });
        }
        Ok(VerifiedAnnouncement {
            signed: self.clone(),
            session_id,
            x_only,
        })
    }

    /// Every check of [`SignedAnnouncement::verify`] but the signature's: the session id and
    /// the signers' x-only keys.
    fn check_unsigned(
        &self,
        now_ms: u64,
        limits: &Limits,
    ) -> Result<(SessionId, Arc<[XOnlyPublicKey]>), ProtoError> {
        let a = &self.announcement;
        a.validate(limits)?;
        if now_ms >= a.expires_at_ms {
            return Err(ProtoError::Expired {
                expires_at_ms: a.expires_at_ms,
                now_ms,
            });
        }
        if a.created_at_ms > now_ms.saturating_add(limits.max_clock_skew_ms) {
            return Err(ProtoError::NotYetValid {
                created_at_ms: a.created_at_ms,
                now_ms,
            });
        }
        let session_id = self.session_id();
        let x_only: Arc<[XOnlyPublicKey]> = a
            .signers
            .iter()
            .map(|s| s.key.x_only_public_key().0)
            .collect();
        Ok((session_id, x_only))
    }

    /// Like [`SignedAnnouncement::verify`], and also checks that the recomputed session id is
    /// `expected` (the id the announcement was looked up by).
    pub fn verify_id(
        &self,
        expected: &SessionId,
        now_ms: u64,
        limits: &Limits,
    ) -> Result<VerifiedAnnouncement, ProtoError> {
        if self.session_id() != *expected {
            return Err(ProtoError::SessionIdMismatch);
        }
        self.verify(now_ms, limits)
    }
}

/// Borrowed frame for encoding without cloning.
#[derive(Serialize)]
pub(crate) enum FrameRef<'a> {
    Announcement(&'a SignedAnnouncement),
    Envelope(&'a envelope::SignedEnvelope),
    Batch(&'a [envelope::SignedEnvelope]),
    Signatures(&'a crate::signatures::FinalSignatures),
}

/// An announcement whose signature, session id, limits and validity window have been checked.
///
/// Only [`SignedAnnouncement::verify`] creates one.
#[derive(Clone, Debug)]
pub struct VerifiedAnnouncement {
    signed: SignedAnnouncement,
    session_id: SessionId,
    /// Shared by clones, like the content.
    x_only: Arc<[XOnlyPublicKey]>,
}

impl VerifiedAnnouncement {
    /// The session id (recomputed from the content).
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// The verified content.
    pub fn announcement(&self) -> &Announcement {
        &self.signed.announcement
    }

    /// The signed form, for relaying or storing.
    pub fn signed(&self) -> &SignedAnnouncement {
        &self.signed
    }

    /// Whether this session's envelopes may be batch-signed (ADR 0016): its largest round frame
    /// still fits, with a full batch path on every signer's envelope, both `max_frame_bytes`
    /// and the default frame limit (so that no peer on default limits refuses it).
    pub fn fits_batch_auth(&self, max_frame_bytes: usize) -> bool {
        let n = self.signer_count();
        let k = self.announcement().message_count();
        let per_signer = k
            .saturating_mul(66)
            .saturating_add(ROUND_ENVELOPE_OVERHEAD)
            .saturating_add(crate::auth::MAX_AUTH_PATH_BYTES + 2);
        n.saturating_mul(per_signer) <= max_frame_bytes.min(Limits::default().max_frame_bytes)
    }

    /// Number of signers.
    pub fn signer_count(&self) -> usize {
        self.signed.announcement.signers.len()
    }

    /// The signer keys in announcement order (the order for BIP327 key aggregation).
    pub fn signer_keys(&self) -> Vec<PublicKey> {
        self.signed
            .announcement
            .signers
            .iter()
            .map(|s| s.key)
            .collect()
    }

    /// The key at `index`, if it exists.
    pub fn signer_key(&self, index: SignerIndex) -> Option<&PublicKey> {
        self.signed
            .announcement
            .signers
            .get(index.as_usize())
            .map(|s| &s.key)
    }

    /// The index of `key` in the signer set.
    pub fn index_of(&self, key: &PublicKey) -> Option<SignerIndex> {
        let pos = self
            .signed
            .announcement
            .signers
            .iter()
            .position(|s| s.key == *key)?;
        SignerIndex::try_from(pos).ok()
    }

    pub(crate) fn x_only(&self, index: SignerIndex) -> Option<&XOnlyPublicKey> {
        self.x_only.get(index.as_usize())
    }

    /// Signs an envelope as `signer`, checking that `keypair` is that signer's key.
    pub fn sign_envelope(
        &self,
        signer: SignerIndex,
        seq: crate::SeqNo,
        timestamp_ms: u64,
        body: crate::Body,
        keypair: &Keypair,
    ) -> Result<envelope::SignedEnvelope, ProtoError> {
        match self.signer_key(signer) {
            Some(key) if *key == keypair.public_key() => Ok(envelope::Envelope::sign(
                self.session_id,
                signer,
                seq,
                timestamp_ms,
                body,
                keypair,
            )),
            Some(_) => Err(ProtoError::KeyMismatch { signer }),
            None => Err(ProtoError::UnknownSigner {
                index: signer.get(),
                signers: self.signer_count(),
            }),
        }
    }
}

impl From<&VerifiedAnnouncement> for SessionId {
    fn from(a: &VerifiedAnnouncement) -> SessionId {
        a.session_id
    }
}
