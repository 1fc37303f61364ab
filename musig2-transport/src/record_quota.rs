//! Bounds on the DHT records a node stores for other peers.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::kad::RecordKey;

/// The inbound records a node holds for others: per owner and overall, leaving the rest of the
/// store to the node's own puts. Records can leave the Kademlia store without telling us
/// (expiry, replacement), so counts are reconciled against the store when a limit is reached.
#[derive(Debug)]
pub(crate) struct RecordQuota {
    max_inbound: usize,
    max_per_owner: usize,
    records: HashMap<RecordKey, (Vec<u8>, Option<Instant>)>,
    per_owner: HashMap<Vec<u8>, usize>,
}

/// Why an inbound record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuotaRefusal {
    /// Its owner has its share already.
    Owner,
    /// The space for other peers' records is full (the rest is kept for our own puts).
    Full,
}

impl RecordQuota {
    pub(crate) fn new(max_inbound: usize, max_per_owner: usize) -> Self {
        RecordQuota {
            max_inbound,
            max_per_owner: max_per_owner.max(1),
            records: HashMap::new(),
            per_owner: HashMap::new(),
        }
    }

    /// Admits a record of `owner` under `key` (replacing the key's previous record), or says
    /// why not. `still_stored` tells whether a key is still in the store.
    pub(crate) fn admit(
        &mut self,
        key: &RecordKey,
        owner: Vec<u8>,
        expires: Option<Instant>,
        now: Instant,
        still_stored: impl Fn(&RecordKey) -> bool,
    ) -> Result<(), QuotaRefusal> {
        let replaces_own = self.records.get(key).is_some_and(|(o, _)| *o == owner);
        if !replaces_own {
            let over = |q: &Self| {
                q.per_owner.get(&owner).copied().unwrap_or(0) >= q.max_per_owner
                    || q.records.len() >= q.max_inbound
            };
            if over(self) {
                self.reconcile(now, &still_stored);
            }
            if self.per_owner.get(&owner).copied().unwrap_or(0) >= self.max_per_owner {
                return Err(QuotaRefusal::Owner);
            }
            if self.records.len() >= self.max_inbound && !self.records.contains_key(key) {
                return Err(QuotaRefusal::Full);
            }
        }
        self.forget(key);
        *self.per_owner.entry(owner.clone()).or_default() += 1;
        self.records.insert(key.clone(), (owner, expires));
        Ok(())
    }

    /// Forgets what is no longer stored or has expired.
    pub(crate) fn reconcile(&mut self, now: Instant, still_stored: &impl Fn(&RecordKey) -> bool) {
        let gone: Vec<RecordKey> = self
            .records
            .iter()
            .filter(|(k, (_, exp))| exp.is_some_and(|e| e <= now) || !still_stored(k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.forget(&key);
        }
    }

    fn forget(&mut self, key: &RecordKey) {
        if let Some((owner, _)) = self.records.remove(key) {
            if let Some(n) = self.per_owner.get_mut(&owner) {
                *n -= 1;
                if *n == 0 {
                    self.per_owner.remove(&owner);
                }
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> RecordKey {
        RecordKey::new(&i.to_be_bytes())
    }

    #[test]
    fn per_owner_and_overall_limits_with_reconciliation() {
        let now = Instant::now();
        let mut q = RecordQuota::new(4, 2);
        let stored = |_: &RecordKey| true;
        q.admit(&key(1), b"a".to_vec(), None, now, stored).unwrap();
        q.admit(&key(2), b"a".to_vec(), None, now, stored).unwrap();
        assert_eq!(
            q.admit(&key(3), b"a".to_vec(), None, now, stored),
            Err(QuotaRefusal::Owner)
        );
        // Replacing one of its own keys is fine.
        q.admit(&key(2), b"a".to_vec(), None, now, stored).unwrap();
        q.admit(&key(3), b"b".to_vec(), None, now, stored).unwrap();
        let soon = now + std::time::Duration::from_millis(500);
        q.admit(&key(4), b"c".to_vec(), Some(soon), now, stored)
            .unwrap();
        assert_eq!(
            q.admit(&key(5), b"d".to_vec(), None, now, stored),
            Err(QuotaRefusal::Full)
        );
        // Once key 4 has expired, its room is reused.
        let later = now + std::time::Duration::from_secs(1);
        q.admit(&key(5), b"d".to_vec(), None, later, stored)
            .unwrap();
        assert_eq!(q.len(), 4);
        // Records the store dropped are forgotten too.
        let only_1 = |k: &RecordKey| *k == key(1);
        q.admit(&key(6), b"a".to_vec(), None, later, only_1)
            .unwrap();
        assert_eq!(q.len(), 2);
    }
}
