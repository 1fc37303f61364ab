//! Raw frames held for later, bounded per peer and overall: frames for sessions this node does
//! not know yet, and announcements set aside over their budget (ADR 0025).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use musig2_proto::SessionId;
use musig2_transport::PeerId;

/// Limits of a [`PendingBuffer`] (from [`Config`](crate::Config)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingLimits {
    pub(crate) frames_per_peer: usize,
    pub(crate) bytes_per_peer: usize,
    pub(crate) frames: usize,
    pub(crate) bytes: usize,
    pub(crate) frame_bytes: usize,
    pub(crate) lifetime_ms: u64,
}

/// Why a frame was not buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Larger than `frame_bytes`: only small bodies (joins, commitments, nonces, partial
    /// signatures) can legitimately arrive before their session is known.
    TooLarge,
    /// The peer already holds its share.
    PeerFull,
}

struct Entry<K> {
    from: PeerId,
    key: K,
    frame: Bytes,
    at_ms: u64,
}

/// Raw (undecoded, unverified) frames, each under a key: the session of a single-envelope frame
/// waiting for its session's announcement, or (ADR 0025) what is known of a set-aside
/// announcement's id. Holding raw bytes means a held frame costs no decoding. Entries expire
/// after `lifetime_ms`; when the buffer is full overall, the peer holding the most bytes loses
/// its oldest frame, so one peer (or a crowd of them) cannot push out the others' frames.
pub(crate) struct PendingBuffer<K = SessionId> {
    limits: PendingLimits,
    entries: VecDeque<Entry<K>>,
    per_peer: HashMap<PeerId, (usize, usize)>,
    bytes: usize,
}

impl PendingBuffer<SessionId> {
    /// Takes every buffered frame of `session`, oldest first.
    pub(crate) fn take(&mut self, session: &SessionId, now_ms: u64) -> Vec<(PeerId, Bytes)> {
        self.take_matching(now_ms, |_, key, _| key == session)
            .into_iter()
            .map(|(from, _, frame)| (from, frame))
            .collect()
    }
}

impl<K> PendingBuffer<K> {
    pub(crate) fn new(limits: PendingLimits) -> Self {
        PendingBuffer {
            limits,
            entries: VecDeque::new(),
            per_peer: HashMap::new(),
            bytes: 0,
        }
    }

    /// Buffers `frame` from `from` under `key`.
    pub(crate) fn push(
        &mut self,
        from: PeerId,
        key: K,
        frame: Bytes,
        now_ms: u64,
    ) -> Result<(), Refused> {
        self.expire(now_ms);
        let len = frame.len();
        if len > self.limits.frame_bytes {
            return Err(Refused::TooLarge);
        }
        let (frames, bytes) = self.per_peer.get(&from).copied().unwrap_or((0, 0));
        if frames >= self.limits.frames_per_peer || bytes + len > self.limits.bytes_per_peer {
            return Err(Refused::PeerFull);
        }
        while self.entries.len() >= self.limits.frames || self.bytes + len > self.limits.bytes {
            if !self.evict_from_largest() {
                return Err(Refused::PeerFull);
            }
        }
        let share = self.per_peer.entry(from).or_insert((0, 0));
        share.0 += 1;
        share.1 += len;
        self.bytes += len;
        self.entries.push_back(Entry {
            from,
            key,
            // A frame read off a stream may share an allocation up to twice its length (the
            // read buffer grows by doubling): a copy makes what is held what is counted.
            frame: Bytes::copy_from_slice(&frame),
            at_ms: now_ms,
        });
        Ok(())
    }

