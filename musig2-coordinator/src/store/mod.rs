//! What a node keeps across restarts, behind one trait.
//!
//! The [`SessionMachine`](crate::SessionMachine) states what must be durable as
//! [`Record`]s among its outputs; the node commits them (all records produced together, across
//! sessions, in one transaction) **before** any frame produced with them leaves the node. If a
//! commit fails, nothing is sent and the sessions concerned abort locally.
//!
//! Stored: the verified announcement of every session this node joined or created, every
//! envelope it verified or signed in it (so the transcript stays verifiable), its sequence-number
//! reservation, the current attempt, and the outcome. **Never** a secret nonce: a restarted
//! node that had sent a public nonce cannot sign with it again and starts a new attempt instead
//! (see `docs/adr/0007-durable-sessions.md`).
//!
//! Implementations: [`MemoryStore`] (tests, and nodes that need no durability) and
//! [`RedbStore`] (one file on disk, each commit one transaction synced before it returns).

mod memory;
mod redb;

pub use self::memory::{MemorySnapshot, MemoryStore};
pub use self::redb::RedbStore;

use musig2_proto::{
    AbortReason, Attempt, SeqNo, SessionId, SignedAnnouncement, SignedEnvelope, SignerIndex,
};
use secp256k1::schnorr;

use crate::error::Result;
use crate::event::AbortOrigin;

/// Sequence numbers reserved per store write: a restart continues after the reservation, so it
/// never reuses a number it may have sent, and the store is written once per this many
/// envelopes (below every sane `max_seq_gap`).
pub const SEQ_RESERVATION_BLOCK: u64 = 16;

/// One fact a session needs after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record {
    /// A session this node takes part in (first record of every session).
    Session {
        /// The verified announcement, as signed by its creator.
        announcement: SignedAnnouncement,
        /// When this node learned of it (ms since the UNIX epoch).
        learned_ms: u64,
    },
    /// An envelope of the session, verified (received) or signed by this node (before it is
    /// sent). Its session is the envelope's.
    Envelope(SignedEnvelope),
    /// This node may have used every sequence number below `next` in the session.
    SeqReserved {
        /// The session.
        session: SessionId,
        /// The first number a restart may use.
        next: SeqNo,
    },
    /// The session moved to a new attempt.
    Attempt {
        /// The session.
        session: SessionId,
        /// The attempt now current.
        attempt: Attempt,
    },
    /// The session finished.
    Outcome {
        /// The session.
        session: SessionId,
        /// How.
        outcome: Outcome,
        /// When (ms since the UNIX epoch), for retention.
        at_ms: u64,
    },
}

impl Record {
    /// The session the record belongs to.
    pub fn session_id(&self) -> SessionId {
        match self {
            Record::Session { announcement, .. } => announcement.session_id(),
            Record::Envelope(envelope) => envelope.envelope().session_id(),
            Record::SeqReserved { session, .. }
            | Record::Attempt { session, .. }
            | Record::Outcome { session, .. } => *session,
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// With these verified BIP340 signatures, one per message.
    Signed(Vec<schnorr::Signature>),
    /// Without a signature.
    Aborted {
        /// Why.
        reason: AbortReason,
        /// Signers blamed.
        blamed: Vec<SignerIndex>,
        /// Whose finding or claim it was.
        origin: AbortOrigin,
    },
}

/// Everything stored about one session: the records folded together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The announcement, as signed by its creator.
    pub announcement: SignedAnnouncement,
    /// When this node learned of the session (ms since the UNIX epoch).
    pub learned_ms: u64,
    /// Every envelope recorded, in the order recorded (each once).
    pub envelopes: Vec<SignedEnvelope>,
    /// The first sequence number a restart may use.
    pub next_seq: SeqNo,
    /// The current attempt.
    pub attempt: Attempt,
    /// The outcome and when it was reached, once finished.
    pub outcome: Option<(Outcome, u64)>,
}

impl StoredSession {
    /// A session as its first record describes it.
    pub fn new(announcement: SignedAnnouncement, learned_ms: u64) -> Self {
        StoredSession {
            announcement,
            learned_ms,
            envelopes: Vec::new(),
            next_seq: SeqNo::FIRST,
            attempt: Attempt::FIRST,
            outcome: None,
        }
    }

    /// The session id.
    pub fn session_id(&self) -> SessionId {
        self.announcement.session_id()
    }

    /// The records that rebuild this session in a store.
    pub fn to_records(&self) -> Vec<Record> {
        let id = self.session_id();
        let mut records = vec![Record::Session {
            announcement: self.announcement.clone(),
            learned_ms: self.learned_ms,
        }];
        records.extend(self.envelopes.iter().cloned().map(Record::Envelope));
        records.push(Record::SeqReserved {
            session: id,
            next: self.next_seq,
        });
        records.push(Record::Attempt {
            session: id,
            attempt: self.attempt,
        });
        if let Some((outcome, at_ms)) = &self.outcome {
            records.push(Record::Outcome {
                session: id,
                outcome: outcome.clone(),
                at_ms: *at_ms,
            });
        }
        records
    }

    /// Folds one record of this session in. Sequence reservations and attempts only move
    /// forward; an envelope already held is not added twice; the first outcome stays.
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Session { .. } => {}
            Record::Envelope(envelope) => {
                if !self.envelopes.contains(envelope) {
                    self.envelopes.push(envelope.clone());
                }
            }
            Record::SeqReserved { next, .. } => self.next_seq = self.next_seq.max(*next),
            Record::Attempt { attempt, .. } => self.attempt = self.attempt.max(*attempt),
            Record::Outcome { outcome, at_ms, .. } => {
                if self.outcome.is_none() {
                    self.outcome = Some((outcome.clone(), *at_ms));
                }
            }
        }
    }
}

