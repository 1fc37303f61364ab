#![doc = include_str!("../README.md")]

mod adversary;
mod clock;
mod error;
mod scenario;

pub use adversary::{Adversary, AdversaryLog, Behaviour, FloodStats, flood_junk};
pub use clock::WallClock;
pub use error::{Result, TestkitError};
pub use scenario::{HonestOutcome, Outcome, Report, Scenario, keypairs_from_seed, test_config};
