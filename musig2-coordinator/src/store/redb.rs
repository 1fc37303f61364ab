//! A store in one file on disk, on [`redb`](::redb): every commit is one ACID write transaction
//! that returns only once it is on disk.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::path::{Path, PathBuf};

use ::redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use musig2_proto::{
    Attempt, Limits, SeqNo, SessionId, SignedAnnouncement, SignedEnvelope, SignerIndex,
};
use secp256k1::schnorr;
use serde::{Deserialize, Serialize};

use super::{Outcome, Record, SessionStore, StoreUsage, StoredSession};
use crate::error::{CoordinatorError, Result};
use crate::event::AbortOrigin;

/// Session id → [`FORMAT_V2`] byte + postcard [`MetaV2`]: the small part of a session that
/// changes (rewritten on a reservation, an attempt or the outcome).
const SESSIONS: TableDefinition<'_, [u8; 32], &[u8]> = TableDefinition::new("sessions");
/// Session id → the announcement's frame bytes, written once (kept apart from the meta so
/// that updating the meta never rewrites a large announcement).
const ANNOUNCEMENTS: TableDefinition<'_, [u8; 32], &[u8]> = TableDefinition::new("announcements");
/// (Session id, ordinal from 0) → an envelope's frame bytes, in first-commit order: appending
/// one writes one entry.
const ENVELOPES: TableDefinition<'_, ([u8; 32], u32), &[u8]> = TableDefinition::new("envelopes");
/// (Session id, signing hash, signature) of every envelope held: an envelope is held once.
/// Hash and signature together identify the envelope exactly (the signing hash covers every
/// other field).
const ENVELOPE_IDS: TableDefinition<'_, EnvelopeIdKey, ()> = TableDefinition::new("envelope_ids");

/// Session id of a finished session the node forgot → until when it is remembered (ms since
/// the UNIX epoch: its announcement's expiry), so a restarted node still refuses a replay of
/// it ([`SessionStore::forget`]).
const FORGOTTEN: TableDefinition<'_, [u8; 32], u64> = TableDefinition::new("forgotten");

/// Key of [`ENVELOPE_IDS`].
type EnvelopeIdKey = ([u8; 32], [u8; 32], [u8; 64]);

/// The four tables, open for writing in one transaction.
struct WriteTables<'txn> {
    sessions: redb::Table<'txn, [u8; 32], &'static [u8]>,
    announcements: redb::Table<'txn, [u8; 32], &'static [u8]>,
    envelopes: redb::Table<'txn, ([u8; 32], u32), &'static [u8]>,
    envelope_ids: redb::Table<'txn, EnvelopeIdKey, ()>,
}

impl<'txn> WriteTables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Self> {
        Ok(WriteTables {
            sessions: txn
                .open_table(SESSIONS)
                .map_err(store_err("opening table sessions"))?,
            announcements: txn
                .open_table(ANNOUNCEMENTS)
                .map_err(store_err("opening table announcements"))?,
            envelopes: txn
                .open_table(ENVELOPES)
                .map_err(store_err("opening table envelopes"))?,
            envelope_ids: txn
                .open_table(ENVELOPE_IDS)
                .map_err(store_err("opening table envelope_ids"))?,
        })
    }
}

/// Leading byte of every meta value, so a later layout can be told apart.
/// Version 2: one signature per message (version 1, before multi-message sessions, stored
/// one; its announcements are of an older protocol and are not read either).
const FORMAT_V2: u8 = 2;

/// Sessions kept in one [`redb`](::redb) file; [`commit`](SessionStore::commit) returns once the
/// transaction is on disk ([`Durability::Immediate`]), so a record survives a crash of the
/// process or the machine from then on.
///
/// All records of one `commit` go in one write transaction, whatever their sessions: a node
/// that commits the records of many sessions together pays for one disk sync. An envelope is
/// appended as one table entry (a session is never rewritten whole).
///
/// Values read back are size-checked against the [`Limits`] the store was opened with, then
/// decoded; data that does not decode gives [`CoordinatorError::Store`].
///
/// ```
/// use musig2_coordinator::{Record, RedbStore, SessionStore};
/// use musig2_proto::{Announcement, Limits, MessageToSign, Policy, SignerIndex, SignerInfo};
/// use secp256k1::Keypair;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let path = std::env::temp_dir().join(format!(
///     "musig2-redb-doc-{}-{}.redb",
///     std::process::id(),
///     rand::random::<u64>()
/// ));
/// let creator = Keypair::new(&mut rand::rng());
/// let other = Keypair::new(&mut rand::rng());
/// let announcement = Announcement {
///     signers: vec![
///         SignerInfo::new(creator.public_key()),
///         SignerInfo::new(other.public_key()),
///     ],
///     messages: vec![MessageToSign::new(b"pay 1 BTC to Carol".to_vec())],
///     creator: SignerIndex::new(0)?,
///     policy: Policy::default(),
///     salt: [7; 32],
///     created_at_ms: 1,
///     expires_at_ms: 10_000_000,
///     document_digest: None,
/// }
/// .sign(&creator, &Limits::default())?;
/// let session = announcement.session_id();
///
/// let mut store = RedbStore::open(&path, Limits::default())?;
/// store.commit(&[Record::Session { announcement, learned_ms: 5 }])?;
/// drop(store);
///
/// // A restarted process reopens the file.
/// let store = RedbStore::open(&path, Limits::default())?;
/// assert_eq!(store.load(&session)?.map(|s| s.learned_ms), Some(5));
/// # drop(store);
/// # std::fs::remove_file(&path)?;
/// # Ok(())
/// # }
/// ```
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    limits: Limits,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Wraps a lower-level error with what the store was doing.
fn store_err<E: Display>(context: &'static str) -> impl FnOnce(E) -> CoordinatorError {
    move |e| CoordinatorError::Store(format!("{context}: {e}"))
}

