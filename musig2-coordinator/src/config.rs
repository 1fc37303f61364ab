//! Every timeout and limit of the node, with defaults.

use std::time::Duration;

use musig2_proto::Limits;

/// Configuration of a [`Node`](crate::Node) and its sessions. `Config::default()` is a sensible
/// production setting; tests shorten the timeouts.
#[derive(Clone, Debug)]
pub struct Config {
    /// Lifetime of a session this node creates (announcement expiry), after its join window.
    pub session_timeout: Duration,
    /// Join window of a session this node creates: every signer joins within it, counted from
    /// creation (human time: people read the message before they sign).
    pub join_timeout: Duration,
    /// Deadline for each nonce phase (commitments, then nonces).
    pub nonce_exchange_timeout: Duration,
    /// Deadline for the partial-signature exchange.
    pub partial_sig_exchange_timeout: Duration,
    /// Deadline for the coordinator to broadcast and confirm (carried in the policy).
    pub broadcast_timeout: Duration,
    /// How long a DHT put or get may take, retries included.
    pub dht_query_timeout: Duration,
    /// When a session this node creates is stored in the DHT.
    pub dht_announce: DhtAnnounce,
    /// How long one frame send may take before it is retried.
    pub message_send_timeout: Duration,
    /// Retries of a failed send (after the first try).
    pub send_retry_attempts: u32,
    /// First retry delay; doubled on every retry, with jitter, up to `retry_max_delay`.
    pub retry_base_delay: Duration,
    /// Longest delay between retries.
    pub retry_max_delay: Duration,
    /// Largest accepted jump in a sender's sequence numbers.
    pub max_seq_gap: u64,
    /// Size of the per-sender sliding window of seen sequence numbers (at most 128).
    pub replay_window: u64,
    /// Largest accepted difference between an envelope's timestamp and our clock.
    pub max_clock_skew: Duration,
    /// Most sessions this node takes part in at once (joined or created here, not finished).
    pub max_concurrent_sessions: usize,
    /// Most sessions announced to this node that it has not joined, held at once. They live in
    /// their own pool, apart from `max_concurrent_sessions`; when it is full the oldest is
    /// dropped.
    pub max_unjoined_sessions: usize,
    /// Most un-joined sessions held from one creator key (oldest dropped first).
    pub max_unjoined_per_creator: usize,
    /// Most unfinished sessions this node has joined that one other creator key announced
    /// (so `--auto-join` cannot let one key take every session slot).
    pub max_active_per_creator: usize,
    /// How long an un-joined session is held, whatever its announcement says.
    pub unjoined_session_lifetime: Duration,
    /// Longest session lifetime (announcement expiry, session timeout) this node accepts in an
    /// announcement; longer ones are refused ([`CoordinatorError::PolicyOutOfBounds`](crate::CoordinatorError::PolicyOutOfBounds)).
    pub max_session_lifetime: Duration,
    /// Longest join window (human time to read and join) this node accepts in an announcement.
    pub max_join_window: Duration,
    /// Longest phase timeout (nonce, partial signature, broadcast) this node accepts in an
    /// announcement (machine time: a joined session waits at most this long in one phase).
    pub max_round_timeout: Duration,
    /// Most envelopes buffered per peer for a session we do not know yet, or from a peer whose
    /// binding we have not seen yet.
    pub max_buffered_messages_per_peer: usize,
    /// Most bytes of frames buffered per peer for sessions we do not know yet.
    pub max_pending_bytes_per_peer: usize,
    /// Most frames buffered for sessions we do not know yet, over all peers.
    pub max_pending_frames: usize,
    /// Most bytes buffered for sessions we do not know yet, over all peers.
    pub max_pending_bytes: usize,
    /// Largest frame buffered for a session we do not know yet (only small bodies, such as a
    /// join, a commitment, a nonce or a partial signature, can legitimately arrive that early).
    /// Frames for unknown sessions are held for `max_clock_skew` at most.
    pub max_pending_frame_bytes: usize,
    /// Most peers whose offences are counted at once (the least offending is forgotten first).
    pub max_offence_entries: usize,
    /// Bytes of announcement frames accepted per second from one peer (an announcement costs a
    /// decode, a signature check and a key aggregation per signer); more are set aside. Sessions
    /// joined by id are not counted.
    pub announcement_bytes_per_peer_per_sec: u64,
    /// Bytes of announcement frames accepted per second from all peers together.
    pub announcement_bytes_per_sec: u64,
    /// Most announcement frames held after going over the announcement budgets: set aside
    /// undecoded and unverified, and taken in once the budgets have room for them, or at once for
    /// a local caller that looks their session up by id, who then pays for the check (ADR 0025).
    /// Held for `max_clock_skew` at most.
    pub max_set_aside_announcements: usize,
    /// Most of them from one peer.
    pub max_set_aside_announcements_per_peer: usize,
    /// Most bytes of them over all peers; one peer holds at most a quarter.
    pub max_set_aside_announcement_bytes: usize,
    /// Most sends in flight at once, over all peers.
    pub max_inflight_sends: usize,
    /// Most sends in flight at once to one peer (the transport pipelines them). Above
    /// [`musig2_transport::ACK_BATCH`], the node lets receivers acknowledge its frames in
    /// batches ([`musig2_transport::Transport::send_pipelined`]); at or below it every frame is
    /// acknowledged at once, so a full pipeline never waits for a receiver's `ack_delay`.
    pub max_inflight_sends_per_peer: usize,
    /// Most frames queued for one peer; past it frames for that peer are shed (the node task
    /// never waits for a slow or unreachable peer).
    pub max_queued_frames_per_peer: usize,
    /// Most peers with frames queued or in flight at once.
    pub max_outbound_peers: usize,
    /// Wire limits: frame size, max signers, max message size, batch size.
    pub limits: Limits,
    /// Capacity of the command channel from handles to the node task.
    pub command_queue: usize,
    /// Capacity of the event broadcast channel.
    pub event_queue: usize,
    /// A peer that sends this many offending frames (undecodable, badly signed, or rejected by
    /// a session for a reason an honest peer cannot cause) within `peer_block_duration` is
    /// blocked at the transport. 0 never blocks.
    pub max_peer_offences: u32,
    /// How long a blocked peer stays blocked, and the window offences are counted in.
    pub peer_block_duration: Duration,
    /// How long a finished session is kept (in memory and in the store) for late queries,
    /// signers that missed its end, and export; then it is forgotten.
    pub finished_session_retention: Duration,
    /// Most finished sessions kept; the oldest are forgotten first. A finished session holds
    /// about 8 KiB at n = 10 and 200 KiB at n = 1,000 per node in memory (BENCHMARKS.md, "What
    /// a finished session keeps"): lower this for large sessions.
    pub max_finished_sessions: usize,
    /// Most finished sessions remembered by id after they are forgotten, until their
    /// announcement expires: a replay of the announcement is then ignored rather than taken in
    /// as a new session (which a node that joins what it discovers would join, and then name
    /// the other signers, who finished long ago, as holdouts). Oldest dropped first; 0 keeps
    /// none. 40 bytes each, in memory and in the store ([`SessionStore::forget`]), so a
    /// restarted node still refuses the replay.
    ///
    /// [`SessionStore::forget`]: crate::SessionStore::forget
    pub max_forgotten_sessions: usize,
}

