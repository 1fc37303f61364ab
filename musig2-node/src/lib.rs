//! The musig2-p2p node: what the `musig2-node` binary does, as a library.
//!
//! * [`keys`]: a node directory with its secp256k1 signing key and libp2p identity;
//! * [`demo`]: n signers on loopback libp2p sign one message (the README's main job);
//! * [`daemon`]: a long-running node with bootstrap peers and a local control socket;
//! * [`control`]: the JSON-lines protocol of that socket, server and client;
//! * [`settings`]: the node directory's `config.toml` (listen, bootstrap, timeouts, defaults,
//!   contacts and signer groups);
//! * [`view`]: how sessions, aborts and untrusted text are shown;
//! * [`metrics`]: the Prometheus endpoint of `run --metrics`;
//! * [`bitcoin`]: offline Bitcoin commands: a signer set's `musig()` descriptors and
//!   addresses, the approval view of a PSBT, finalizing a PSBT from its BIP373 contributions.
//!
//! # Example
//!
//! Two nodes, each with its own keys and control socket, sign a message; the second joins the
//! session the first announces to it directly.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), musig2_node::NodeError> {
//! use musig2_node::control::{self, Request};
//! use musig2_node::daemon::{Daemon, DaemonConfig};
//!
//! let base = std::env::temp_dir().join(format!("musig2-node-doc-{}", std::process::id()));
//! let _ = std::fs::remove_dir_all(&base);
//! let mut daemons = Vec::new();
//! for name in ["alice", "bob"] {
//!     let dir = base.join(name);
//!     musig2_node::keys::generate(&dir)?;
//!     daemons.push(
//!         Daemon::start(DaemonConfig {
//!             bootstrap: daemons
//!                 .first()
//!                 .map(|first: &Daemon| {
//!                     musig2_transport::split_peer_address(first.addresses()[0].clone())
//!                         .into_iter()
//!                         .collect()
//!                 })
//!                 .unwrap_or_default(),
//!             auto_join: name == "bob",
//!             ..DaemonConfig::new(dir, vec!["/ip4/127.0.0.1/tcp/0".parse().expect("address")])
//!         })
//!         .await?,
//!     );
//! }
//! let (alice, bob) = (&daemons[0], &daemons[1]);
//! let created = control::call(
//!     alice.control_socket(),
//!     &Request::Create {
//!         signers: vec![
//!             alice.node().public_key().to_string(),
//!             bob.node().public_key().to_string(),
//!         ],
//!         peers: vec![
//!             Some(alice.node().peer_id().to_string()),
//!             Some(bob.node().peer_id().to_string()),
//!         ],
//!         message_hex: Some(hex::encode(b"hello")),
//!         messages: Vec::new(),
//!         document_digest: None,
//!         topology: Default::default(),
//!         commitments: None,
//!         tweaks: Vec::new(),
//!         taproot: None,
//!         join_timeout_secs: None,
//!         max_failovers: None,
//!     },
//! )
//! .await?;
//! let session = created["session"].as_str().expect("session id").to_owned();
//! let done = control::call(
//!     bob.control_socket(),
//!     &Request::Wait { session, timeout_secs: Some(30) },
//! )
//! .await?;
//! assert_eq!(done["signature"].as_str().map(str::len), Some(128));
//! for daemon in daemons {
//!     daemon.shutdown().await?;
//! }
//! # let _ = std::fs::remove_dir_all(&base);
//! # Ok(())
//! # }
//! ```

pub mod bitcoin;
pub mod control;
pub mod daemon;
pub mod demo;
mod error;
pub mod keys;
pub mod metrics;
pub mod psbt_session;
pub mod settings;
pub mod view;

pub use error::{ErrorKind, NodeError, Result};