impl RedbStore {
    /// Opens the store in the file at `path`, creating it (and its tables) if absent.
    ///
    /// `limits` are the node's: a stored frame larger than they allow is refused on commit and
    /// reported as corrupt on load.
    pub fn open(path: impl AsRef<Path>, limits: Limits) -> Result<RedbStore> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path)
            .map_err(|e| CoordinatorError::Store(format!("opening {}: {e}", path.display())))?;
        let store = RedbStore { db, path, limits };
        // Create the tables now, so that reads never meet a missing table.
        let txn = store.begin_write()?;
        WriteTables::open(&txn)?;
        txn.open_table(FORGOTTEN)
            .map_err(store_err("opening table forgotten"))?;
        txn.commit().map_err(store_err("creating tables"))?;
        Ok(store)
    }

    /// The file the store is kept in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn begin_write(&self) -> Result<WriteTransaction> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(store_err("beginning a write transaction"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(store_err("setting durability"))?;
        Ok(txn)
    }

    /// Largest meta value a well-formed store holds: fixed fields, a signature, and one blamed
    /// index (at most 3 bytes as a varint) per signer.
    fn max_meta_bytes(&self) -> usize {
        256 + 3 * self.limits.max_signers
    }

    /// Reads one session whose meta value is `meta`, with its announcement and envelopes.
    fn read_session(
        &self,
        id: [u8; 32],
        meta: &[u8],
        announcements: &impl ReadableTable<[u8; 32], &'static [u8]>,
        envelopes: &impl ReadableTable<([u8; 32], u32), &'static [u8]>,
    ) -> Result<StoredSession> {
        let session = SessionId::from_bytes(id);
        let corrupt = |why: String| CoordinatorError::Store(format!("session {session}: {why}"));
        let meta = decode_meta(meta, self.max_meta_bytes()).map_err(corrupt)?;
        let announcement = {
            let guard = announcements
                .get(id)
                .map_err(store_err("reading an announcement"))?
                .ok_or_else(|| corrupt("no announcement stored".into()))?;
            let bytes = guard.value();
            self.check_frame_len(bytes.len(), "stored announcement")
                .map_err(corrupt)?;
            SignedAnnouncement::decode(bytes, &self.limits)
                .map_err(|e| corrupt(format!("stored announcement: {e}")))?
        };
        if announcement.session_id() != session {
            return Err(corrupt(format!(
                "the stored announcement is of session {}",
                announcement.session_id()
            )));
        }
        let mut held = Vec::new();
        for entry in envelopes
            .range((id, 0)..=(id, u32::MAX))
            .map_err(store_err("reading envelopes"))?
        {
            let (_, value) = entry.map_err(store_err("reading an envelope"))?;
            let bytes = value.value();
            self.check_frame_len(bytes.len(), "stored envelope")
                .map_err(corrupt)?;
            let envelope = SignedEnvelope::decode(bytes, &self.limits)
                .map_err(|e| corrupt(format!("stored envelope: {e}")))?;
            if envelope.envelope().session_id() != session {
                return Err(corrupt(format!(
                    "a stored envelope is of session {}",
                    envelope.envelope().session_id()
                )));
            }
            held.push(envelope);
        }
        let mut stored = StoredSession::new(announcement, meta.learned_ms);
        stored.envelopes = held;
        stored.next_seq =
            SeqNo::new(meta.next_seq).map_err(|e| corrupt(format!("next sequence: {e}")))?;
        stored.attempt =
            Attempt::new(meta.attempt).map_err(|e| corrupt(format!("attempt: {e}")))?;
        stored.outcome = meta
            .outcome
            .map(outcome_from_disk)
            .transpose()
            .map_err(corrupt)?;
        Ok(stored)
    }

    fn check_frame_len(&self, len: usize, what: &str) -> Result<(), String> {
        if len > self.limits.max_frame_bytes {
            return Err(format!(
                "{what} of {len} bytes exceeds max_frame_bytes ({})",
                self.limits.max_frame_bytes
            ));
        }
        Ok(())
    }
}

/// A session touched by the commit in progress.
struct Touched {
    meta: MetaV2,
    /// The meta must be written back.
    dirty: bool,
    /// Ordinal of the next envelope appended.
    next_ordinal: u32,
}

/// The held session `id` as a commit starts changing it, if held.
fn read_touched(
    id: SessionId,
    sessions: &impl ReadableTable<[u8; 32], &'static [u8]>,
    envelopes: &impl ReadableTable<([u8; 32], u32), &'static [u8]>,
    max_meta_bytes: usize,
) -> Result<Option<Touched>> {
    let key = id.to_bytes();
    let Some(value) = sessions.get(key).map_err(store_err("reading a session"))? else {
        return Ok(None);
    };
    let meta = decode_meta(value.value(), max_meta_bytes)
        .map_err(|why| CoordinatorError::Store(format!("session {id}: {why}")))?;
    // Ordinals are dense from 0 (a session's envelopes are only ever removed all together).
    let next_ordinal = match envelopes
        .range((key, 0)..=(key, u32::MAX))
        .map_err(store_err("reading envelopes"))?
        .next_back()
    {
        Some(last) => {
            let (k, _) = last.map_err(store_err("reading envelopes"))?;
            k.value().1.checked_add(1).ok_or_else(|| {
                CoordinatorError::Store(format!("session {id}: envelope ordinals exhausted"))
            })?
        }
        None => 0,
    };
    Ok(Some(Touched {
        meta,
        dirty: false,
        next_ordinal,
    }))
}

impl SessionStore for RedbStore {
    fn commit(&mut self, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            // Nothing to make durable: spare the disk sync.
            return Ok(());
        }
        // Each record's frame, encoded once; one that a load would refuse is refused before
        // anything is written.
        let mut frames = Vec::with_capacity(records.len());
        for record in records {
            let frame = match record {
                Record::Session { announcement, .. } => {
                    Some((announcement.to_frame_bytes(), "announcement"))
                }
                Record::Envelope(envelope) => Some((envelope.to_frame_bytes(), "envelope")),
                _ => None,
            };
            if let Some((bytes, what)) = &frame {
                self.check_frame_len(bytes.len(), what).map_err(|why| {
                    CoordinatorError::Store(format!(
                        "session {}: refused: {why}",
                        record.session_id()
                    ))
                })?;
            }
            frames.push(frame.map(|(bytes, _)| bytes));
        }

