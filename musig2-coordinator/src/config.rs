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
    /// Most sessions this node takes part in at once.
    pub max_concurrent_sessions: usize,
    /// Most envelopes buffered per peer for a session we do not know yet, or from a peer whose
    /// binding we have not seen yet.
    pub max_buffered_messages_per_peer: usize,
    /// Most sends in flight at once (back-pressure on the transport).
    pub max_inflight_sends: usize,
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
            message_send_timeout: Duration::from_secs(5),
            send_retry_attempts: 5,
            retry_base_delay: Duration::from_millis(50),
            retry_max_delay: Duration::from_secs(2),
            max_seq_gap: 100,
            replay_window: 128,
            max_clock_skew: Duration::from_secs(60),
            max_concurrent_sessions: 1024,
            max_buffered_messages_per_peer: 64,
            max_inflight_sends: 256,
            limits: Limits::default(),
            command_queue: 256,
            event_queue: 1024,
            max_peer_offences: 16,
            peer_block_duration: Duration::from_secs(600),
        }
    }
}
