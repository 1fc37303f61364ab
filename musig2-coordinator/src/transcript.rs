//! Verifiable session transcripts: a self-contained file of everything a node stored about one
//! session, and its offline verification.
//!
//! A [`Transcript`] holds the creator-signed announcement, every signed envelope in the order
//! the exporting node recorded it, the outcome and the exporter's index. Anyone holding the file
//! can [`verify`](Transcript::verify) it without a network or a clock: every signature is
//! re-checked against the announcement, the aggregate key and the final signature are
//! recomputed, and misbehaviour that the signed envelopes themselves prove is listed as
//! [`BlameProof`]s. Abort messages and the exporter's recorded outcome are only [`Claim`]s: a
//! signed "I blame j" proves what its author said, not that j misbehaved.
//!
//! # File format (version 1)
//!
//! All integers are big-endian.
//!
//! ```text
//! magic     8 bytes  "MUSIG2TX"
//! version   u8       2
//! ann_len   u32      length of the announcement frame
//! ann       ann_len  SignedAnnouncement::to_frame_bytes
//! count     u32      number of envelopes
//! count ×   u32 len, then len bytes of SignedEnvelope::to_frame_bytes
//! exporter  u8 0 (unknown) | u8 1, u16 signer index
//! outcome   u8 0 (none)
//!         | u8 1, u16 count, count × 64-byte BIP340 signature (one per message)
//!         | u8 2, u8 abort reason, u16 blamed count, u16 × blamed, origin
//! origin    u8 0 (the exporter's own finding) | u8 1, u16 signer (that signer's claim)
//! ```
//!
//! Decoding is strict: the size cap and the envelope count are checked before anything is
//! parsed, every frame is decoded by the protocol's strict decoder, trailing bytes are refused,
//! and the file must be exactly the canonical encoding of what it decodes to.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use musig2_core::{AggNonce, KeyAggContext, PartialSignature, PubNonce, SessionContext};
use musig2_proto::{
    AbortReason, AggNonceBytes, Attempt, Body, Envelope, Limits, NonceSetDigest, ProtoError, SeqNo,
    SessionId, SignedAnnouncement, SignedEnvelope, SignerIndex, Topology, VerifiedAnnouncement,
};
use secp256k1::{PublicKey, XOnlyPublicKey, schnorr};

use crate::error::{CoordinatorError, Result};
use crate::event::AbortOrigin;
use crate::store::{Outcome, StoredSession};

/// The first bytes of every transcript file.
pub const TRANSCRIPT_MAGIC: [u8; 8] = *b"MUSIG2TX";

/// The transcript format version this crate writes and reads.
pub const TRANSCRIPT_VERSION: u8 = 2;

/// What a transcript may hold, checked before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranscriptLimits {
    /// Files longer than this are refused unread (default 64 MiB).
    pub max_file_bytes: usize,
    /// At most this many envelopes (default 100 000).
    pub max_envelopes: usize,
    /// Limits for the announcement and each envelope frame (the wire's).
    pub proto: Limits,
}

impl Default for TranscriptLimits {
    fn default() -> Self {
        TranscriptLimits {
            max_file_bytes: 64 * 1024 * 1024,
            max_envelopes: 100_000,
            proto: Limits::default(),
        }
    }
}

/// One session as a node recorded it, ready to export or verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// The announcement, as signed by its creator.
    pub announcement: SignedAnnouncement,
    /// Every envelope recorded, in order.
    pub envelopes: Vec<SignedEnvelope>,
    /// How the session ended for the exporter, if it did.
    pub outcome: Option<Outcome>,
    /// The signer whose node exported the transcript, if known.
    pub exporter: Option<SignerIndex>,
}

/// What a [`BlameProof`] proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlameKind {
    /// Two envelopes with one sequence number and different content.
    SameSequence,
    /// Two different values for one contribution in one attempt.
    ConflictingContribution {
        /// Which contribution (`nonce-commit`, `nonce` or `partial-sig`).
        contribution: &'static str,
    },
    /// A nonce that does not match the signer's commitment.
    CommitmentMismatch,
    /// A partial signature that fails BIP327 PartialSigVerify under the attempt's nonces.
    InvalidPartialSig,
    /// A star coordinator's aggregate nonce that is not the sum of the nonce set it committed
    /// to, or a revealed nonce set that is not the one it committed to (ADR 0011).
    AggregateNonceMismatch,
    /// A final signature that does not verify under the aggregate key.
    InvalidFinalSignature,
    /// A failover claim its author had no right to make: a position in the election order that
    /// is not its own, position 0, past the announcement's `max_failovers`, or an attempt past
    /// `max_attempts` (ADR 0008).
    OutOfTurnClaim,
}

impl fmt::Display for BlameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlameKind::SameSequence => {
                f.write_str("equivocation: two envelopes under one sequence number")
            }
            BlameKind::ConflictingContribution { contribution } => {
                write!(f, "equivocation: two different {contribution} values")
            }
            BlameKind::CommitmentMismatch => f.write_str("nonce does not match its commitment"),
            BlameKind::InvalidPartialSig => f.write_str("invalid partial signature"),
            BlameKind::AggregateNonceMismatch => {
                f.write_str("aggregate nonce is not the sum of the nonce set it committed to")
            }
            BlameKind::InvalidFinalSignature => f.write_str("invalid final signature"),
            BlameKind::OutOfTurnClaim => f.write_str("failover claim out of turn"),
        }
    }
}

/// Misbehaviour of `signer` shown by envelopes it signed.
///
/// Every kind but [`BlameKind::InvalidPartialSig`] is proven by the evidence envelopes alone.
/// An invalid partial signature is judged under the nonces the transcript holds. In mesh, only
/// in an attempt where it holds exactly one nonce of every signer: a mesh signer sends its
/// partial signature together with the nonces it used (ADR 0003), so a second nonce of an
/// equivocator would be in the transcript too. In star, under the aggregate nonce the partial
/// signature names (an AggregateNonce of the transcript with that reference) and its author's
/// one nonce of the attempt (ADR 0011).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlameProof {
    /// The signer proven at fault.
    pub signer: SignerIndex,
    /// What it did.
    pub kind: BlameKind,
    /// The attempt concerned, when the evidence belongs to one.
    pub attempt: Option<Attempt>,
    /// Positions in the transcript's envelope list of the evidence (a NonceSet envelope stands
    /// for the nonces it relays).
    pub evidence: Vec<usize>,
}

/// Where a [`Claim`] was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimSource {
    /// A signed Abort envelope at this position.
    Envelope(usize),
    /// The exporter's recorded outcome.
    Outcome,
}

/// Someone said the session failed, and whom they blame. Not a proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Who said it (`None`: the exporter, whose index the transcript does not name).
    pub claimant: Option<SignerIndex>,
    /// The reason given.
    pub reason: AbortReason,
    /// The signers blamed.
    pub blamed: Vec<SignerIndex>,
    /// Where it was found.
    pub source: ClaimSource,
}

/// The result of [`Transcript::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptReport {
    /// The session id (recomputed from the announcement).
    pub session: SessionId,
    /// The signer whose node exported the transcript, if known.
    pub exporter: Option<SignerIndex>,
    /// The creator (who signed the announcement).
    pub creator: SignerIndex,
    /// The signer keys, in key-aggregation order.
    pub signers: Vec<PublicKey>,
    /// The aggregate of the signer keys, before tweaks.
    pub untweaked_key: PublicKey,
    /// Each message, with the key it is signed under.
    pub messages: Vec<MessageReport>,
    /// The session's topology.
    pub topology: Topology,
    /// Every attempt some envelope names, ascending.
    pub attempts: Vec<Attempt>,
    /// Envelopes whose signature verified (all of them, when verification succeeds).
    pub envelopes_verified: usize,
    /// Partial signatures checked with PartialSigVerify.
    pub partial_sigs_checked: usize,
    /// Partial signatures that could not be checked (their attempt lacks a single nonce of
    /// every signer).
    pub partial_sigs_unchecked: usize,
    /// The final signatures, one per message (the recorded outcome's, else a valid
    /// FinalSignature envelope's), and whether all verify.
    pub signatures: Option<(Vec<schnorr::Signature>, bool)>,
    /// Misbehaviour proven by signed envelopes.
    pub proofs: Vec<BlameProof>,
    /// Aborts and blame that signers (or the exporter) claimed.
    pub claims: Vec<Claim>,
}

impl TranscriptReport {
    /// Whether every signature in the transcript checks: envelopes (always, when a report
    /// exists) and the final signature, if there is one.
    pub fn signatures_valid(&self) -> bool {
        self.signatures.as_ref().is_none_or(|(_, valid)| *valid)
    }
}