        // Dropping the transaction on any error below aborts it: nothing of the commit stays.
        let txn = self.begin_write()?;
        {
            let WriteTables {
                mut sessions,
                mut announcements,
                mut envelopes,
                mut envelope_ids,
            } = WriteTables::open(&txn)?;

            // All or none: every record's session is held or introduced in this call.
            let introduced: HashSet<SessionId> = records
                .iter()
                .filter(|r| matches!(r, Record::Session { .. }))
                .map(Record::session_id)
                .collect();
            let mut checked = HashSet::new();
            for record in records {
                let id = record.session_id();
                if !introduced.contains(&id)
                    && checked.insert(id)
                    && sessions
                        .get(id.to_bytes())
                        .map_err(store_err("reading a session"))?
                        .is_none()
                {
                    return Err(CoordinatorError::Store(format!(
                        "a record for session {id}, which the store does not hold"
                    )));
                }
            }

            // Sessions read or created in this call; `None`: not held yet (a record before its
            // session's introduction in the same call is skipped, as `MemoryStore` does).
            let mut touched: HashMap<SessionId, Option<Touched>> = HashMap::new();
            for (record, frame) in records.iter().zip(&frames) {
                let frame = frame.as_deref().unwrap_or_default();
                let id = record.session_id();
                let key = id.to_bytes();
                let entry = match touched.entry(id) {
                    Entry::Occupied(held) => held.into_mut(),
                    Entry::Vacant(slot) => slot.insert(read_touched(
                        id,
                        &sessions,
                        &envelopes,
                        self.max_meta_bytes(),
                    )?),
                };
                match record {
                    Record::Session { learned_ms, .. } => {
                        // The first introduction stays.
                        if entry.is_none() {
                            announcements
                                .insert(key, frame)
                                .map_err(store_err("writing an announcement"))?;
                            *entry = Some(Touched {
                                meta: MetaV2 {
                                    learned_ms: *learned_ms,
                                    next_seq: SeqNo::FIRST.get(),
                                    attempt: Attempt::FIRST.get(),
                                    outcome: None,
                                },
                                dirty: true,
                                next_ordinal: 0,
                            });
                        }
                    }
                    Record::Envelope(envelope) => {
                        let Some(held) = entry else { continue };
                        let envelope_id = (
                            key,
                            envelope.envelope().signing_hash(),
                            *envelope.signature(),
                        );
                        if envelope_ids
                            .insert(envelope_id, ())
                            .map_err(store_err("writing an envelope id"))?
                            .is_none()
                        {
                            envelopes
                                .insert((key, held.next_ordinal), frame)
                                .map_err(store_err("writing an envelope"))?;
                            held.next_ordinal =
                                held.next_ordinal.checked_add(1).ok_or_else(|| {
                                    CoordinatorError::Store(format!(
                                        "session {id}: envelope ordinals exhausted"
                                    ))
                                })?;
                        }
                    }
                    Record::SeqReserved { next, .. } => {
                        let Some(held) = entry else { continue };
                        if next.get() > held.meta.next_seq {
                            held.meta.next_seq = next.get();
                            held.dirty = true;
                        }
                    }
                    Record::Attempt { attempt, .. } => {
                        let Some(held) = entry else { continue };
                        if attempt.get() > held.meta.attempt {
                            held.meta.attempt = attempt.get();
                            held.dirty = true;
                        }
                    }
                    Record::Outcome { outcome, at_ms, .. } => {
                        let Some(held) = entry else { continue };
                        if held.meta.outcome.is_none() {
                            held.meta.outcome = Some(outcome_to_disk(outcome, *at_ms));
                            held.dirty = true;
                        }
                    }
                }
            }

            for (id, held) in &touched {
                if let Some(held) = held.as_ref().filter(|h| h.dirty) {
                    let meta = encode_meta(&held.meta)?;
                    // Never write what a load would refuse.
                    if meta.len() > self.max_meta_bytes() {
                        return Err(CoordinatorError::Store(format!(
                            "session {id}: refused: meta of {} bytes exceeds {} bytes",
                            meta.len(),
                            self.max_meta_bytes()
                        )));
                    }
                    sessions
                        .insert(id.to_bytes(), meta.as_slice())
                        .map_err(store_err("writing a session"))?;
                }
            }
        }
        txn.commit().map_err(store_err("committing"))
    }

    fn load_all(&self) -> Result<Vec<StoredSession>> {
        let txn = self
            .db
            .begin_read()
            .map_err(store_err("beginning a read transaction"))?;
        let sessions = txn
            .open_table(SESSIONS)
            .map_err(store_err("opening table sessions"))?;
        let announcements = txn
            .open_table(ANNOUNCEMENTS)
            .map_err(store_err("opening table announcements"))?;
        let envelopes = txn
            .open_table(ENVELOPES)
            .map_err(store_err("opening table envelopes"))?;
        let mut all = Vec::new();
        for entry in sessions.iter().map_err(store_err("reading sessions"))? {
            let (key, meta) = entry.map_err(store_err("reading a session"))?;
            all.push(self.read_session(key.value(), meta.value(), &announcements, &envelopes)?);
        }
        Ok(all)
    }

    fn load(&self, session: &SessionId) -> Result<Option<StoredSession>> {
        let txn = self
            .db
            .begin_read()
            .map_err(store_err("beginning a read transaction"))?;
        let sessions = txn
            .open_table(SESSIONS)
            .map_err(store_err("opening table sessions"))?;
        let Some(meta) = sessions
            .get(session.to_bytes())
            .map_err(store_err("reading a session"))?
        else {
            return Ok(None);
        };
        let announcements = txn
            .open_table(ANNOUNCEMENTS)
            .map_err(store_err("opening table announcements"))?;
        let envelopes = txn
            .open_table(ENVELOPES)
            .map_err(store_err("opening table envelopes"))?;
        self.read_session(session.to_bytes(), meta.value(), &announcements, &envelopes)
            .map(Some)
    }

    fn remove(&mut self, sessions: &[SessionId]) -> Result<()> {
        self.forget(sessions, &[], &[])
    }

    fn forget(
        &mut self,
        sessions: &[SessionId],
        remember: &[(SessionId, u64)],
        expired: &[SessionId],
    ) -> Result<()> {
        if sessions.is_empty() && remember.is_empty() && expired.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write()?;
        if !remember.is_empty() || !expired.is_empty() {
            let mut forgotten = txn
                .open_table(FORGOTTEN)
                .map_err(store_err("opening table forgotten"))?;
            for (id, until) in remember {
                forgotten
                    .insert(id.to_bytes(), until)
                    .map_err(store_err("remembering a forgotten session"))?;
            }
            for id in expired {
                forgotten
                    .remove(id.to_bytes())
                    .map_err(store_err("dropping a forgotten session"))?;
            }
        }
        {
            let WriteTables {
                sessions: mut metas,
                mut announcements,
                mut envelopes,
                mut envelope_ids,
            } = WriteTables::open(&txn)?;
            for id in sessions {
                let key = id.to_bytes();
                metas.remove(key).map_err(store_err("removing a session"))?;
                announcements
                    .remove(key)
                    .map_err(store_err("removing an announcement"))?;
                envelopes
                    .retain_in((key, 0)..=(key, u32::MAX), |_, _| false)
                    .map_err(store_err("removing envelopes"))?;
                envelope_ids
                    .retain_in(
                        (key, [0; 32], [0; 64])..=(key, [0xff; 32], [0xff; 64]),
                        |_, _| false,
                    )
                    .map_err(store_err("removing envelope ids"))?;
            }
        }
        txn.commit().map_err(store_err("committing a removal"))
    }

    fn load_forgotten(&self) -> Result<Vec<(SessionId, u64)>> {
        let txn = self
            .db
            .begin_read()
            .map_err(store_err("beginning a read transaction"))?;
        let forgotten = txn
            .open_table(FORGOTTEN)
            .map_err(store_err("opening table forgotten"))?;
        let mut ids = Vec::new();
        for entry in forgotten
            .iter()
            .map_err(store_err("reading forgotten sessions"))?
        {
            let (id, until) = entry.map_err(store_err("reading a forgotten session"))?;
            ids.push((SessionId::from_bytes(id.value()), until.value()));
        }
        Ok(ids)
    }

    fn usage(&self) -> Result<StoreUsage> {
        let txn = self
            .db
            .begin_read()
            .map_err(store_err("beginning a read transaction"))?;
        let sessions = txn
            .open_table(SESSIONS)
            .map_err(store_err("opening table sessions"))?
            .len()
            .map_err(store_err("counting sessions"))?;
        let envelopes = txn
            .open_table(ENVELOPES)
            .map_err(store_err("opening table envelopes"))?
            .len()
            .map_err(store_err("counting envelopes"))?;
        let bytes = std::fs::metadata(&self.path)
            .map_err(|e| {
                CoordinatorError::Store(format!("reading the size of {}: {e}", self.path.display()))
            })?
            .len();
        Ok(StoreUsage {
            sessions: usize::try_from(sessions).unwrap_or(usize::MAX),
            envelopes: usize::try_from(envelopes).unwrap_or(usize::MAX),
            bytes,
        })
    }

    fn is_durable(&self) -> bool {
        true
    }
}