/// Every abort reason, in the order of their stored codes.
pub(crate) const ABORT_REASONS: [AbortReason; 13] = [
    AbortReason::Timeout,
    AbortReason::Expired,
    AbortReason::InvalidNonce,
    AbortReason::CommitmentMismatch,
    AbortReason::InvalidPartialSig,
    AbortReason::InvalidAggregateNonce,
    AbortReason::Equivocation,
    AbortReason::FailoverExhausted,
    AbortReason::Cancelled,
    AbortReason::Internal,
    AbortReason::Misrouted,
    AbortReason::Restarted,
    AbortReason::InvalidClaim,
];

/// The code of an abort reason in what this crate writes to files (the store, transcripts):
/// fixed here, never reused; exhaustive, so a new reason cannot be forgotten.
pub(crate) fn abort_reason_code(reason: AbortReason) -> u8 {
    match reason {
        AbortReason::Timeout => 0,
        AbortReason::Expired => 1,
        AbortReason::InvalidNonce => 2,
        AbortReason::CommitmentMismatch => 3,
        AbortReason::InvalidPartialSig => 4,
        AbortReason::InvalidAggregateNonce => 5,
        AbortReason::Equivocation => 6,
        AbortReason::FailoverExhausted => 7,
        AbortReason::Cancelled => 8,
        AbortReason::Internal => 9,
        AbortReason::Misrouted => 10,
        AbortReason::Restarted => 11,
        AbortReason::InvalidClaim => 12,
    }
}

/// The reason of a stored code, if it is one.
pub(crate) fn abort_reason_from_code(code: u8) -> Option<AbortReason> {
    ABORT_REASONS
        .into_iter()
        .find(|r| abort_reason_code(*r) == code)
}

/// Size of what a store holds, for monitoring and for checking that retention keeps it flat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StoreUsage {
    /// Sessions held.
    pub sessions: usize,
    /// Envelopes held, over all sessions.
    pub envelopes: usize,
    /// Bytes the store occupies (its file, for a durable store; the encoded records in memory).
    pub bytes: u64,
}

/// Where a node keeps its sessions.
///
/// Calls are synchronous and may block (a durable store waits for the disk); the node runs a
/// store that says it [`is_durable`](SessionStore::is_durable) off its async task.
pub trait SessionStore: Send + 'static {
    /// Makes `records` durable, all or none, in one transaction. Records may belong to many
    /// sessions; a session's first record is [`Record::Session`] (records of a session the
    /// store does not hold and that is not introduced in the same call are an error).
    fn commit(&mut self, records: &[Record]) -> Result<()>;

    /// Every session held.
    fn load_all(&self) -> Result<Vec<StoredSession>>;

    /// One session, if held.
    fn load(&self, session: &SessionId) -> Result<Option<StoredSession>>;

    /// Forgets these sessions (absent ones are ignored), in one transaction.
    fn remove(&mut self, sessions: &[SessionId]) -> Result<()>;

    /// In one transaction: forgets `sessions` (as [`remove`](Self::remove)), remembers each id
    /// in `remember` until its time (ms since the UNIX epoch: the announcement's expiry), and
    /// drops the remembered ids in `expired`. A node that restarts reads them back
    /// ([`load_forgotten`](Self::load_forgotten)), so a replayed announcement of a session it
    /// finished and forgot does not bring the session back (`Config::max_forgotten_sessions`).
    /// The default only removes: a store that keeps no ids loses that guard on a restart.
    fn forget(
        &mut self,
        sessions: &[SessionId],
        remember: &[(SessionId, u64)],
        expired: &[SessionId],
    ) -> Result<()> {
        let _ = (remember, expired);
        self.remove(sessions)
    }

    /// The ids [`forget`](Self::forget) remembers, with their times (any order).
    fn load_forgotten(&self) -> Result<Vec<(SessionId, u64)>> {
        Ok(Vec::new())
    }

    /// What the store holds.
    fn usage(&self) -> Result<StoreUsage>;

    /// Whether commits wait for the disk (the node then commits off its async task).
    fn is_durable(&self) -> bool {
        false
    }
}

impl<S: SessionStore + ?Sized> SessionStore for Box<S> {
    fn commit(&mut self, records: &[Record]) -> Result<()> {
        (**self).commit(records)
    }
    fn load_all(&self) -> Result<Vec<StoredSession>> {
        (**self).load_all()
    }
    fn load(&self, session: &SessionId) -> Result<Option<StoredSession>> {
        (**self).load(session)
    }
    fn remove(&mut self, sessions: &[SessionId]) -> Result<()> {
        (**self).remove(sessions)
    }
    fn forget(
        &mut self,
        sessions: &[SessionId],
        remember: &[(SessionId, u64)],
        expired: &[SessionId],
    ) -> Result<()> {
        (**self).forget(sessions, remember, expired)
    }
    fn load_forgotten(&self) -> Result<Vec<(SessionId, u64)>> {
        (**self).load_forgotten()
    }
    fn usage(&self) -> Result<StoreUsage> {
        (**self).usage()
    }
    fn is_durable(&self) -> bool {
        (**self).is_durable()
    }
}