/// One message of a session, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageReport {
    /// The message (untrusted bytes: escape before printing as text).
    pub message: Vec<u8>,
    /// Number of tweaks applied for it.
    pub tweaks: usize,
    /// The aggregate key after its tweaks.
    pub tweaked_key: PublicKey,
    /// The x-only output key its signature verifies under.
    pub output_key: XOnlyPublicKey,
}

fn who(signer: Option<SignerIndex>) -> String {
    signer.map_or_else(|| "the exporter".to_owned(), |s| format!("signer {s}"))
}

impl fmt::Display for TranscriptReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Session:        {}", self.session)?;
        writeln!(
            f,
            "Exported by:    {}",
            self.exporter
                .map_or_else(|| "unknown".to_owned(), |s| format!("signer {s}"))
        )?;
        writeln!(f, "Topology:       {:?}", self.topology)?;
        writeln!(
            f,
            "Signers ({}), in key-aggregation order:",
            self.signers.len()
        )?;
        for (i, key) in self.signers.iter().enumerate() {
            let creator = if i == self.creator.as_usize() {
                "  (creator)"
            } else {
                ""
            };
            writeln!(f, "  #{i:<3} {key}{creator}")?;
        }
        writeln!(f, "Aggregate key (untweaked): {}", self.untweaked_key)?;
        for (i, m) in self.messages.iter().enumerate() {
            writeln!(f, "Message #{i}:")?;
            writeln!(
                f,
                "  Aggregate key ({} tweaks):  {}",
                m.tweaks, m.tweaked_key
            )?;
            writeln!(f, "  Output key (x-only):       {}", m.output_key)?;
            // Hex only: the message is untrusted and may hold terminal escapes.
            writeln!(
                f,
                "  Message ({} bytes, hex):   {}",
                m.message.len(),
                hex_string(&m.message)
            )?;
        }
        let attempts: Vec<String> = self.attempts.iter().map(Attempt::to_string).collect();
        writeln!(
            f,
            "Attempts seen:  {}",
            if attempts.is_empty() {
                "none".to_owned()
            } else {
                attempts.join(", ")
            }
        )?;
        writeln!(
            f,
            "Envelopes:      {} verified; partial signatures {} checked, {} uncheckable",
            self.envelopes_verified, self.partial_sigs_checked, self.partial_sigs_unchecked
        )?;
        match &self.signatures {
            Some((sigs, valid)) => {
                let verdict = if *valid { "valid" } else { "INVALID" };
                writeln!(f, "Signatures ({verdict}):")?;
                for (i, sig) in sigs.iter().enumerate() {
                    writeln!(f, "  #{i:<3} {sig}")?;
                }
            }
            None => writeln!(f, "Signatures:     none")?,
        }
        writeln!(
            f,
            "Proven misbehaviour:{}",
            if self.proofs.is_empty() { " none" } else { "" }
        )?;
        for p in &self.proofs {
            let attempt = p
                .attempt
                .map_or_else(String::new, |a| format!(" in attempt {a}"));
            let evidence: Vec<String> = p.evidence.iter().map(usize::to_string).collect();
            writeln!(
                f,
                "  signer {}: {}{attempt} (envelopes {})",
                p.signer,
                p.kind,
                evidence.join(", ")
            )?;
        }
        writeln!(
            f,
            "Claims (not proofs):{}",
            if self.claims.is_empty() { " none" } else { "" }
        )?;
        for c in &self.claims {
            let blamed: Vec<String> = c.blamed.iter().map(SignerIndex::to_string).collect();
            let source = match c.source {
                ClaimSource::Envelope(i) => format!("envelope {i}"),
                ClaimSource::Outcome => "recorded outcome".to_owned(),
            };
            writeln!(
                f,
                "  {} aborted ({:?}), blaming {} ({source})",
                who(c.claimant),
                c.reason,
                if blamed.is_empty() {
                    "nobody".to_owned()
                } else {
                    format!("signer {}", blamed.join(", "))
                }
            )?;
        }
        Ok(())
    }
}

