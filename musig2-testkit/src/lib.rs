#![doc = include_str!("../README.md")]

mod adversary;
mod clock;
mod error;
mod randomized;
mod scenario;

pub use adversary::{Adversary, AdversaryLog, AdversarySetup, Behaviour, FloodStats, flood_junk};
pub use clock::WallClock;
pub use error::{Result, TestkitError};
pub use randomized::{RandomizedCase, Role};
pub use scenario::{
    CreatorAnnouncement, FAULTY_SEND_TIMEOUT, HonestOutcome, Outcome, Report, Scenario, Violation,
    keypairs_from_seed, test_config,
};
