#![doc = include_str!("../README.md")]

mod adversary;
mod clock;
mod crash;
mod error;
mod randomized;
mod scenario;

pub use adversary::{
    Adversary, AdversaryLog, AdversarySetup, Behaviour, FloodStats, LateMessage, SharedTransport,
    Twist, flood_junk,
};
pub use clock::WallClock;
pub use crash::{CrashPoint, CrashRecord};
pub use error::{Result, TestkitError};
pub use randomized::{RandomizedCase, Role};
pub use scenario::{
    CreatorAnnouncement, FAULTY_SEND_TIMEOUT, FailoverSeen, HonestOutcome, Outcome, Report,
    Scenario, Violation, keypairs_from_seed, libp2p_test_config, test_config,
};