fn hex_string(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// An error about the file as a whole.
fn invalid(what: impl Into<String>) -> CoordinatorError {
    CoordinatorError::Transcript {
        envelope: None,
        signer: None,
        what: what.into(),
    }
}

/// An error about envelope `index`, claimed to be from `signer`.
fn invalid_envelope(index: usize, signer: SignerIndex, why: impl fmt::Display) -> CoordinatorError {
    CoordinatorError::Transcript {
        envelope: Some(index),
        signer: Some(signer),
        what: format!("envelope {index} (claimed signer {signer}): {why}"),
    }
}

// -------------------------------------------------------------------------------------------
// Encoding

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Frames are capped far below 4 GiB, and decoding refuses what does not fit.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.bytes.len() {
            return Err(invalid(format!("truncated at the {what}")));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<usize> {
        let b = self.take(4, what)?;
        usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .map_err(|_| invalid(format!("{what} does not fit this machine")))
    }

    fn signer(&mut self, what: &str) -> Result<SignerIndex> {
        SignerIndex::new(self.u16(what)?).map_err(|e| invalid(format!("{what}: {e}")))
    }
}

impl Transcript {
    /// The transcript of a stored session, as exported by signer `exporter` (if known).
    pub fn from_stored(stored: &StoredSession, exporter: Option<SignerIndex>) -> Transcript {
        Transcript {
            announcement: stored.announcement.clone(),
            envelopes: stored.envelopes.clone(),
            outcome: stored.outcome.as_ref().map(|(o, _)| o.clone()),
            exporter,
        }
    }

    /// The session id (recomputed from the announcement).
    pub fn session_id(&self) -> SessionId {
        self.announcement.session_id()
    }

    /// The canonical file encoding (see the [module docs](self)).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&TRANSCRIPT_MAGIC);
        out.push(TRANSCRIPT_VERSION);
        let ann = self.announcement.to_frame_bytes();
        put_len(&mut out, ann.len());
        out.extend_from_slice(&ann);
        put_len(&mut out, self.envelopes.len());
        for env in &self.envelopes {
            let frame = env.to_frame_bytes();
            put_len(&mut out, frame.len());
            out.extend_from_slice(&frame);
        }
        match self.exporter {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                out.extend_from_slice(&s.get().to_be_bytes());
            }
        }
        match &self.outcome {
            None => out.push(0),
            Some(Outcome::Signed(sigs)) => {
                out.push(1);
                // At most max_messages (u16 range is ample; more cannot be decoded).
                let count = u16::try_from(sigs.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&count.to_be_bytes());
                for sig in sigs.iter().take(usize::from(count)) {
                    out.extend_from_slice(&sig.to_byte_array());
                }
            }
            Some(Outcome::Aborted {
                reason,
                blamed,
                origin,
            }) => {
                out.push(2);
                out.push(crate::store::abort_reason_code(*reason));
                // Signer indices are below 4096, so a list of distinct ones fits a u16.
                let count = u16::try_from(blamed.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&count.to_be_bytes());
                for s in blamed.iter().take(usize::from(count)) {
                    out.extend_from_slice(&s.get().to_be_bytes());
                }
                match origin {
                    AbortOrigin::Local => out.push(0),
                    AbortOrigin::Remote(s) => {
                        out.push(1);
                        out.extend_from_slice(&s.get().to_be_bytes());
                    }
                }
            }
        }
        out
    }

    /// Decodes a transcript file strictly (see the [module docs](self)). Never panics; checks
    /// no signature (see [`Transcript::verify`]).
    pub fn decode(bytes: &[u8], limits: &TranscriptLimits) -> Result<Transcript> {
        if bytes.len() > limits.max_file_bytes {
            return Err(invalid(format!(
                "{} bytes, at most {} accepted",
                bytes.len(),
                limits.max_file_bytes
            )));
        }
        let mut r = Reader { bytes };
        if r.take(TRANSCRIPT_MAGIC.len(), "magic")? != TRANSCRIPT_MAGIC {
            return Err(invalid("not a musig2-p2p transcript (wrong magic bytes)"));
        }
        let version = r.u8("version")?;
        if version != TRANSCRIPT_VERSION {
            return Err(invalid(format!(
                "format version {version}, this build reads {TRANSCRIPT_VERSION}"
            )));
        }
        let len = r.u32("announcement length")?;
        let ann_bytes = r.take(len, "announcement")?;
        let announcement = SignedAnnouncement::decode(ann_bytes, &limits.proto)
            .map_err(|e| invalid(format!("announcement: {e}")))?;
        let count = r.u32("envelope count")?;
        if count > limits.max_envelopes {
            return Err(invalid(format!(
                "{count} envelopes, at most {} accepted",
                limits.max_envelopes
            )));
        }
        // Each envelope takes at least its 4-byte length: never reserve more than the bytes
        // left could hold.
        let mut envelopes = Vec::with_capacity(count.min(r.bytes.len() / 4));
        for i in 0..count {
            let len = r.u32("envelope length")?;
            let frame = r.take(len, "envelope")?;
            let env = SignedEnvelope::decode(frame, &limits.proto).map_err(|e| {
                CoordinatorError::Transcript {
                    envelope: Some(i),
                    signer: None,
                    what: format!("envelope {i}: {e}"),
                }
            })?;
            envelopes.push(env);
        }
        let exporter = match r.u8("exporter")? {
            0 => None,
            1 => Some(r.signer("exporter")?),
            t => return Err(invalid(format!("unknown exporter tag {t}"))),
        };
        let outcome = match r.u8("outcome")? {
            0 => None,
            1 => {
                let count = r.u16("signature count")?;
                let mut sigs = Vec::new();
                for _ in 0..count {
                    let mut sig = [0u8; 64];
                    sig.copy_from_slice(r.take(64, "signature")?);
                    sigs.push(schnorr::Signature::from_byte_array(sig));
                }
                Some(Outcome::Signed(sigs))
            }
            2 => {
                let code = r.u8("abort reason")?;
                let reason = crate::store::abort_reason_from_code(code)
                    .ok_or_else(|| invalid(format!("unknown abort reason {code}")))?;
                let count = r.u16("blamed count")?;
                let blamed = (0..count)
                    .map(|_| r.signer("blamed signer"))
                    .collect::<Result<Vec<_>>>()?;
                let origin = match r.u8("abort origin")? {
                    0 => AbortOrigin::Local,
                    1 => AbortOrigin::Remote(r.signer("abort origin")?),
                    t => return Err(invalid(format!("unknown abort origin tag {t}"))),
                };
                Some(Outcome::Aborted {
                    reason,
                    blamed,
                    origin,
                })
            }
            t => return Err(invalid(format!("unknown outcome tag {t}"))),
        };
        if !r.bytes.is_empty() {
            return Err(invalid(format!("{} trailing bytes", r.bytes.len())));
        }
        let transcript = Transcript {
            announcement,
            envelopes,
            outcome,
            exporter,
        };
        // One file per transcript: anything else (e.g. an over-long blamed list) is refused.
        if transcript.encode() != bytes {
            return Err(invalid("not the canonical encoding"));
        }
        Ok(transcript)
    }

    // ---------------------------------------------------------------------------------------
    // Verification

    /// Verifies the transcript offline and says who is provably to blame.
    ///
    /// Fails (naming the envelope's position and claimed signer) if the announcement or any
    /// envelope does not verify, or if the exporter or outcome name signers that do not exist.
    /// The announcement is checked as of its creation time, so an expired session still
    /// verifies.
    pub fn verify(&self, limits: &TranscriptLimits) -> Result<TranscriptReport> {
        let created = self.announcement.announcement().created_at_ms;
        let ann = self
            .announcement
            .verify(created, &limits.proto)
            .map_err(|e| invalid(format!("announcement: {e}")))?;
        let a = ann.announcement();
        let n = ann.signer_count();
        let in_range = |s: SignerIndex| s.as_usize() < n;
        if let Some(e) = self.exporter.filter(|s| !in_range(*s)) {
            return Err(invalid(format!("exporter {e} is not a signer")));
        }

        let keys = ann.signer_keys();
        let untweaked =
            KeyAggContext::new(&keys).map_err(|e| invalid(format!("key aggregation: {e}")))?;
        let untweaked_key = untweaked.aggregate_key();
        let key_aggs = a
            .messages
            .iter()
            .map(|m| {
                let tweaks = crate::machine::message_tweaks(m)
                    .map_err(|e| invalid(format!("announcement tweak: {e}")))?;
                untweaked
                    .clone()
                    .with_tweaks(&tweaks)
                    .map_err(|e| invalid(format!("key aggregation with tweaks: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;

        let mut judge = Judge::new(&ann, &key_aggs);
        for (i, env) in self.envelopes.iter().enumerate() {
            judge.add(i, env)?;
        }
        judge.check_commitments();
        judge.check_nonce_sets();
        judge.check_partial_sigs();

        let mut claims = judge.claims.clone();
        let outcome_sig = match &self.outcome {
            None => None,
            Some(Outcome::Signed(sigs)) => Some(sigs.clone()),
            Some(Outcome::Aborted {
                reason,
                blamed,
                origin,
            }) => {
                if let Some(s) = blamed.iter().find(|s| !in_range(**s)) {
                    return Err(invalid(format!("the outcome blames {s}, not a signer")));
                }
                let claimant = match origin {
                    AbortOrigin::Local => self.exporter,
                    AbortOrigin::Remote(s) if in_range(*s) => Some(*s),
                    AbortOrigin::Remote(s) => {
                        return Err(invalid(format!("the outcome cites {s}, not a signer")));
                    }
                };
                claims.push(Claim {
                    claimant,
                    reason: *reason,
                    blamed: blamed.clone(),
                    source: ClaimSource::Outcome,
                });
                None
            }
        };
        let signatures = match outcome_sig {
            Some(sigs) => {
                let valid = all_verify(&sigs, &ann, &key_aggs);
                Some((sigs, valid))
            }
            None => judge.valid_final.clone().map(|sigs| (sigs, true)),
        };
        let messages = a
            .messages
            .iter()
            .zip(&key_aggs)
            .map(|(m, key_agg)| MessageReport {
                message: m.message.clone(),
                tweaks: m.tweaks.len(),
                tweaked_key: key_agg.aggregate_key(),
                output_key: key_agg.x_only_key(),
            })
            .collect();

        Ok(TranscriptReport {
            session: ann.session_id(),
            exporter: self.exporter,
            creator: a.creator,
            signers: keys,
            untweaked_key,
            messages,
            topology: a.policy.topology,
            attempts: judge.attempts.iter().copied().collect(),
            envelopes_verified: self.envelopes.len(),
            partial_sigs_checked: judge.psigs_checked,
            partial_sigs_unchecked: judge.psigs_unchecked,
            signatures,
            proofs: judge.proofs,
            claims,
        })
    }
}

/// The contributions that [`BlameKind::ConflictingContribution`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Commit,
    Nonce,
    PartialSig,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Commit => "nonce-commit",
            Kind::Nonce => "nonce",
            Kind::PartialSig => "partial-sig",
        }
    }
}

type Slot = (SignerIndex, Attempt, Kind);

/// Distinct values of one slot (every message's value, concatenated), in order, with the
/// position of the first envelope of each.
type Values = Vec<(Vec<u8>, usize)>;

/// The verified envelopes of a transcript, folded into what blame needs.
struct Judge<'a> {
    ann: &'a VerifiedAnnouncement,
    /// One key-aggregation context per message.
    key_aggs: &'a [KeyAggContext],
    /// First envelope seen per (signer, seq): its content and position.
    by_seq: HashMap<(SignerIndex, SeqNo), (Envelope, usize)>,
    /// Distinct values per contribution slot, in order, with the position of each.
    values: HashMap<Slot, Values>,
    seen: HashSet<(SignerIndex, Attempt, Kind, Vec<u8>)>,
    attempts: BTreeSet<Attempt>,
    proofs: Vec<BlameProof>,
    proven_pairs: HashSet<(usize, usize)>,
    claims: Vec<Claim>,
    valid_final: Option<Vec<schnorr::Signature>>,
    /// Star AggregateNonce envelopes: author, attempt, aggregates, digest, position.
    star_aggs: Vec<(
        SignerIndex,
        Attempt,
        Vec<AggNonceBytes>,
        NonceSetDigest,
        usize,
    )>,
    /// Star NonceSet envelopes: author, attempt, nonces, position.
    star_sets: Vec<(SignerIndex, Attempt, Vec<musig2_proto::SignedNonce>, usize)>,
    psigs_checked: usize,
    psigs_unchecked: usize,
}

/// Every message's value of a contribution, concatenated, for comparison.
fn concat<const N: usize>(values: impl IntoIterator<Item = [u8; N]>) -> Vec<u8> {
    values.into_iter().flatten().collect()
}

