//! Traffic counters of a [`Node`](crate::Node): frames in and out, rejected frames by reason,
//! peers blocked. Cheap to update (atomics, one short lock for a rejection) and to read at any
//! time with [`Node::stats`](crate::Node::stats), e.g. for a metrics endpoint.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::CoordinatorError;

/// The counters, shared between the node task, its send tasks and its handles.
#[derive(Debug, Default)]
pub(crate) struct NodeStats {
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    bytes_out: AtomicU64,
    send_failures: AtomicU64,
    peers_blocked: AtomicU64,
    store_commits: AtomicU64,
    store_commit_micros: AtomicU64,
    store_failures: AtomicU64,
    dht_puts: AtomicU64,
    dht_puts_not_needed: AtomicU64,
    dht_put_failures: AtomicU64,
    batch_signed_envelopes: AtomicU64,
    batch_signatures: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

/// A copy of the counters at one moment; every count is since the node started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Frames received from peers.
    pub frames_in: u64,
    /// Frames the transport accepted for sending.
    pub frames_out: u64,
    /// Their bytes (frames only: no transport framing, no DHT traffic).
    pub bytes_out: u64,
    /// Frames given up on after every retry.
    pub send_failures: u64,
    /// Times a peer was blocked for repeated offences.
    pub peers_blocked: u64,
    /// Session-store transactions committed.
    pub store_commits: u64,
    /// Their total duration, in microseconds (with `store_commits`: the mean commit latency).
    pub store_commit_micros: u64,
    /// Session-store transactions that failed.
    pub store_failures: u64,
    /// Announcements of sessions created here stored in the DHT.
    pub dht_puts: u64,
    /// Announcements not stored in the DHT because every signer had its direct copy and
    /// joined (or the session had ended) in time ([`DhtAnnounce::IfNotJoinedWithin`](crate::DhtAnnounce::IfNotJoinedWithin)).
    pub dht_puts_not_needed: u64,
    /// Deferred DHT puts that failed after their retries (the session went on; signers with a
    /// direct copy are not affected).
    pub dht_put_failures: u64,
    /// Envelopes of this node signed in batches, several under one signature (ADR 0016).
    pub batch_signed_envelopes: u64,
    /// The signatures that covered them (with `batch_signed_envelopes`: the mean batch size).
    pub batch_signatures: u64,
    /// Frames or envelopes rejected, by reason (`undecodable_frame`, `invalid_announcement`,
    /// `duplicate`, `bad_signature_or_encoding`, `unbound_peer`, ...).
    pub rejected: BTreeMap<&'static str, u64>,
}

impl NodeStats {
    pub(crate) fn frame_in(&self) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn frame_out(&self, bytes: usize) {
        self.frames_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out
            .fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn send_failed(&self) {
        self.send_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn peer_blocked(&self) {
        self.peers_blocked.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn store_commit(&self, took: std::time::Duration, ok: bool) {
        if ok {
            self.store_commits.fetch_add(1, Ordering::Relaxed);
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            self.store_commit_micros
                .fetch_add(micros, Ordering::Relaxed);
        } else {
            self.store_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn dht_put(&self, outcome: DhtPut) {
        let counter = match outcome {
            DhtPut::Stored => &self.dht_puts,
            DhtPut::NotNeeded => &self.dht_puts_not_needed,
            DhtPut::Failed => &self.dht_put_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn batch_sealed(&self, sealed: musig2_proto::Sealed) {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        self.batch_signed_envelopes
            .fetch_add(count(sealed.batched_envelopes), Ordering::Relaxed);
        self.batch_signatures
            .fetch_add(count(sealed.batch_signatures), Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self, reason: &'static str) {
        let mut map = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(reason).or_insert(0) += 1;
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            frames_in: self.frames_in.load(Ordering::Relaxed),
            frames_out: self.frames_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            send_failures: self.send_failures.load(Ordering::Relaxed),
            peers_blocked: self.peers_blocked.load(Ordering::Relaxed),
            store_commits: self.store_commits.load(Ordering::Relaxed),
            store_commit_micros: self.store_commit_micros.load(Ordering::Relaxed),
            store_failures: self.store_failures.load(Ordering::Relaxed),
            dht_puts: self.dht_puts.load(Ordering::Relaxed),
            dht_puts_not_needed: self.dht_puts_not_needed.load(Ordering::Relaxed),
            dht_put_failures: self.dht_put_failures.load(Ordering::Relaxed),
            batch_signed_envelopes: self.batch_signed_envelopes.load(Ordering::Relaxed),
            batch_signatures: self.batch_signatures.load(Ordering::Relaxed),
            rejected: self
                .rejected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// What became of a created session's DHT put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DhtPut {
    Stored,
    NotNeeded,
    Failed,
}

/// A short, stable name for why an envelope was rejected.
pub(crate) fn rejection_reason(error: &CoordinatorError) -> &'static str {
    match error {
        CoordinatorError::InvalidMessage { .. } => "bad_signature_or_encoding",
        CoordinatorError::UnboundPeer { .. } => "unbound_peer",
        CoordinatorError::Duplicate { .. } => "duplicate",
        CoordinatorError::StaleSequence { .. } => "stale_sequence",
        CoordinatorError::SequenceGap { .. } => "sequence_gap",
        CoordinatorError::ClockSkew { .. } => "clock_skew",
        CoordinatorError::WrongAttempt { .. } => "wrong_attempt",
        CoordinatorError::UnexpectedMessage { .. } => "unexpected_message",
        CoordinatorError::SessionFinished(_) => "session_finished",
        CoordinatorError::NotASigner(_) => "not_a_signer",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_by_reason() {
        let stats = NodeStats::default();
        stats.frame_in();
        stats.frame_in();
        stats.frame_out(140);
        stats.frame_out(60);
        stats.rejected("duplicate");
        stats.rejected("duplicate");
        stats.rejected("undecodable_frame");
        stats.peer_blocked();
        let snapshot = stats.snapshot();
        assert_eq!((snapshot.frames_in, snapshot.frames_out), (2, 2));
        assert_eq!(snapshot.bytes_out, 200);
        assert_eq!(snapshot.rejected.get("duplicate"), Some(&2));
        assert_eq!(snapshot.rejected.get("undecodable_frame"), Some(&1));
        assert_eq!(snapshot.peers_blocked, 1);
        assert_eq!(snapshot.send_failures, 0);
    }
}