    /// Takes every entry `matches` picks, oldest first. `matches` sees every live entry once
    /// (its sender, key and frame) and may update its key (a set-aside announcement's id,
    /// learnt once).
    pub(crate) fn take_matching(
        &mut self,
        now_ms: u64,
        mut matches: impl FnMut(PeerId, &mut K, &Bytes) -> bool,
    ) -> Vec<(PeerId, K, Bytes)> {
        self.expire(now_ms);
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.entries.len());
        for mut e in self.entries.drain(..) {
            if matches(e.from, &mut e.key, &e.frame) {
                taken.push(e);
            } else {
                kept.push_back(e);
            }
        }
        self.entries = kept;
        for e in &taken {
            Self::release(&mut self.per_peer, &mut self.bytes, e);
        }
        taken
            .into_iter()
            .map(|e| (e.from, e.key, e.frame))
            .collect()
    }

    /// Drops entries older than the lifetime.
    pub(crate) fn expire(&mut self, now_ms: u64) {
        while let Some(front) = self.entries.front() {
            if now_ms.saturating_sub(front.at_ms) <= self.limits.lifetime_ms {
                break;
            }
            if let Some(e) = self.entries.pop_front() {
                Self::release(&mut self.per_peer, &mut self.bytes, &e);
            }
        }
    }

    /// When the oldest entry expires.
    pub(crate) fn next_expiry(&self) -> Option<u64> {
        self.entries.front().map(|e| {
            e.at_ms
                .saturating_add(self.limits.lifetime_ms)
                .saturating_add(1)
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    fn evict_from_largest(&mut self) -> bool {
        let Some(largest) = self
            .per_peer
            .iter()
            .max_by_key(|(_, (_, bytes))| *bytes)
            .map(|(peer, _)| *peer)
        else {
            return false;
        };
        let Some(pos) = self.entries.iter().position(|e| e.from == largest) else {
            return false;
        };
        if let Some(e) = self.entries.remove(pos) {
            Self::release(&mut self.per_peer, &mut self.bytes, &e);
        }
        true
    }

    fn release(per_peer: &mut HashMap<PeerId, (usize, usize)>, total: &mut usize, e: &Entry<K>) {
        *total -= e.frame.len();
        if let Some(share) = per_peer.get_mut(&e.from) {
            share.0 -= 1;
            share.1 -= e.frame.len();
            if share.0 == 0 {
                per_peer.remove(&e.from);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use musig2_transport::{MemoryNetwork, Transport};

    fn limits() -> PendingLimits {
        PendingLimits {
            frames_per_peer: 4,
            bytes_per_peer: 1000,
            frames: 8,
            bytes: 1600,
            frame_bytes: 300,
            lifetime_ms: 100,
        }
    }

    /// `n` distinct peer ids (shared with the set-aside tests).
    pub(crate) fn peers(n: usize) -> Vec<PeerId> {
        let net = MemoryNetwork::new(3);
        (0..n).map(|_| net.add_node().local_peer_id()).collect()
    }

    fn sid(b: u8) -> SessionId {
        SessionId::from_bytes([b; 32])
    }

    #[test]
    fn caps_per_peer_size_and_lifetime() {
        let p = peers(1);
        let mut buf = PendingBuffer::new(limits());
        assert_eq!(
            buf.push(p[0], sid(1), Bytes::from(vec![0; 301]), 0),
            Err(Refused::TooLarge)
        );
        for _ in 0..4 {
            buf.push(p[0], sid(1), Bytes::from(vec![0; 10]), 0).unwrap();
        }
        assert_eq!(
            buf.push(p[0], sid(2), Bytes::from(vec![0; 10]), 0),
            Err(Refused::PeerFull)
        );
        assert_eq!(buf.len(), 4);
        // After the lifetime everything is gone, and the peer's share with it.
        buf.expire(101);
        assert_eq!((buf.len(), buf.bytes()), (0, 0));
        buf.push(p[0], sid(2), Bytes::from(vec![0; 10]), 101)
            .unwrap();
        assert_eq!(buf.take(&sid(2), 101).len(), 1);
    }

    #[test]
    fn a_crowd_cannot_push_out_a_small_honest_share() {
        let p = peers(6);
        let mut buf = PendingBuffer::new(limits());
        buf.push(p[0], sid(9), Bytes::from(vec![1; 50]), 0).unwrap();
        for attacker in &p[1..] {
            for _ in 0..4 {
                let _ = buf.push(*attacker, sid(7), Bytes::from(vec![0; 250]), 1);
                assert!(buf.len() <= 8 && buf.bytes() <= 1600);
            }
        }
        let honest = buf.take(&sid(9), 2);
        assert_eq!(honest.len(), 1, "the honest early frame survived the crowd");
    }
}