/// Whether every signature verifies for its message under its key (and there is one per
/// message).
fn all_verify(
    sigs: &[schnorr::Signature],
    ann: &VerifiedAnnouncement,
    key_aggs: &[KeyAggContext],
) -> bool {
    let messages = &ann.announcement().messages;
    sigs.len() == messages.len()
        && sigs
            .iter()
            .zip(messages)
            .zip(key_aggs)
            .all(|((sig, m), key_agg)| {
                musig2_core::verify_signature(sig, &m.message, &key_agg.x_only_key()).is_ok()
            })
}

impl<'a> Judge<'a> {
    fn new(ann: &'a VerifiedAnnouncement, key_aggs: &'a [KeyAggContext]) -> Self {
        Judge {
            ann,
            key_aggs,
            by_seq: HashMap::new(),
            values: HashMap::new(),
            seen: HashSet::new(),
            attempts: BTreeSet::new(),
            proofs: Vec::new(),
            proven_pairs: HashSet::new(),
            claims: Vec::new(),
            valid_final: None,
            star_aggs: Vec::new(),
            star_sets: Vec::new(),
            psigs_checked: 0,
            psigs_unchecked: 0,
        }
    }

    fn prove(
        &mut self,
        signer: SignerIndex,
        kind: BlameKind,
        attempt: Option<Attempt>,
        ev: Vec<usize>,
    ) {
        self.proofs.push(BlameProof {
            signer,
            kind,
            attempt,
            evidence: ev,
        });
    }

