//! # musig2-coordinator
//!
//! The musig2-p2p signing node. Two layers:
//!
//! * [`SessionMachine`]: a sans-IO state machine for one signer in one session. Inputs are
//!   envelopes, deadlines and local commands with the current time; outputs are envelopes to send
//!   and [`Event`]s. It owns the phases (created → joined → nonce-commit → nonce → partial-sig →
//!   done | aborted), authentication of every envelope against the signed announcement, peer
//!   binding, replay protection, idempotent collection with equivocation blame, `holdouts()`, and
//!   aggregation with the core's fast path and blame.
//! * [`Node`]: a handle to an async task that owns a [`Transport`](musig2_transport::Transport),
//!   the clock and the timers, routes frames to sessions, retries sends with backoff and batches
//!   envelopes for the same peer into one frame.
//!
//! Topologies: mesh (everyone sends to everyone) and star (signers send to the elected
//! coordinator, which distributes the aggregate nonce with every signer's signed nonce and then
//! the final signature). A lying coordinator can stall a session, never make anyone sign
//! something else or accept an invalid signature. With `Policy::max_failovers` > 0 a star
//! aggregator that misses its deadline is replaced by the next signer in election order (a
//! signed claim, a new attempt with fresh nonces), and the signature's broadcast turn passes
//! on when the coordinator does not confirm it ([`Event::FinalizeDue`],
//! [`Node::confirm_finalized`]); see ADR 0008.
//!
//! ```
//! use std::sync::Arc;
//! use musig2_coordinator::{Config, Node, SessionRequest};
//! use musig2_proto::MessageToSign;
//! use musig2_transport::{MemoryNetwork, Transport};
//! use secp256k1::Keypair;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), musig2_coordinator::CoordinatorError> {
//! let network = MemoryNetwork::new(1);
//! let keypairs: Vec<Keypair> = (0..3).map(|_| Keypair::new(&mut rand::rng())).collect();
//! let nodes: Vec<Node> = keypairs
//!     .iter()
//!     .map(|kp| Node::spawn(Arc::new(network.add_node()), *kp, Config::default()))
//!     .collect();
//!
//! let request = SessionRequest {
//!     signers: keypairs.iter().map(|k| k.public_key()).collect(),
//!     peers: nodes.iter().map(|n| Some(n.peer_id())).collect(),
//!     messages: vec![MessageToSign::new(b"pay 1 BTC to Carol".to_vec())],
//!     document_digest: None,
//!     policy: nodes[0].default_policy(),
//! };
//! let session = nodes[0].create_session(request).await?;
//! for node in &nodes[1..] {
//!     node.join_session(session).await?;
//! }
//! // One signature per message.
//! let signatures = nodes[0].wait_for_signatures(session).await?;
//! assert_eq!(signatures.len(), 1);
//! for node in &nodes[1..] {
//!     assert_eq!(node.wait_for_signatures(session).await?, signatures);
//! }
//! # Ok(())
//! # }
//! ```

mod config;
mod election;
mod error;
mod event;
mod machine;
mod node;
mod offences;
mod outbound;
mod pending;
mod replay;
mod session_table;
mod set_aside;
mod stats;
pub mod store;
pub mod transcript;

pub use config::{Config, DhtAnnounce};
pub use election::{TAG_ELECTION, election_order};
pub use error::{CoordinatorError, PeerAction, Result};
pub use event::{AbortOrigin, Event};
pub use machine::{Output, Phase, SessionHealth, SessionMachine, message_tweaks};
pub use node::{
    DHT_KEY_PREFIX, Node, NodeUsage, SessionRequest, announcement_record_validator, dht_key,
};
pub use replay::ReplayWindow;
pub use stats::StatsSnapshot;
pub use store::{MemoryStore, Outcome, Record, RedbStore, SessionStore, StoredSession};
pub use transcript::{
    BlameKind, BlameProof, Claim, ClaimSource, MessageReport, TRANSCRIPT_MAGIC, TRANSCRIPT_VERSION,
    Transcript, TranscriptLimits, TranscriptReport,
};