/// The changing part of a session, as stored (version [`FORMAT_V2`]). Plain integers, so the
/// file format does not follow the serde derives of other crates.
#[derive(Debug, Serialize, Deserialize)]
struct MetaV2 {
    learned_ms: u64,
    next_seq: u64,
    attempt: u16,
    outcome: Option<OutcomeV2>,
}

#[derive(Debug, Serialize, Deserialize)]
enum OutcomeV2 {
    Signed {
        /// 64 bytes each, one per message (serde has no 64-byte arrays).
        signatures: Vec<Vec<u8>>,
        at_ms: u64,
    },
    Aborted {
        /// See [`super::abort_reason_code`].
        reason: u8,
        blamed: Vec<u16>,
        origin: OriginV2,
        at_ms: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum OriginV2 {
    Local,
    Remote(u16),
}

fn encode_meta(meta: &MetaV2) -> Result<Vec<u8>> {
    let mut bytes = vec![FORMAT_V2];
    bytes.extend(postcard::to_stdvec(meta).map_err(store_err("encoding a session"))?);
    Ok(bytes)
}

fn decode_meta(bytes: &[u8], max: usize) -> Result<MetaV2, String> {
    if bytes.len() > max {
        return Err(format!(
            "stored meta of {} bytes exceeds {max} bytes",
            bytes.len()
        ));
    }
    match bytes.split_first() {
        Some((&FORMAT_V2, rest)) => {
            let (meta, trailing) = postcard::take_from_bytes::<MetaV2>(rest)
                .map_err(|e| format!("stored meta: {e}"))?;
            if !trailing.is_empty() {
                return Err(format!("stored meta: {} trailing bytes", trailing.len()));
            }
            Ok(meta)
        }
        Some((version, _)) => Err(format!("stored meta of unknown format {version}")),
        None => Err("stored meta is empty".into()),
    }
}

fn outcome_to_disk(outcome: &Outcome, at_ms: u64) -> OutcomeV2 {
    match outcome {
        Outcome::Signed(signatures) => OutcomeV2::Signed {
            signatures: signatures
                .iter()
                .map(|s| s.to_byte_array().to_vec())
                .collect(),
            at_ms,
        },
        Outcome::Aborted {
            reason,
            blamed,
            origin,
        } => OutcomeV2::Aborted {
            reason: super::abort_reason_code(*reason),
            blamed: blamed.iter().map(|s| s.get()).collect(),
            origin: match origin {
                AbortOrigin::Local => OriginV2::Local,
                AbortOrigin::Remote(signer) => OriginV2::Remote(signer.get()),
            },
            at_ms,
        },
    }
}

fn outcome_from_disk(outcome: OutcomeV2) -> Result<(Outcome, u64), String> {
    let signer = |index: u16| {
        SignerIndex::new(index).map_err(|e| format!("stored outcome: signer index: {e}"))
    };
    match outcome {
        OutcomeV2::Signed { signatures, at_ms } => {
            let signatures = signatures
                .iter()
                .map(|signature| {
                    let bytes: [u8; 64] = signature.as_slice().try_into().map_err(|_| {
                        format!("stored outcome: a signature of {} bytes", signature.len())
                    })?;
                    Ok(schnorr::Signature::from_byte_array(bytes))
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok((Outcome::Signed(signatures), at_ms))
        }
        OutcomeV2::Aborted {
            reason,
            blamed,
            origin,
            at_ms,
        } => Ok((
            Outcome::Aborted {
                reason: super::abort_reason_from_code(reason)
                    .ok_or_else(|| format!("stored outcome: unknown abort reason {reason}"))?,
                blamed: blamed.into_iter().map(signer).collect::<Result<_, _>>()?,
                origin: match origin {
                    OriginV2::Local => AbortOrigin::Local,
                    OriginV2::Remote(index) => AbortOrigin::Remote(signer(index)?),
                },
            },
            at_ms,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use musig2_proto::AbortReason;
    use musig2_proto::{Announcement, Body, Envelope, PeerIdBytes, Policy, SignerInfo};
    use secp256k1::Keypair;
    use std::time::Instant;

    /// A store file in the temp dir, deleted when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> Self {
            TempFile(std::env::temp_dir().join(format!(
                "musig2-redb-{name}-{}-{}.redb",
                std::process::id(),
                rand::random::<u64>()
            )))
        }

        fn open(&self) -> RedbStore {
            RedbStore::open(&self.0, Limits::default()).unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn announcement(kp: &Keypair) -> SignedAnnouncement {
        let other = Keypair::new(&mut rand::rng());
        Announcement {
            signers: vec![
                SignerInfo::new(kp.public_key()),
                SignerInfo::new(other.public_key()),
            ],
            messages: vec![musig2_proto::MessageToSign {
                message: b"m".to_vec(),
                tweaks: Vec::new(),
            }],
            creator: SignerIndex::try_from(0usize).unwrap(),
            policy: Policy::default(),
            salt: rand::random(),
            created_at_ms: 1,
            expires_at_ms: 10_000_000,
            document_digest: None,
        }
        .sign(kp, &Limits::default())
        .unwrap()
    }

    fn envelope(session: SessionId, seq: u64, kp: &Keypair) -> SignedEnvelope {
        Envelope::sign(
            session,
            SignerIndex::new(0).unwrap(),
            SeqNo::new(seq).unwrap(),
            1_000 + seq,
            Body::Join {
                peer_id: PeerIdBytes::new(vec![seq as u8; 38]).unwrap(),
            },
            kp,
        )
    }

    fn intro(a: &SignedAnnouncement, learned_ms: u64) -> Record {
        Record::Session {
            announcement: a.clone(),
            learned_ms,
        }
    }

    fn seq(n: u64) -> SeqNo {
        SeqNo::new(n).unwrap()
    }

    fn sorted(mut sessions: Vec<StoredSession>) -> Vec<StoredSession> {
        sessions.sort_by_key(StoredSession::session_id);
        sessions
    }

    #[test]
    fn records_of_an_unknown_session_are_refused_all_or_none() {
        let file = TempFile::new("orphan");
        let kp = Keypair::new(&mut rand::rng());
        let a = announcement(&kp);
        let b = announcement(&kp);
        let mut store = file.open();
        let orphan = Record::Attempt {
            session: b.session_id(),
            attempt: Attempt::FIRST,
        };
        assert!(matches!(
            store.commit(&[intro(&a, 5), orphan]),
            Err(CoordinatorError::Store(_))
        ));
        assert_eq!(
            store.usage().unwrap().sessions,
            0,
            "nothing of a failed commit stays"
        );
        store.commit(&[intro(&a, 5)]).unwrap();
        let held = store.load(&a.session_id()).unwrap().unwrap();
        assert_eq!(held.learned_ms, 5);
        store.remove(&[a.session_id()]).unwrap();
        assert!(store.load(&a.session_id()).unwrap().is_none());
    }

    #[test]
    fn reservations_and_attempts_only_move_forward() {
        let file = TempFile::new("forward");
        let kp = Keypair::new(&mut rand::rng());
        let a = announcement(&kp);
        let id = a.session_id();
        let mut store = file.open();
        let attempt = |n| Attempt::new(n).unwrap();
        store
            .commit(&[
                intro(&a, 0),
                Record::SeqReserved {
                    session: id,
                    next: seq(33),
                },
                Record::SeqReserved {
                    session: id,
                    next: seq(17),
                },
                Record::Attempt {
                    session: id,
                    attempt: attempt(2),
                },
            ])
            .unwrap();
        store
            .commit(&[
                Record::Attempt {
                    session: id,
                    attempt: attempt(1),
                },
                Record::SeqReserved {
                    session: id,
                    next: seq(20),
                },
            ])
            .unwrap();
        let held = store.load(&id).unwrap().unwrap();
        assert_eq!((held.next_seq, held.attempt), (seq(33), attempt(2)));
        store
            .commit(&[Record::SeqReserved {
                session: id,
                next: seq(49),
            }])
            .unwrap();
        drop(store);
        let held = file.open().load(&id).unwrap().unwrap();
        assert_eq!((held.next_seq, held.attempt), (seq(49), attempt(2)));
    }

    #[test]
    fn the_first_outcome_and_the_first_introduction_stay() {
        let file = TempFile::new("first");
        let kp = Keypair::new(&mut rand::rng());
        let a = announcement(&kp);
        let id = a.session_id();
        let signed = Outcome::Signed(vec![schnorr::Signature::from_byte_array([9; 64]); 2]);
        let aborted = Outcome::Aborted {
            reason: AbortReason::Timeout,
            blamed: vec![SignerIndex::new(1).unwrap()],
            origin: AbortOrigin::Local,
        };
        let mut store = file.open();
        store
            .commit(&[
                intro(&a, 3),
                Record::Outcome {
                    session: id,
                    outcome: signed.clone(),
                    at_ms: 7,
                },
            ])
            .unwrap();
        store
            .commit(&[
                intro(&a, 99),
                Record::Outcome {
                    session: id,
                    outcome: aborted,
                    at_ms: 8,
                },
            ])
            .unwrap();
        let held = store.load(&id).unwrap().unwrap();
        assert_eq!(held.learned_ms, 3);
        assert_eq!(held.outcome, Some((signed, 7)));
    }

    #[test]
    fn a_session_survives_drop_and_reopen() {
        let file = TempFile::new("reopen");
        let kp = Keypair::new(&mut rand::rng());
        let a = announcement(&kp);
        let id = a.session_id();
        let records = vec![
            intro(&a, 11),
            Record::Envelope(envelope(id, 1, &kp)),
            Record::Envelope(envelope(id, 2, &kp)),
            Record::SeqReserved {
                session: id,
                next: seq(17),
            },
            Record::Attempt {
                session: id,
                attempt: Attempt::new(1).unwrap(),
            },
            Record::Outcome {
                session: id,
                outcome: Outcome::Aborted {
                    reason: AbortReason::Restarted,
                    blamed: vec![SignerIndex::new(0).unwrap(), SignerIndex::new(1).unwrap()],
                    origin: AbortOrigin::Remote(SignerIndex::new(1).unwrap()),
                },
                at_ms: 12,
            },
        ];
        let mut expected = StoredSession::new(a.clone(), 11);
        for record in &records {
            expected.apply(record);
        }
        let mut store = file.open();
        assert!(store.is_durable());
        store.commit(&records).unwrap();
        drop(store);
        let store = file.open();
        assert_eq!(store.load(&id).unwrap(), Some(expected.clone()));
        assert_eq!(store.load_all().unwrap(), vec![expected]);
        let usage = store.usage().unwrap();
        assert_eq!((usage.sessions, usage.envelopes), (1, 2));
        assert!(usage.bytes > 0);
    }

    #[test]
    fn forgotten_sessions_are_remembered_across_reopen_until_dropped() {
        let file = TempFile::new("forgotten");
        let kp = Keypair::new(&mut rand::rng());
        let (a, b) = (announcement(&kp), announcement(&kp));
        let (ida, idb) = (a.session_id(), b.session_id());
        let mut store = file.open();
        store.commit(&[intro(&a, 1), intro(&b, 1)]).unwrap();
        // One transaction: `a` leaves, its id stays; `b` is untouched.
        store.forget(&[ida], &[(ida, 700)], &[]).unwrap();
        assert!(store.load(&ida).unwrap().is_none());
        assert!(store.load(&idb).unwrap().is_some());
        drop(store);
        let mut store = file.open();
        assert_eq!(store.load_forgotten().unwrap(), vec![(ida, 700)]);
        store.forget(&[idb], &[(idb, 900)], &[ida]).unwrap();
        drop(store);
        let store = file.open();
        assert_eq!(store.load_forgotten().unwrap(), vec![(idb, 900)]);
        assert_eq!(store.usage().unwrap().sessions, 0);
    }

    #[test]
    fn a_refused_commit_leaves_nothing() {
        let file = TempFile::new("refused");
        let kp = Keypair::new(&mut rand::rng());
        let (a, b, c) = (announcement(&kp), announcement(&kp), announcement(&kp));
        let mut store = file.open();
        store.commit(&[intro(&a, 1)]).unwrap();
        let before = store.load_all().unwrap();
        let refused = store.commit(&[
            Record::Envelope(envelope(a.session_id(), 1, &kp)),
            Record::SeqReserved {
                session: a.session_id(),
                next: seq(33),
            },
            intro(&b, 2),
            Record::Envelope(envelope(b.session_id(), 1, &kp)),
            // The orphan comes last: everything before it was valid.
            Record::Envelope(envelope(c.session_id(), 1, &kp)),
        ]);
        assert!(matches!(refused, Err(CoordinatorError::Store(_))));
        drop(store);
        let store = file.open();
        assert_eq!(store.load_all().unwrap(), before);
        let usage = store.usage().unwrap();
        assert_eq!((usage.sessions, usage.envelopes), (1, 0));
    }

    #[test]
    fn an_oversized_frame_or_meta_is_refused_before_anything_is_written() {
        let file = TempFile::new("oversized");
        let kp = Keypair::new(&mut rand::rng());
        let a = announcement(&kp);
        let limits = Limits {
            max_frame_bytes: a.to_frame_bytes().len() - 1,
            ..Limits::default()
        };
        let mut store = RedbStore::open(&file.0, limits).unwrap();
        assert!(matches!(
            store.commit(&[intro(&a, 1)]),
            Err(CoordinatorError::Store(_))
        ));
        assert_eq!(store.usage().unwrap().sessions, 0);
        drop(store);

        // A meta too large to load (far more blamed signers than a session can have).
        let mut store = file.open();
        let outcome = Outcome::Aborted {
            reason: AbortReason::Internal,
            blamed: vec![SignerIndex::new(SignerIndex::MAX).unwrap(); 1_000],
            origin: AbortOrigin::Local,
        };
        let at_ms = 1;
        let session = a.session_id();
        assert!(matches!(
            store.commit(&[
                intro(&a, 1),
                Record::Outcome {
                    session,
                    outcome,
                    at_ms
                }
            ]),
            Err(CoordinatorError::Store(_))
        ));
        assert_eq!(store.usage().unwrap().sessions, 0);
    }

    #[test]
    fn removing_a_session_removes_its_envelopes() {
        let file = TempFile::new("remove");
        let kp = Keypair::new(&mut rand::rng());
        let (a, b) = (announcement(&kp), announcement(&kp));
        let ea: Vec<SignedEnvelope> = (1..=3).map(|n| envelope(a.session_id(), n, &kp)).collect();
        let eb = envelope(b.session_id(), 1, &kp);
        let mut store = file.open();
        let mut records = vec![intro(&a, 1), intro(&b, 2), Record::Envelope(eb.clone())];
        records.extend(ea.iter().cloned().map(Record::Envelope));
        store.commit(&records).unwrap();
        let usage = store.usage().unwrap();
        assert_eq!((usage.sessions, usage.envelopes), (2, 4));

        store
            .remove(&[a.session_id(), SessionId::from_bytes([1; 32])])
            .unwrap();
        let usage = store.usage().unwrap();
        assert_eq!((usage.sessions, usage.envelopes), (1, 1));
        assert!(store.load(&a.session_id()).unwrap().is_none());
        assert_eq!(
            store.load(&b.session_id()).unwrap().unwrap().envelopes,
            vec![eb]
        );
        assert!(matches!(
            store.commit(&[Record::Envelope(ea[0].clone())]),
            Err(CoordinatorError::Store(_))
        ));

        // Introduced again, the session starts empty: its envelope ids went with it.
        store
            .commit(&[intro(&a, 9), Record::Envelope(ea[2].clone())])
            .unwrap();
        let held = store.load(&a.session_id()).unwrap().unwrap();
        assert_eq!((held.learned_ms, held.envelopes), (9, vec![ea[2].clone()]));
    }

    #[test]
    fn envelopes_come_back_in_first_commit_order_once() {
        let file = TempFile::new("order");
        let kp = Keypair::new(&mut rand::rng());
        let a = announcement(&kp);
        let id = a.session_id();
        let e: Vec<SignedEnvelope> = (1..=5).map(|n| envelope(id, n, &kp)).collect();
        // Same content, another signature: a different envelope.
        let resigned = envelope(id, 3, &kp);
        assert_ne!(resigned, e[2]);
        let mut store = file.open();
        let env = |x: &SignedEnvelope| Record::Envelope(x.clone());
        store
            .commit(&[intro(&a, 0), env(&e[3]), env(&e[0]), env(&e[3])])
            .unwrap();
        store
            .commit(&[env(&e[0]), env(&e[2]), env(&resigned), env(&e[2])])
            .unwrap();
        store.commit(&[env(&e[1]), env(&e[3]), env(&e[4])]).unwrap();
        drop(store);
        let store = file.open();
        let expected = vec![
            e[3].clone(),
            e[0].clone(),
            e[2].clone(),
            resigned,
            e[1].clone(),
            e[4].clone(),
        ];
        assert_eq!(store.load(&id).unwrap().unwrap().envelopes, expected);
        assert_eq!(store.usage().unwrap().envelopes, 6);
    }

    #[test]
    fn a_thousand_sessions_in_one_commit_survive_reopen() {
        let file = TempFile::new("thousand");
        let kp = Keypair::new(&mut rand::rng());
        let mut records = Vec::new();
        let mut ids = Vec::new();
        for n in 0..1_000u64 {
            let a = announcement(&kp);
            ids.push(a.session_id());
            records.push(intro(&a, n));
            records.push(Record::Envelope(envelope(a.session_id(), 1, &kp)));
        }
        file.open().commit(&records).unwrap();
        let store = file.open();
        let all = store.load_all().unwrap();
        assert_eq!(all.len(), 1_000);
        let usage = store.usage().unwrap();
        assert_eq!((usage.sessions, usage.envelopes), (1_000, 1_000));
        for (n, id) in ids.iter().enumerate() {
            let held = store.load(id).unwrap().unwrap();
            assert_eq!((held.learned_ms, held.envelopes.len()), (n as u64, 1));
        }
    }

    /// The same commits, including refused ones and records before their session's
    /// introduction, leave both stores holding the same sessions.
    #[test]
    fn holds_what_a_memory_store_holds() {
        let file = TempFile::new("memory");
        let kp = Keypair::new(&mut rand::rng());
        let (a, b, c) = (announcement(&kp), announcement(&kp), announcement(&kp));
        let (ia, ib) = (a.session_id(), b.session_id());
        let commits: Vec<Vec<Record>> = vec![
            // An envelope before its session's introduction in one call is skipped.
            vec![Record::Envelope(envelope(ia, 1, &kp)), intro(&a, 1)],
            vec![
                Record::Envelope(envelope(ia, 2, &kp)),
                intro(&b, 2),
                Record::Attempt {
                    session: ib,
                    attempt: Attempt::new(3).unwrap(),
                },
            ],
            vec![
                intro(&c, 3),
                Record::Envelope(envelope(c.session_id(), 1, &kp)),
                Record::Envelope(envelope(SessionId::from_bytes([2; 32]), 1, &kp)),
            ],
            vec![Record::Outcome {
                session: ib,
                outcome: Outcome::Aborted {
                    reason: AbortReason::Misrouted,
                    blamed: Vec::new(),
                    origin: AbortOrigin::Local,
                },
                at_ms: 4,
            }],
        ];
        let mut memory = MemoryStore::new();
        let mut redb = file.open();
        for records in &commits {
            assert_eq!(
                memory.commit(records).is_ok(),
                redb.commit(records).is_ok(),
                "{records:?}"
            );
        }
        memory.remove(&[c.session_id()]).unwrap();
        redb.remove(&[c.session_id()]).unwrap();
        assert_eq!(
            sorted(redb.load_all().unwrap()),
            sorted(memory.load_all().unwrap())
        );
        let (m, r) = (memory.usage().unwrap(), redb.usage().unwrap());
        assert_eq!((r.sessions, r.envelopes), (m.sessions, m.envelopes));
    }

    #[test]
    fn garbage_on_disk_is_a_store_error() {
        let kp = Keypair::new(&mut rand::rng());
        let a = announcement(&kp);
        let key = a.session_id().to_bytes();
        let garbage: &[u8] = &[FORMAT_V2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let huge = vec![0u8; 1 << 20];
        type Corruption<'a> = Box<dyn Fn(&WriteTransaction) + 'a>;
        let cases: Vec<(&str, Corruption<'_>)> = vec![
            (
                "meta",
                Box::new(|txn| {
                    let mut t = txn.open_table(SESSIONS).unwrap();
                    t.insert(key, garbage).unwrap();
                }),
            ),
            (
                "meta of an unknown format",
                Box::new(|txn| {
                    let mut t = txn.open_table(SESSIONS).unwrap();
                    t.insert(key, [7u8, 0, 0, 0].as_slice()).unwrap();
                }),
            ),
            (
                "oversized meta",
                Box::new(|txn| {
                    let mut t = txn.open_table(SESSIONS).unwrap();
                    t.insert(key, huge.as_slice()).unwrap();
                }),
            ),
            (
                "announcement",
                Box::new(|txn| {
                    let mut t = txn.open_table(ANNOUNCEMENTS).unwrap();
                    t.insert(key, garbage).unwrap();
                }),
            ),
            (
                "oversized announcement",
                Box::new(|txn| {
                    let mut t = txn.open_table(ANNOUNCEMENTS).unwrap();
                    t.insert(key, huge.as_slice()).unwrap();
                }),
            ),
            (
                "missing announcement",
                Box::new(|txn| {
                    let mut t = txn.open_table(ANNOUNCEMENTS).unwrap();
                    t.remove(key).unwrap();
                }),
            ),
            (
                "envelope",
                Box::new(|txn| {
                    let mut t = txn.open_table(ENVELOPES).unwrap();
                    t.insert((key, 1), garbage).unwrap();
                }),
            ),
        ];
        for (what, corrupt) in cases {
            let file = TempFile::new("garbage");
            let mut store = file.open();
            store
                .commit(&[
                    intro(&a, 1),
                    Record::Envelope(envelope(a.session_id(), 1, &kp)),
                ])
                .unwrap();
            drop(store);
            {
                let db = Database::create(&file.0).unwrap();
                let txn = db.begin_write().unwrap();
                corrupt(&txn);
                txn.commit().unwrap();
            }
            let mut store = file.open();
            let id = a.session_id();
            assert!(
                matches!(store.load_all(), Err(CoordinatorError::Store(_))),
                "{what}: load_all"
            );
            assert!(
                matches!(store.load(&id), Err(CoordinatorError::Store(_))),
                "{what}: load"
            );
            // A commit that must read the meta refuses too; the others need not.
            if what.contains("meta") {
                let more = Record::Envelope(envelope(id, 2, &kp));
                assert!(
                    matches!(store.commit(&[more]), Err(CoordinatorError::Store(_))),
                    "{what}: commit"
                );
            }
            // The corrupt session can still be forgotten.
            store.remove(&[id]).unwrap();
            assert!(store.load_all().unwrap().is_empty(), "{what}: remove");
        }
    }

    #[test]
    fn a_table_of_other_types_is_a_store_error() {
        let file = TempFile::new("types");
        {
            let db = Database::create(&file.0).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let wrong: TableDefinition<'_, &str, u64> = TableDefinition::new("sessions");
                txn.open_table(wrong).unwrap().insert("x", 1).unwrap();
            }
            txn.commit().unwrap();
        }
        assert!(matches!(
            RedbStore::open(&file.0, Limits::default()),
            Err(CoordinatorError::Store(_))
        ));
    }

    #[test]
    fn a_file_that_is_not_a_store_is_a_store_error() {
        let file = TempFile::new("notadb");
        std::fs::write(&file.0, vec![0x5a; 8192]).unwrap();
        assert!(matches!(
            RedbStore::open(&file.0, Limits::default()),
            Err(CoordinatorError::Store(_))
        ));
    }

    /// Run by hand: `cargo test -p musig2-coordinator --lib store::redb::tests::time_commits -- --ignored --nocapture`
    #[test]
    #[ignore = "a timing printout, not a test"]
    fn time_commits() {
        let file = TempFile::new("timing");
        let kp = Keypair::new(&mut rand::rng());
        let mut store = file.open();
        let mut one = Vec::new();
        for _ in 0..50 {
            let a = announcement(&kp);
            let started = Instant::now();
            store.commit(&[intro(&a, 0)]).unwrap();
            one.push(started.elapsed());
        }
        let mut batch = Vec::new();
        for _ in 0..10 {
            let mut records = Vec::new();
            for _ in 0..200 {
                let a = announcement(&kp);
                let id = a.session_id();
                records.push(intro(&a, 0));
                records.push(Record::Envelope(envelope(id, 1, &kp)));
                records.push(Record::SeqReserved {
                    session: id,
                    next: seq(17),
                });
            }
            let started = Instant::now();
            store.commit(&records).unwrap();
            batch.push(started.elapsed());
        }
        for (name, mut times) in [("1 record", one), ("200 sessions x 3 records", batch)] {
            times.sort();
            println!(
                "{name}: min {:?} median {:?} max {:?} ({} commits)",
                times[0],
                times[times.len() / 2],
                times[times.len() - 1],
                times.len()
            );
        }
    }
}