    /// Verifies envelope `i` and records what it says.
    fn add(&mut self, i: usize, signed: &SignedEnvelope) -> Result<()> {
        let env = signed.envelope();
        let signer = env.signer();
        match signed.verify(self.ann) {
            Ok(_) => {}
            // The mismatch is checked last: the author's signature and every relayed nonce's
            // verified, so the envelope is authentic and itself the proof.
            Err(ProtoError::AggregateNonceMismatch { .. }) => {
                let attempt = match env.body() {
                    Body::AggregateNonce { attempt, .. } => Some(*attempt),
                    _ => None,
                };
                self.prove(signer, BlameKind::AggregateNonceMismatch, attempt, vec![i]);
            }
            Err(e) => return Err(invalid_envelope(i, signer, e)),
        }
        self.record(i, env.clone());
        match env.body() {
            Body::NonceSet { attempt, nonces } => {
                // Relayed nonces carry their author's signature: they count as its own.
                for sn in nonces {
                    let relayed = sn.to_signed_envelope(env.session_id());
                    self.record(i, relayed.envelope().clone());
                }
                self.star_sets.push((signer, *attempt, nonces.clone(), i));
            }
            Body::AggregateNonce {
                attempt,
                agg_nonces,
                nonce_set,
            } => {
                self.star_aggs
                    .push((signer, *attempt, agg_nonces.clone(), *nonce_set, i));
            }
            Body::Abort { reason, blamed } => self.claims.push(Claim {
                claimant: Some(signer),
                reason: *reason,
                blamed: blamed.iter().copied().collect(),
                source: ClaimSource::Envelope(i),
            }),
            Body::FailoverClaim { attempt, rank } => {
                let policy = &self.ann.announcement().policy;
                let keys = self.ann.signer_keys();
                let order =
                    crate::election::election_order(policy.election, &self.ann.session_id(), &keys);
                let bound = policy
                    .max_failovers
                    .min(u16::try_from(keys.len().saturating_sub(1)).unwrap_or(u16::MAX));
                let out_of_turn = *rank == 0
                    || *rank > bound
                    || attempt.get() >= policy.max_attempts.max(1)
                    || order.get(usize::from(*rank)) != Some(&signer);
                if out_of_turn {
                    self.prove(signer, BlameKind::OutOfTurnClaim, Some(*attempt), vec![i]);
                }
            }
            Body::FinalSignature {
                attempt,
                signatures,
            } => {
                let sigs: Vec<schnorr::Signature> = signatures
                    .iter()
                    .map(|s| schnorr::Signature::from_byte_array(s.to_bytes()))
                    .collect();
                if all_verify(&sigs, self.ann, self.key_aggs) {
                    self.valid_final.get_or_insert(sigs);
                } else {
                    self.prove(
                        signer,
                        BlameKind::InvalidFinalSignature,
                        Some(*attempt),
                        vec![i],
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Files one authentic envelope (direct, or relayed inside envelope `i`).
    fn record(&mut self, i: usize, env: Envelope) {
        let signer = env.signer();
        let contribution = match env.body() {
            Body::NonceCommit {
                attempt,
                commitment,
            } => Some((*attempt, Kind::Commit, commitment.to_bytes().to_vec())),
            Body::Nonce {
                attempt,
                pub_nonces,
            } => Some((
                *attempt,
                Kind::Nonce,
                concat(pub_nonces.iter().map(|n| n.to_bytes())),
            )),
            Body::PartialSig {
                attempt,
                partial_sigs,
                aggregate,
            } => {
                // A partial signature's value ends with the aggregate it names.
                let mut value = concat(partial_sigs.iter().map(|p| p.to_bytes()));
                value.extend(aggregate.iter().flat_map(|r| r.0));
                Some((*attempt, Kind::PartialSig, value))
            }
            Body::AggregateNonce { attempt, .. }
            | Body::NonceSet { attempt, .. }
            | Body::FinalSignature { attempt, .. }
            | Body::BroadcastConfirmed { attempt, .. }
            | Body::FailoverClaim { attempt, .. }
            | Body::Restart { attempt } => {
                self.attempts.insert(*attempt);
                None
            }
            Body::Join { .. } | Body::Abort { .. } | Body::Request { .. } => None,
        };
        if let Some((attempt, kind, value)) = contribution {
            self.attempts.insert(attempt);
            // A set, so that a file of many values costs linear time, not quadratic.
            if self.seen.insert((signer, attempt, kind, value.clone())) {
                self.values
                    .entry((signer, attempt, kind))
                    .or_default()
                    .push((value, i));
            }
        }
        match self.by_seq.get(&(signer, env.seq())) {
            None => {
                self.by_seq.insert((signer, env.seq()), (env, i));
            }
            Some((first, j)) if *first != env => {
                let pair = (*j, i);
                self.proven_pairs.insert(pair);
                self.prove(signer, BlameKind::SameSequence, None, vec![pair.0, pair.1]);
            }
            Some(_) => {}
        }
    }

    /// Two values for one slot, and nonces that do not match their commitment.
    fn check_commitments(&mut self) {
        let session = self.ann.session_id();
        let mut slots: Vec<(Slot, Values)> =
            self.values.iter().map(|(k, v)| (*k, v.clone())).collect();
        // Deterministic report order.
        slots.sort_by_key(|((s, a, k), v)| (v.first().map(|x| x.1), *s, *a, *k));
        for ((signer, attempt, kind), values) in &slots {
            if let Some(((_, first), rest)) = values.split_first() {
                for (_, later) in rest {
                    if !self.proven_pairs.contains(&(*first, *later)) {
                        self.prove(
                            *signer,
                            BlameKind::ConflictingContribution {
                                contribution: kind.name(),
                            },
                            Some(*attempt),
                            vec![*first, *later],
                        );
                    }
                }
            }
            if *kind != Kind::Commit {
                continue;
            }
            let Some((commit_value, commit_at)) = values.first() else {
                continue;
            };
            let Ok(c) = <[u8; 32]>::try_from(commit_value.as_slice()) else {
                continue;
            };
            let commitment = musig2_proto::NonceCommitment::from_bytes(c);
            let nonces = self
                .values
                .get(&(*signer, *attempt, Kind::Nonce))
                .cloned()
                .unwrap_or_default();
            for (nonce, at) in nonces {
                // Verified envelopes: whole 66-byte nonces of valid points.
                let pub_nonces: Option<Vec<musig2_proto::PubNonceBytes>> = nonce
                    .chunks_exact(66)
                    .map(|c| {
                        <[u8; 66]>::try_from(c)
                            .ok()
                            .and_then(|b| musig2_proto::PubNonceBytes::from_bytes(b).ok())
                    })
                    .collect();
                let Some(pub_nonces) = pub_nonces else {
                    continue;
                };
                if commitment
                    .check_reveal(&session, *signer, *attempt, &pub_nonces)
                    .is_err()
                {
                    self.prove(
                        *signer,
                        BlameKind::CommitmentMismatch,
                        Some(*attempt),
                        vec![*commit_at, at],
                    );
                }
            }
        }
    }

    /// A star coordinator that signed an AggregateNonce and a NonceSet of one attempt whose
    /// digest differs, or whose sum is not its aggregate (ADR 0011).
    fn check_nonce_sets(&mut self) {
        let session = self.ann.session_id();
        let k = self.key_aggs.len();
        // Linear in the transcript: each set and each aggregate is compared with the first
        // aggregate of its author and attempt only.
        type FirstAgg<'x> = (&'x [AggNonceBytes], NonceSetDigest, usize);
        let mut first: HashMap<(SignerIndex, Attempt), FirstAgg<'_>> = HashMap::new();
        let mut found = Vec::new();
        for (signer, attempt, agg_nonces, nonce_set, at) in &self.star_aggs {
            match first.get(&(*signer, *attempt)) {
                None => {
                    first.insert((*signer, *attempt), (agg_nonces, *nonce_set, *at));
                }
                Some((agg1, set1, at1)) if *agg1 != agg_nonces.as_slice() || set1 != nonce_set => {
                    found.push((
                        *signer,
                        *attempt,
                        BlameKind::ConflictingContribution {
                            contribution: "aggregate-nonce",
                        },
                        vec![*at1, *at],
                    ));
                }
                Some(_) => {}
            }
        }
        for (signer, attempt, nonces, set_at) in &self.star_sets {
            let Some((agg_nonces, nonce_set, agg_at)) = first.get(&(*signer, *attempt)) else {
                continue;
            };
            let digest = Body::nonce_set_digest(&session, *attempt, nonces);
            let sum = Body::sum_nonce_set(nonces, k);
            if digest != *nonce_set || sum.as_deref() != Some(*agg_nonces) {
                found.push((
                    *signer,
                    *attempt,
                    BlameKind::AggregateNonceMismatch,
                    vec![*agg_at, *set_at],
                ));
            }
        }
        for (signer, attempt, kind, evidence) in found {
            self.prove(signer, kind, Some(attempt), evidence);
        }
    }

    /// A star partial signature (value: k signatures, then the aggregate reference it names),
    /// judged under that aggregate, found among the transcript's AggregateNonce envelopes, and
    /// its author's single nonce list of the attempt. Returns whether it could be judged and
    /// whether it is valid, with the evidence positions.
    fn judge_star_psig(
        &self,
        signer: SignerIndex,
        attempt: Attempt,
        value: &[u8],
        messages: &[Vec<u8>],
        aggregates: &HashMap<[u8; 32], (&[AggNonceBytes], usize)>,
    ) -> Option<(bool, Vec<usize>)> {
        let k = messages.len();
        if value.len() != 32 * k + 32 {
            return None;
        }
        let (sigs, reference) = value.split_at(32 * k);
        // The reference hashes the attempt: an aggregate of another attempt never matches.
        let (agg_nonces, agg_at) = *aggregates.get(reference)?;
        let (nonce, nonce_at) = match self
            .values
            .get(&(signer, attempt, Kind::Nonce))
            .map(Vec::as_slice)
        {
            Some([(bytes, at)]) => (bytes.clone(), *at),
            _ => return None,
        };
        let j = signer.as_usize();
        let valid = nonce.len() == 66 * k
            && agg_nonces.len() == k
            && sigs.chunks_exact(32).enumerate().all(|(m, c)| {
                let psig = <[u8; 32]>::try_from(c)
                    .ok()
                    .and_then(|b| PartialSignature::from_bytes(&b).ok());
                let pubnonce = <[u8; 66]>::try_from(&nonce[66 * m..66 * (m + 1)])
                    .ok()
                    .and_then(|b| PubNonce::from_bytes(&b).ok());
                match (psig, pubnonce) {
                    (Some(p), Some(pn)) => SessionContext::new(
                        &self.key_aggs[m],
                        &agg_nonces[m].to_core(),
                        &messages[m],
                    )
                    .verify_partial(j, &p, &pn)
                    .is_ok(),
                    _ => false,
                }
            });
        Some((valid, vec![agg_at, nonce_at]))
    }

    /// PartialSigVerify for every partial signature (every message's) of an attempt with one
    /// nonce list per signer.
    fn check_partial_sigs(&mut self) {
        let n = self.ann.signer_count();
        let messages: Vec<Vec<u8>> = self
            .ann
            .announcement()
            .messages
            .iter()
            .map(|m| m.message.clone())
            .collect();
        let k = messages.len();
        let mut by_attempt: HashMap<Attempt, Vec<(SignerIndex, Vec<u8>, usize)>> = HashMap::new();
        for ((signer, attempt, kind), values) in &self.values {
            if *kind == Kind::PartialSig {
                let list = by_attempt.entry(*attempt).or_default();
                list.extend(
                    values
                        .iter()
                        .map(|(value, at)| (*signer, value.clone(), *at)),
                );
            }
        }
        let mut by_attempt: Vec<_> = by_attempt.into_iter().collect();
        by_attempt.sort_by_key(|(a, _)| *a);
        if self.ann.announcement().policy.topology == Topology::Star {
            let session = self.ann.session_id();
            let mut aggregates: HashMap<[u8; 32], (&[AggNonceBytes], usize)> = HashMap::new();
            for (_, a, agg, _, at) in &self.star_aggs {
                aggregates
                    .entry(Body::aggregate_ref(&session, *a, agg).0)
                    .or_insert((agg.as_slice(), *at));
            }
            let mut found = Vec::new();
            let (mut checked, mut unchecked) = (0, 0);
            for (attempt, mut psigs) in by_attempt {
                psigs.sort_by_key(|p| p.2);
                for (signer, value, at) in psigs {
                    match self.judge_star_psig(signer, attempt, &value, &messages, &aggregates) {
                        None => unchecked += 1,
                        Some((valid, more)) => {
                            checked += 1;
                            if !valid {
                                let mut evidence = vec![at];
                                evidence.extend(more);
                                found.push((signer, attempt, evidence));
                            }
                        }
                    }
                }
            }
            self.psigs_checked += checked;
            self.psigs_unchecked += unchecked;
            for (signer, attempt, evidence) in found {
                self.prove(
                    signer,
                    BlameKind::InvalidPartialSig,
                    Some(attempt),
                    evidence,
                );
            }
            return;
        }
        for (attempt, mut psigs) in by_attempt {
            psigs.sort_by_key(|p| p.2);
            // nonces[j][m]: signer j's nonce for message m.
            let mut nonces: Vec<Vec<PubNonce>> = Vec::with_capacity(n);
            let mut nonce_at = Vec::with_capacity(n);
            for j in 0..n {
                let Ok(signer) = SignerIndex::try_from(j) else {
                    break;
                };
                match self
                    .values
                    .get(&(signer, attempt, Kind::Nonce))
                    .map(Vec::as_slice)
                {
                    Some([(bytes, at)]) => {
                        let parsed: Option<Vec<PubNonce>> = bytes
                            .chunks_exact(66)
                            .map(|c| {
                                <[u8; 66]>::try_from(c)
                                    .ok()
                                    .and_then(|b| PubNonce::from_bytes(&b).ok())
                            })
                            .collect();
                        if let Some(p) = parsed.filter(|p| p.len() == k) {
                            nonces.push(p);
                            nonce_at.push(*at);
                        }
                    }
                    _ => break,
                }
            }
            if nonces.len() != n {
                self.psigs_unchecked += psigs.len();
                continue;
            }
            let mut aggregates = Vec::with_capacity(k);
            let contexts: Vec<SessionContext> = (0..k)
                .map(|m| {
                    let column: Vec<PubNonce> = nonces.iter().map(|l| l[m]).collect();
                    let aggregate = AggNonce::aggregate(&column);
                    aggregates.push(AggNonceBytes::from(aggregate));
                    SessionContext::new(&self.key_aggs[m], &aggregate, &messages[m])
                })
                .collect();
            let ours = Body::aggregate_ref(&self.ann.session_id(), attempt, &aggregates);
            for (signer, value, at) in psigs {
                // Judged only under the aggregate it names, as a node judges it (ADR 0023):
                // one made under other nonces shows that someone equivocated, not its author.
                // One that names none was sent before ADR 0023, when a mesh partial signature
                // travelled with the nonces it was made under: judged under the transcript's.
                let sigs = if value.len() == 32 * k {
                    Some(value.as_slice())
                } else {
                    value
                        .strip_suffix(ours.0.as_slice())
                        .filter(|sigs| sigs.len() == 32 * k)
                };
                let Some(sigs) = sigs else {
                    self.psigs_unchecked += 1;
                    continue;
                };
                self.psigs_checked += 1;
                let j = signer.as_usize();
                let ok = sigs.chunks_exact(32).enumerate().all(|(m, c)| {
                    <[u8; 32]>::try_from(c)
                        .ok()
                        .and_then(|b| PartialSignature::from_bytes(&b).ok())
                        .is_some_and(|p| contexts[m].verify_partial(j, &p, &nonces[j][m]).is_ok())
                });
                if !ok {
                    let mut evidence = vec![at];
                    evidence.extend(nonce_at.iter().copied());
                    self.prove(
                        signer,
                        BlameKind::InvalidPartialSig,
                        Some(attempt),
                        evidence,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use musig2_core::NonceGen;
    use musig2_proto::{Announcement, NonceCommitment, PartialSigBytes, PubNonceBytes, Tweak};
    use rand::{Rng, SeedableRng};
    use secp256k1::Keypair;

    const NOW: u64 = 1_700_000_000_000;

    fn idx(i: usize) -> SignerIndex {
        SignerIndex::try_from(i).expect("index")
    }

    /// A hand-built session: keys, announcement (one x-only tweak) and key aggregation.
    struct Fixture {
        keys: Vec<Keypair>,
        signed: SignedAnnouncement,
        ann: VerifiedAnnouncement,
        key_agg: KeyAggContext,
        seq: Vec<u64>,
    }

    impl Fixture {
        fn new(n: usize, topology: Topology) -> Fixture {
            let keys: Vec<Keypair> = (0..n).map(|_| Keypair::new(&mut rand::rng())).collect();
            let mut a = Announcement::new(
                keys.iter().map(Keypair::public_key).collect(),
                b"pay 1 BTC to Carol\x1b[2J".to_vec(),
                idx(0),
                NOW,
                NOW + 600_000,
            );
            a.messages[0].tweaks = vec![Tweak::new([3u8; 32], true).expect("tweak")];
            a.policy.topology = topology;
            let signed = a.sign(&keys[0], &Limits::default()).expect("sign");
            let ann = signed.verify(NOW, &Limits::default()).expect("verify");
            let key_agg = KeyAggContext::new(&ann.signer_keys())
                .and_then(|k| k.with_tweak(&musig2_core::Tweak::x_only([3u8; 32])?))
                .expect("key agg");
            Fixture {
                keys,
                signed,
                ann,
                key_agg,
                seq: vec![0; n],
            }
        }

        fn sign(&mut self, s: usize, body: Body) -> SignedEnvelope {
            self.seq[s] += 1;
            let seq = SeqNo::new(self.seq[s]).expect("seq");
            Envelope::sign(&self.ann, idx(s), seq, NOW + 1, body, &self.keys[s])
        }

        fn nonce(&self, s: usize) -> (musig2_core::SecNonce, PubNonce) {
            let sk = self.keys[s].secret_key();
            NonceGen::new(self.keys[s].public_key())
                .secret_key(&sk)
                .key_agg(&self.key_agg)
                .message(&self.ann.announcement().messages[0].message)
                .generate(&mut rand::rng())
                .expect("nonce")
        }

        fn transcript(
            &self,
            envelopes: Vec<SignedEnvelope>,
            outcome: Option<Outcome>,
        ) -> Transcript {
            Transcript {
                announcement: self.signed.clone(),
                envelopes,
                outcome,
                exporter: Some(idx(0)),
            }
        }

        /// A mesh session with commitments, attempt 0: commits, nonces, partial signatures
        /// (signer `bad`'s replaced by a wrong value), and the aggregate.
        fn mesh(&mut self, bad: Option<usize>) -> (Vec<SignedEnvelope>, schnorr::Signature) {
            let n = self.keys.len();
            let a = Attempt::FIRST;
            let nonces: Vec<_> = (0..n).map(|s| self.nonce(s)).collect();
            let mut out = Vec::new();
            for (s, (_, p)) in nonces.iter().enumerate() {
                let pub_nonce = PubNonceBytes::from_bytes(p.to_bytes()).expect("nonce");
                let commitment =
                    NonceCommitment::compute(&self.ann.session_id(), idx(s), a, &[pub_nonce]);
                out.push(self.sign(
                    s,
                    Body::NonceCommit {
                        attempt: a,
                        commitment,
                    },
                ));
            }
            for (s, (_, p)) in nonces.iter().enumerate() {
                let pub_nonce = PubNonceBytes::from_bytes(p.to_bytes()).expect("nonce");
                out.push(self.sign(
                    s,
                    Body::Nonce {
                        attempt: a,
                        pub_nonces: vec![pub_nonce],
                    },
                ));
            }
            let pubs: Vec<PubNonce> = nonces.iter().map(|(_, p)| *p).collect();
            let msg = self.ann.announcement().messages[0].message.clone();
            let aggregate = AggNonce::aggregate(&pubs);
            let ctx = SessionContext::new(&self.key_agg, &aggregate, &msg);
            let reference =
                Body::aggregate_ref(&self.ann.session_id(), a, &[AggNonceBytes::from(aggregate)]);
            let mut psigs = Vec::new();
            for (s, (sec, _)) in nonces.into_iter().enumerate() {
                let mut psig = ctx.sign(sec, &self.keys[s]).expect("partial sig");
                if bad == Some(s) {
                    psig = PartialSignature::from_bytes(&[7u8; 32]).expect("scalar");
                }
                psigs.push(psig);
                let partial_sig = PartialSigBytes::from_bytes(psig.to_bytes()).expect("psig");
                out.push(self.sign(
                    s,
                    Body::PartialSig {
                        attempt: a,
                        partial_sigs: vec![partial_sig],
                        aggregate: Some(reference),
                    },
                ));
            }
            let sig = ctx.aggregate(&psigs).expect("aggregate");
            (out, sig)
        }
    }

    #[test]
    fn complete_session_verifies_with_valid_signature_and_no_proofs() {
        let mut f = Fixture::new(3, Topology::Mesh);
        let (envelopes, sig) = f.mesh(None);
        let t = f.transcript(envelopes, Some(Outcome::Signed(vec![sig])));
        let report = t.verify(&TranscriptLimits::default()).expect("verifies");
        assert_eq!(report.signatures, Some((vec![sig], true)));
        assert!(report.signatures_valid());
        assert!(report.proofs.is_empty(), "{:?}", report.proofs);
        assert!(report.claims.is_empty());
        assert_eq!(report.envelopes_verified, 9);
        assert_eq!(
            (report.partial_sigs_checked, report.partial_sigs_unchecked),
            (3, 0)
        );
        assert_eq!(report.attempts, vec![Attempt::FIRST]);
        assert_eq!(report.session, f.ann.session_id());
        assert_eq!(report.messages[0].output_key, f.key_agg.x_only_key());
        let untweaked = KeyAggContext::new(&f.ann.signer_keys()).expect("agg");
        assert_eq!(report.untweaked_key, untweaked.aggregate_key());
        assert_ne!(report.untweaked_key, report.messages[0].tweaked_key);
        let text = report.to_string();
        assert!(text.contains("(valid)") && !text.contains('\x1b'), "{text}");

        // The same session with a signature that is not the aggregate's is reported invalid.
        let mut other = sig.to_byte_array();
        other[63] ^= 1;
        let t = f.transcript(
            t.envelopes.clone(),
            Some(Outcome::Signed(vec![schnorr::Signature::from_byte_array(
                other,
            )])),
        );
        let report = t.verify(&TranscriptLimits::default()).expect("consistent");
        assert_eq!(report.signatures.as_ref().map(|s| s.1), Some(false));
        assert!(!report.signatures_valid());
    }

    #[test]
    fn tampered_envelope_is_an_error_naming_its_index_and_signer() {
        let mut f = Fixture::new(3, Topology::Mesh);
        let (envelopes, sig) = f.mesh(None);
        let t = f.transcript(envelopes, Some(Outcome::Signed(vec![sig])));
        let mut bytes = t.encode();
        // The last byte of envelope 4's frame is the last byte of its signature.
        let frame = t.envelopes[4].to_frame_bytes();
        let at = bytes
            .windows(frame.len())
            .position(|w| w == frame.as_slice())
            .expect("frame in file");
        bytes[at + frame.len() - 1] ^= 0x01;
        let decoded = Transcript::decode(&bytes, &TranscriptLimits::default()).expect("decodes");
        match decoded.verify(&TranscriptLimits::default()) {
            Err(CoordinatorError::Transcript {
                envelope: Some(4),
                signer: Some(s),
                what,
            }) => {
                assert_eq!(s, idx(1));
                assert!(what.contains("envelope 4"), "{what}");
            }
            other => panic!("expected an error naming envelope 4, got {other:?}"),
        }
    }

    #[test]
    fn equivocation_is_proven_against_its_author() {
        let mut f = Fixture::new(3, Topology::Mesh);
        let (mut envelopes, _) = f.mesh(None);
        let (_, second) = f.nonce(1);
        let pub_nonce = PubNonceBytes::from_bytes(second.to_bytes()).expect("nonce");
        envelopes.push(f.sign(
            1,
            Body::Nonce {
                attempt: Attempt::FIRST,
                pub_nonces: vec![pub_nonce],
            },
        ));
        let t = f.transcript(envelopes, None);
        let report = t.verify(&TranscriptLimits::default()).expect("verifies");
        assert!(
            report.proofs.iter().any(|p| p.kind
                == BlameKind::ConflictingContribution {
                    contribution: "nonce"
                }
                && p.evidence == vec![4, 9]),
            "{:?}",
            report.proofs
        );
        assert!(
            report.proofs.iter().all(|p| p.signer == idx(1)),
            "{:?}",
            report.proofs
        );
        // Two nonces of one signer: no partial signature of that attempt can be judged.
        assert_eq!(
            (report.partial_sigs_checked, report.partial_sigs_unchecked),
            (0, 3)
        );

        // Two different envelopes under one sequence number.
        let mut f = Fixture::new(2, Topology::Mesh);
        let seq = SeqNo::new(5).expect("seq");
        let a = Envelope::sign(
            &f.ann,
            idx(1),
            seq,
            NOW,
            Body::Restart {
                attempt: Attempt::FIRST,
            },
            &f.keys[1],
        );
        let b = Envelope::sign(
            &f.ann,
            idx(1),
            seq,
            NOW + 1,
            Body::Restart {
                attempt: Attempt::FIRST,
            },
            &f.keys[1],
        );
        let honest = f.sign(
            0,
            Body::Restart {
                attempt: Attempt::FIRST,
            },
        );
        let report = f
            .transcript(vec![honest, a, b], None)
            .verify(&TranscriptLimits::default())
            .expect("verifies");
        assert_eq!(
            report.proofs,
            vec![BlameProof {
                signer: idx(1),
                kind: BlameKind::SameSequence,
                attempt: None,
                evidence: vec![1, 2]
            }]
        );
    }

    #[test]
    fn invalid_partial_signature_is_proven_against_its_author_only() {
        let mut f = Fixture::new(3, Topology::Mesh);
        let (envelopes, _) = f.mesh(Some(2));
        let outcome = Outcome::Aborted {
            reason: AbortReason::InvalidPartialSig,
            blamed: vec![idx(2)],
            origin: AbortOrigin::Local,
        };
        let report = f
            .transcript(envelopes, Some(outcome))
            .verify(&TranscriptLimits::default())
            .expect("verifies");
        assert_eq!(report.proofs.len(), 1, "{:?}", report.proofs);
        let proof = &report.proofs[0];
        assert_eq!(
            (proof.signer, proof.kind),
            (idx(2), BlameKind::InvalidPartialSig)
        );
        assert_eq!(proof.evidence, vec![8, 3, 4, 5]);
        assert_eq!(report.partial_sigs_checked, 3);
        assert_eq!(report.signatures, None);
        // The exporter's own finding is a claim too, not a proof.
        assert_eq!(report.claims.len(), 1);
        assert_eq!(report.claims[0].claimant, Some(idx(0)));
        assert_eq!(report.claims[0].source, ClaimSource::Outcome);
    }

    /// ADR 0023: a mesh partial signature is judged only under the aggregate it names; one
    /// naming none (as sent before) under the transcript's nonces.
    #[test]
    fn a_mesh_partial_signature_is_judged_under_the_aggregate_it_names() {
        let mut f = Fixture::new(3, Topology::Mesh);
        let (envelopes, _) = f.mesh(Some(2));
        let psig_of_2 = envelopes
            .iter()
            .position(|e| {
                e.envelope().signer() == idx(2)
                    && matches!(e.envelope().body(), Body::PartialSig { .. })
            })
            .expect("signer 2's partial signature");
        let Body::PartialSig {
            attempt,
            partial_sigs,
            ..
        } = envelopes[psig_of_2].envelope().body().clone()
        else {
            unreachable!()
        };
        for (aggregate, proven) in [
            (Some(musig2_proto::AggregateRef([0xAB; 32])), false),
            (None, true),
        ] {
            let mut envelopes = envelopes.clone();
            envelopes[psig_of_2] = f.sign(
                2,
                Body::PartialSig {
                    attempt,
                    partial_sigs: partial_sigs.clone(),
                    aggregate,
                },
            );
            let report = f
                .transcript(envelopes, None)
                .verify(&TranscriptLimits::default())
                .expect("verifies");
            let against_2 = report.proofs.iter().any(|p| p.signer == idx(2));
            assert_eq!(against_2, proven, "{aggregate:?}: {:?}", report.proofs);
            let unchecked = usize::from(!proven);
            assert_eq!(
                (report.partial_sigs_checked, report.partial_sigs_unchecked),
                (3 - unchecked, unchecked)
            );
        }
    }

    #[test]
    fn abort_claims_are_claims_not_proofs() {
        let mut f = Fixture::new(3, Topology::Mesh);
        let (mut envelopes, _) = f.mesh(None);
        // Signer 1 blames honest signer 0 without evidence.
        envelopes.push(f.sign(
            1,
            Body::Abort {
                reason: AbortReason::InvalidPartialSig,
                blamed: Some(idx(0)),
            },
        ));
        let outcome = Outcome::Aborted {
            reason: AbortReason::InvalidPartialSig,
            blamed: vec![idx(0)],
            origin: AbortOrigin::Remote(idx(1)),
        };
        let report = f
            .transcript(envelopes, Some(outcome))
            .verify(&TranscriptLimits::default())
            .expect("verifies");
        assert!(report.proofs.is_empty(), "{:?}", report.proofs);
        assert_eq!(
            report.claims[0],
            Claim {
                claimant: Some(idx(1)),
                reason: AbortReason::InvalidPartialSig,
                blamed: vec![idx(0)],
                source: ClaimSource::Envelope(9)
            }
        );
        assert_eq!(report.claims[1].claimant, Some(idx(1)));
        assert_eq!(report.claims[1].source, ClaimSource::Outcome);
    }

    #[test]
    fn commitment_mismatch_is_proven() {
        let mut f = Fixture::new(2, Topology::Mesh);
        let a = Attempt::FIRST;
        let (_, committed) = f.nonce(0);
        let (_, revealed) = f.nonce(0);
        let session = f.ann.session_id();
        let committed = PubNonceBytes::from_bytes(committed.to_bytes()).expect("nonce");
        let pub_nonce = PubNonceBytes::from_bytes(revealed.to_bytes()).expect("nonce");
        let commitment = NonceCommitment::compute(&session, idx(0), a, &[committed]);
        let envelopes = vec![
            f.sign(
                0,
                Body::NonceCommit {
                    attempt: a,
                    commitment,
                },
            ),
            f.sign(
                0,
                Body::Nonce {
                    attempt: a,
                    pub_nonces: vec![pub_nonce],
                },
            ),
        ];
        let report = f
            .transcript(envelopes, None)
            .verify(&TranscriptLimits::default())
            .expect("verifies");
        assert_eq!(
            report.proofs,
            vec![BlameProof {
                signer: idx(0),
                kind: BlameKind::CommitmentMismatch,
                attempt: Some(a),
                evidence: vec![0, 1]
            }]
        );
    }

    /// A star attempt: every signer's nonce pair and its verified Nonce envelope.
    fn star_nonces(
        f: &mut Fixture,
        a: Attempt,
    ) -> (
        Vec<(musig2_core::SecNonce, PubNonce)>,
        Vec<musig2_proto::VerifiedEnvelope>,
    ) {
        let nonces: Vec<_> = (0..3).map(|s| f.nonce(s)).collect();
        let verified = nonces
            .iter()
            .enumerate()
            .map(|(s, (_, p))| {
                let pub_nonce = PubNonceBytes::from_bytes(p.to_bytes()).expect("nonce");
                f.sign(
                    s,
                    Body::Nonce {
                        attempt: a,
                        pub_nonces: vec![pub_nonce],
                    },
                )
                .verify(&f.ann)
                .expect("verify")
            })
            .collect();
        (nonces, verified)
    }

    /// Signer `s`'s partial signature under `agg`, naming it (star).
    fn star_psig(
        f: &mut Fixture,
        s: usize,
        a: Attempt,
        sec: musig2_core::SecNonce,
        agg: musig2_proto::AggNonceBytes,
    ) -> SignedEnvelope {
        let msg = f.ann.announcement().messages[0].message.clone();
        let core_agg = agg.to_core();
        let ctx = SessionContext::new(&f.key_agg, &core_agg, &msg);
        let psig = ctx.sign(sec, &f.keys[s]).expect("sign");
        let id = f.ann.session_id();
        f.sign(
            s,
            Body::PartialSig {
                attempt: a,
                partial_sigs: vec![PartialSigBytes::from_bytes(psig.to_bytes()).expect("psig")],
                aggregate: Some(Body::aggregate_ref(&id, a, &[agg])),
            },
        )
    }

    #[test]
    fn star_lying_aggregator_is_proven_by_its_nonce_set_and_honest_psigs_stay_valid() {
        let mut f = Fixture::new(3, Topology::Star);
        let a = Attempt::FIRST;
        let (nonces, verified) = star_nonces(&mut f, a);
        let (_, set) = Body::aggregate_nonce(&f.ann, a, &verified).expect("aggregate");
        let Body::NonceSet {
            nonces: relayed, ..
        } = &set
        else {
            panic!("nonce set body")
        };
        // The coordinator commits to the true set but sends an aggregate of its own nonce only.
        let wrong = musig2_proto::AggNonceBytes::aggregate(&relayed[0].pub_nonces).expect("agg");
        let lie = Body::AggregateNonce {
            attempt: a,
            agg_nonces: vec![wrong],
            nonce_set: Body::nonce_set_digest(&f.ann.session_id(), a, relayed),
        };
        // Signer 1's view: the lie, its own partial signature made under it, the revealed set.
        let [_, (sec1, _), _] = nonces.try_into().map_err(|_| ()).expect("three");
        let envelopes = vec![
            f.sign(0, lie),
            star_psig(&mut f, 1, a, sec1, wrong),
            f.sign(0, set),
        ];
        let report = f
            .transcript(envelopes, None)
            .verify(&TranscriptLimits::default())
            .expect("verifies");
        // The honest partial signature is judged under the aggregate it names, and is valid.
        assert_eq!(report.partial_sigs_checked, 1);
        assert_eq!(
            report.proofs,
            vec![BlameProof {
                signer: idx(0),
                kind: BlameKind::AggregateNonceMismatch,
                attempt: Some(a),
                evidence: vec![0, 2]
            }]
        );
    }

    #[test]
    fn star_revealed_set_that_is_not_the_committed_one_proves_the_aggregator() {
        let mut f = Fixture::new(3, Topology::Star);
        let a = Attempt::FIRST;
        let (_, verified) = star_nonces(&mut f, a);
        let (agg, set) = Body::aggregate_nonce(&f.ann, a, &verified).expect("aggregate");
        let Body::AggregateNonce { agg_nonces, .. } = &agg else {
            panic!("aggregate body")
        };
        let other = Body::AggregateNonce {
            attempt: a,
            agg_nonces: agg_nonces.clone(),
            nonce_set: musig2_proto::NonceSetDigest([9; 32]),
        };
        let envelopes = vec![f.sign(0, other), f.sign(0, set)];
        let report = f
            .transcript(envelopes, None)
            .verify(&TranscriptLimits::default())
            .expect("verifies");
        assert_eq!(report.proofs.len(), 1);
        assert_eq!(report.proofs[0].signer, idx(0));
        assert_eq!(report.proofs[0].kind, BlameKind::AggregateNonceMismatch);
    }

    #[test]
    fn star_bad_partial_sig_is_proven_from_the_revealed_set() {
        let mut f = Fixture::new(3, Topology::Star);
        let a = Attempt::FIRST;
        let (nonces, verified) = star_nonces(&mut f, a);
        let (agg, set) = Body::aggregate_nonce(&f.ann, a, &verified).expect("aggregate");
        let Body::AggregateNonce { agg_nonces, .. } = &agg else {
            panic!("aggregate body")
        };
        let good = agg_nonces[0];
        let [_, (sec1, _), (sec2, _)] = nonces.try_into().map_err(|_| ()).expect("three");
        let psig1 = star_psig(&mut f, 1, a, sec1, good);
        // Signer 2 signs correctly, then sends garbage naming the right aggregate.
        drop(sec2);
        let id = f.ann.session_id();
        let psig2 = f.sign(
            2,
            Body::PartialSig {
                attempt: a,
                partial_sigs: vec![PartialSigBytes::from_bytes([7; 32]).expect("scalar")],
                aggregate: Some(Body::aggregate_ref(&id, a, &[good])),
            },
        );
        // A member's transcript of a failed session: aggregate, revealed set, partial sigs.
        let envelopes = vec![f.sign(0, agg.clone()), f.sign(0, set), psig1, psig2];
        let report = f
            .transcript(envelopes.clone(), None)
            .verify(&TranscriptLimits::default())
            .expect("verifies");
        assert_eq!(report.partial_sigs_checked, 2);
        assert_eq!(
            report.proofs,
            vec![BlameProof {
                signer: idx(2),
                kind: BlameKind::InvalidPartialSig,
                attempt: Some(a),
                evidence: vec![3, 0, 1]
            }]
        );
        // Without the aggregate it names, a partial signature is not judged.
        let report = f
            .transcript(envelopes[1..].to_vec(), None)
            .verify(&TranscriptLimits::default())
            .expect("verifies");
        assert_eq!(report.partial_sigs_checked, 0);
        assert_eq!(report.partial_sigs_unchecked, 2);
        assert!(report.proofs.is_empty());
    }

    #[test]
    fn encoding_round_trips_and_garbage_never_panics() {
        let mut f = Fixture::new(3, Topology::Mesh);
        let (envelopes, sig) = f.mesh(None);
        let limits = TranscriptLimits::default();
        let mut stored = StoredSession::new(f.signed.clone(), NOW);
        stored.envelopes = envelopes;
        stored.outcome = Some((
            Outcome::Aborted {
                reason: AbortReason::Restarted,
                blamed: vec![idx(2), idx(1)],
                origin: AbortOrigin::Remote(idx(2)),
            },
            NOW,
        ));
        for t in [
            Transcript::from_stored(&stored, Some(idx(1))),
            Transcript {
                outcome: Some(Outcome::Signed(vec![sig])),
                exporter: None,
                ..Transcript::from_stored(&stored, None)
            },
            Transcript {
                outcome: None,
                envelopes: Vec::new(),
                ..Transcript::from_stored(&stored, None)
            },
        ] {
            let bytes = t.encode();
            assert_eq!(Transcript::decode(&bytes, &limits).expect("decodes"), t);
        }
        for reason in crate::store::ABORT_REASONS {
            let code = crate::store::abort_reason_code(reason);
            assert_eq!(crate::store::abort_reason_from_code(code), Some(reason));
        }

        let good = Transcript::from_stored(&stored, Some(idx(1))).encode();
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(Transcript::decode(&trailing, &limits).is_err());
        for cut in 0..good.len() {
            assert!(
                Transcript::decode(&good[..cut], &limits).is_err(),
                "prefix {cut}"
            );
        }
        let small = TranscriptLimits {
            max_file_bytes: good.len() - 1,
            ..limits
        };
        assert!(Transcript::decode(&good, &small).is_err());
        let few = TranscriptLimits {
            max_envelopes: 8,
            ..limits
        };
        assert!(Transcript::decode(&good, &few).is_err());
        // A huge envelope count in a short file: refused without allocating for it.
        let mut huge = good[..9].to_vec();
        let ann = f.signed.to_frame_bytes();
        put_len(&mut huge, ann.len());
        huge.extend_from_slice(&ann);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let unlimited = TranscriptLimits {
            max_envelopes: usize::MAX,
            ..limits
        };
        assert!(Transcript::decode(&huge, &unlimited).is_err());

        // Mutations of a valid file, and random bytes: errors, never panics.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for round in 0..3000 {
            let mut bytes = if round % 10 == 0 {
                let mut b = TRANSCRIPT_MAGIC.to_vec();
                b.push(TRANSCRIPT_VERSION);
                let len = rng.random_range(0..200);
                b.extend((0..len).map(|_| rng.random::<u8>()));
                b
            } else {
                good.clone()
            };
            for _ in 0..rng.random_range(1..4) {
                if bytes.is_empty() {
                    break;
                }
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[at] ^= 1 << rng.random_range(0..8),
                    1 => bytes[at] = rng.random(),
                    _ => bytes.truncate(at),
                }
            }
            if let Ok(t) = Transcript::decode(&bytes, &limits) {
                // Whatever decodes either verifies or fails with a typed error.
                let _ = t.verify(&limits);
            }
        }
    }
}
