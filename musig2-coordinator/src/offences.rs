//! The offence table: how many offending frames each peer sent, bounded.

use std::collections::HashMap;

use musig2_transport::PeerId;

/// Counts offences per peer within a window. Bounded: when full, a new peer replaces the entry
/// with the fewest offences (the oldest among equals), so sybils cannot wipe a real offender's
/// count; the table is never cleared wholesale.
#[derive(Debug)]
pub(crate) struct OffenceTable {
    entries: HashMap<PeerId, Entry>,
    capacity: usize,
    window_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    count: u32,
    since_ms: u64,
}

impl OffenceTable {
    pub(crate) fn new(capacity: usize, window_ms: u64) -> Self {
        OffenceTable {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            window_ms,
        }
    }

    /// Counts an offence of `weight` of `peer` at `now_ms`; returns its total within the window.
    pub(crate) fn record(&mut self, peer: PeerId, now_ms: u64, weight: u32) -> u32 {
        if !self.entries.contains_key(&peer) && self.entries.len() >= self.capacity {
            self.evict_one(now_ms);
        }
        let entry = self.entries.entry(peer).or_insert(Entry {
            count: 0,
            since_ms: now_ms,
        });
        if now_ms.saturating_sub(entry.since_ms) > self.window_ms {
            *entry = Entry {
                count: 0,
                since_ms: now_ms,
            };
        }
        entry.count = entry.count.saturating_add(weight);
        entry.count
    }

    /// Forgets `peer` (e.g. once it is blocked).
    pub(crate) fn remove(&mut self, peer: &PeerId) {
        self.entries.remove(peer);
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The count of `peer` (0 if untracked).
    #[cfg(test)]
    pub(crate) fn count(&self, peer: &PeerId) -> u32 {
        self.entries.get(peer).map_or(0, |e| e.count)
    }

    fn evict_one(&mut self, now_ms: u64) {
        // Entries whose window ran out are worth nothing; otherwise the least offending, oldest.
        let victim = self
            .entries
            .iter()
            .min_by_key(|(_, e)| {
                let expired = now_ms.saturating_sub(e.since_ms) > self.window_ms;
                (!expired, e.count, e.since_ms)
            })
            .map(|(peer, _)| *peer);
        if let Some(victim) = victim {
            self.entries.remove(&victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use musig2_transport::MemoryNetwork;
    use musig2_transport::Transport;

    fn peers(n: usize) -> Vec<PeerId> {
        let net = MemoryNetwork::new(9);
        (0..n).map(|_| net.add_node().local_peer_id()).collect()
    }

    #[test]
    fn sybils_do_not_reset_an_offender() {
        let ids = peers(70);
        let (offender, sybils) = ids.split_first().unwrap();
        let mut table = OffenceTable::new(16, 1_000_000);
        let mut last = 0;
        for (i, sybil) in sybils.iter().enumerate() {
            last = table.record(*offender, i as u64, 1);
            table.record(*sybil, i as u64, 1);
            assert!(table.len() <= 16);
        }
        // Every sybil offence came with one of the offender's, and none of them cleared it.
        assert_eq!(last, sybils.len() as u32);
        assert_eq!(table.count(offender), sybils.len() as u32);
    }

    #[test]
    fn expired_windows_restart_and_are_evicted_first() {
        let ids = peers(3);
        let mut table = OffenceTable::new(2, 100);
        assert_eq!(table.record(ids[0], 0, 1), 1);
        assert_eq!(table.record(ids[0], 10, 1), 2);
        assert_eq!(table.record(ids[1], 150, 1), 1);
        // ids[0]'s window (since 0) has run out: it is evicted before ids[1], whose is live.
        assert_eq!(table.record(ids[2], 160, 1), 1);
        assert_eq!(table.count(&ids[0]), 0);
        assert_eq!(table.count(&ids[1]), 1);
        assert_eq!(table.record(ids[0], 200, 1), 1);
    }
}
