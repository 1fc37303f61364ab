#![doc = include_str!("../README.md")]

mod adversary;
mod clock;
mod error;
mod scenario;

pub use adversary::{Adversary, AdversaryLog, Behaviour, FloodStats, flood_junk};
pub use clock::WallClock;
pub use error::{Result, TestkitError};
pub use scenario::{
    FAULTY_SEND_TIMEOUT, HonestOutcome, Outcome, Report, Scenario, keypairs_from_seed, test_config,
};