/// When [`Node::create_session`](crate::Node::create_session) stores the signed announcement
/// in the DHT, where signers find a session by its id.
///
/// A Kademlia put is a lookup of the closest peers plus a store on each of them, and every
/// storing peer checks the record's signature: at n = 10 on loopback it was about a third of a
/// whole session's CPU. When the creator lists every signer's peer, the announcement reaches
/// each of them directly, and the DHT only serves a signer the direct copy missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DhtAnnounce {
    /// Before `create_session` returns: anyone can find the session by id at once.
    Always,
    /// When every signer's peer is listed: the announcement goes to them directly, and is put
    /// in the DHT only if, this long after creation, the session has not ended and this node
    /// has not seen every signer join (a signer the direct copy missed then finds it there).
    /// `create_session` returns without waiting for the DHT. With any signer's peer unlisted,
    /// as [`DhtAnnounce::Always`].
    IfNotJoinedWithin(Duration),
}

impl Config {
    /// The defaults, opened to sessions of up to `max_signers` signers (ADR 0012):
    /// [`Limits::for_signers`] (frames up to `max_signers · 256` bytes), announcement budgets
    /// that let one such announcement through per second from a peer (and four from all peers
    /// together), room to set one aside per peer (four overall), and room to queue frames to every other signer. Every per-peer and per-session
    /// bound that does not grow with the session keeps its default.
    pub fn for_signers(max_signers: usize) -> Config {
        let defaults = Config::default();
        let limits = Limits::for_signers(max_signers);
        let frame = u64::try_from(limits.max_frame_bytes).unwrap_or(u64::MAX);
        Config {
            limits,
            announcement_bytes_per_peer_per_sec: defaults
                .announcement_bytes_per_peer_per_sec
                .max(frame),
            announcement_bytes_per_sec: defaults
                .announcement_bytes_per_sec
                .max(frame.saturating_mul(4)),
            max_set_aside_announcement_bytes: defaults
                .max_set_aside_announcement_bytes
                .max(limits.max_frame_bytes.saturating_mul(4)),
            max_outbound_peers: defaults.max_outbound_peers.max(limits.max_signers),
            ..defaults
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            session_timeout: Duration::from_secs(600),
            join_timeout: Duration::from_secs(600),
            nonce_exchange_timeout: Duration::from_secs(30),
            partial_sig_exchange_timeout: Duration::from_secs(30),
            broadcast_timeout: Duration::from_secs(60),
            dht_query_timeout: Duration::from_secs(30),
            dht_announce: DhtAnnounce::IfNotJoinedWithin(Duration::from_secs(2)),
            message_send_timeout: Duration::from_secs(5),
            send_retry_attempts: 5,
            retry_base_delay: Duration::from_millis(50),
            retry_max_delay: Duration::from_secs(2),
            max_seq_gap: 100,
            replay_window: 128,
            max_clock_skew: Duration::from_secs(60),
            max_concurrent_sessions: 1024,
            max_unjoined_sessions: 256,
            max_unjoined_per_creator: 8,
            max_active_per_creator: 64,
            unjoined_session_lifetime: Duration::from_secs(3600),
            max_session_lifetime: Duration::from_secs(7 * 24 * 3600),
            max_round_timeout: Duration::from_secs(600),
            max_join_window: Duration::from_secs(24 * 3600),
            max_buffered_messages_per_peer: 64,
            max_pending_bytes_per_peer: 64 * 1024,
            max_pending_frames: 4096,
            max_pending_bytes: 4 * 1024 * 1024,
            max_pending_frame_bytes: 2048,
            max_offence_entries: 4096,
            announcement_bytes_per_peer_per_sec: 32 * 1024,
            announcement_bytes_per_sec: 128 * 1024,
            max_set_aside_announcements: 64,
            max_set_aside_announcements_per_peer: 16,
            max_set_aside_announcement_bytes: 256 * 1024,
            max_inflight_sends: 256,
            max_inflight_sends_per_peer: 32,
            max_queued_frames_per_peer: 1024,
            max_outbound_peers: 1024,
            limits: Limits::default(),
            command_queue: 256,
            event_queue: 1024,
            max_peer_offences: 16,
            peer_block_duration: Duration::from_secs(600),
            finished_session_retention: Duration::from_secs(24 * 3600),
            max_finished_sessions: 1024,
            max_forgotten_sessions: 4096,
        }
    }
}
