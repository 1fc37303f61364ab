//! A store in memory: nothing survives the process, but a handle survives the node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use musig2_proto::SessionId;

use super::{Record, SessionStore, StoreUsage, StoredSession};
use crate::error::{CoordinatorError, Result};

/// Sessions kept in memory.
///
/// Clones share one store: a test keeps a clone, drops (or crashes) the node, and starts a new
/// node on the same store, as a restarted process would reopen its file.
/// [`snapshot`](MemoryStore::snapshot) and [`from_snapshot`](MemoryStore::from_snapshot) copy it
/// as a backup would.
#[derive(Clone, Default)]
pub struct MemoryStore {
    held: Arc<Mutex<Held>>,
}

/// What a [`MemoryStore`] holds: the sessions, and the ids of forgotten ones with their times.
#[derive(Debug, Clone, Default)]
struct Held {
    sessions: HashMap<SessionId, StoredSession>,
    forgotten: HashMap<SessionId, u64>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("sessions", &self.lock().sessions.len())
            .finish()
    }
}

/// A copy of a [`MemoryStore`]'s contents at one moment.
#[derive(Debug, Clone, Default)]
pub struct MemorySnapshot(Held);

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of everything held now (a backup).
    pub fn snapshot(&self) -> MemorySnapshot {
        MemorySnapshot(self.lock().clone())
    }

    /// A new store holding a snapshot's contents (a restored backup).
    pub fn from_snapshot(snapshot: &MemorySnapshot) -> Self {
        MemoryStore {
            held: Arc::new(Mutex::new(snapshot.0.clone())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // A panic while holding the lock leaves consistent data (every write is one insert).
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SessionStore for MemoryStore {
    fn commit(&mut self, records: &[Record]) -> Result<()> {
        let mut held = self.lock();
        let sessions = &mut held.sessions;
        // All or none: check every record's session first.
        let introduced: Vec<SessionId> = records
            .iter()
            .filter(|r| matches!(r, Record::Session { .. }))
            .map(Record::session_id)
            .collect();
        if let Some(orphan) = records
            .iter()
            .map(Record::session_id)
            .find(|id| !sessions.contains_key(id) && !introduced.contains(id))
        {
            return Err(CoordinatorError::Store(format!(
                "a record for session {orphan}, which the store does not hold"
            )));
        }
        for record in records {
            if let Record::Session {
                announcement,
                learned_ms,
            } = record
            {
                sessions
                    .entry(announcement.session_id())
                    .or_insert_with(|| StoredSession::new(announcement.clone(), *learned_ms));
            } else if let Some(session) = sessions.get_mut(&record.session_id()) {
                session.apply(record);
            }
        }
        Ok(())
    }

    fn load_all(&self) -> Result<Vec<StoredSession>> {
        Ok(self.lock().sessions.values().cloned().collect())
    }

    fn load(&self, session: &SessionId) -> Result<Option<StoredSession>> {
        Ok(self.lock().sessions.get(session).cloned())
    }

    fn remove(&mut self, sessions: &[SessionId]) -> Result<()> {
        let mut held = self.lock();
        for id in sessions {
            held.sessions.remove(id);
        }
        Ok(())
    }

    fn forget(
        &mut self,
        sessions: &[SessionId],
        remember: &[(SessionId, u64)],
        expired: &[SessionId],
    ) -> Result<()> {
        let mut held = self.lock();
        for id in sessions {
            held.sessions.remove(id);
        }
        held.forgotten.extend(remember.iter().copied());
        for id in expired {
            held.forgotten.remove(id);
        }
        Ok(())
    }

    fn load_forgotten(&self) -> Result<Vec<(SessionId, u64)>> {
        Ok(self
            .lock()
            .forgotten
            .iter()
            .map(|(id, until)| (*id, *until))
            .collect())
    }

    fn usage(&self) -> Result<StoreUsage> {
        let held = &self.lock().sessions;
        let envelopes = held.values().map(|s| s.envelopes.len()).sum();
        let bytes = held
            .values()
            .map(|s| {
                let envelopes: usize = s.envelopes.iter().map(|e| e.to_frame_bytes().len()).sum();
                (s.announcement.to_frame_bytes().len() + envelopes + 128) as u64
            })
            .sum();
        Ok(StoreUsage {
            sessions: held.len(),
            envelopes,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use musig2_proto::{Announcement, Limits, Policy, SignerIndex, SignerInfo};
    use secp256k1::Keypair;

    fn announcement(kp: &Keypair) -> musig2_proto::SignedAnnouncement {
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
            salt: [7; 32],
            created_at_ms: 1,
            expires_at_ms: 10_000_000,
            document_digest: None,
        }
        .sign(kp, &Limits::default())
        .unwrap()
    }

    #[test]
    fn records_of_an_unknown_session_are_refused_all_or_none() {
        let kp = Keypair::new(&mut rand::rng());
        let a = announcement(&kp);
        let b = announcement(&kp);
        let mut store = MemoryStore::new();
        let orphan = Record::Attempt {
            session: b.session_id(),
            attempt: musig2_proto::Attempt::FIRST,
        };
        let intro = Record::Session {
            announcement: a.clone(),
            learned_ms: 5,
        };
        assert!(matches!(
            store.commit(&[intro.clone(), orphan]),
            Err(CoordinatorError::Store(_))
        ));
        assert_eq!(
            store.usage().unwrap().sessions,
            0,
            "nothing of a failed commit stays"
        );
        store.commit(&[intro]).unwrap();
        let held = store.load(&a.session_id()).unwrap().unwrap();
        assert_eq!(held.learned_ms, 5);
        store.remove(&[a.session_id()]).unwrap();
        assert!(store.load(&a.session_id()).unwrap().is_none());
    }

    #[test]
    fn forgotten_sessions_are_remembered_until_dropped_and_kept_in_a_snapshot() {
        let kp = Keypair::new(&mut rand::rng());
        let (a, b) = (announcement(&kp), announcement(&kp));
        let (ida, idb) = (a.session_id(), b.session_id());
        let mut store = MemoryStore::new();
        let intro = |announcement| Record::Session {
            announcement,
            learned_ms: 0,
        };
        store.commit(&[intro(a), intro(b)]).unwrap();
        store.forget(&[ida], &[(ida, 700)], &[]).unwrap();
        assert!(store.load(&ida).unwrap().is_none());
        assert!(store.load(&idb).unwrap().is_some());
        assert_eq!(store.load_forgotten().unwrap(), vec![(ida, 700)]);
        let backup = store.snapshot();
        store.forget(&[idb], &[(idb, 900)], &[ida]).unwrap();
        assert_eq!(store.load_forgotten().unwrap(), vec![(idb, 900)]);
        let restored = MemoryStore::from_snapshot(&backup);
        assert_eq!(restored.load_forgotten().unwrap(), vec![(ida, 700)]);
        assert!(restored.load(&idb).unwrap().is_some());
    }

    #[test]
    fn reservations_and_attempts_only_move_forward() {
        let kp = Keypair::new(&mut rand::rng());
        let a = announcement(&kp);
        let id = a.session_id();
        let mut store = MemoryStore::new();
        let seq = |n| musig2_proto::SeqNo::new(n).unwrap();
        store
            .commit(&[
                Record::Session {
                    announcement: a,
                    learned_ms: 0,
                },
                Record::SeqReserved {
                    session: id,
                    next: seq(33),
                },
                Record::SeqReserved {
                    session: id,
                    next: seq(17),
                },
            ])
            .unwrap();
        let backup = store.snapshot();
        store
            .commit(&[Record::SeqReserved {
                session: id,
                next: seq(49),
            }])
            .unwrap();
        assert_eq!(store.load(&id).unwrap().unwrap().next_seq, seq(49));
        let restored = MemoryStore::from_snapshot(&backup);
        assert_eq!(restored.load(&id).unwrap().unwrap().next_seq, seq(33));
    }
}
