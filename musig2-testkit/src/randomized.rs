//! One run of the randomized adversary ([`Behaviour::Randomized`]) in a given configuration,
//! reproducible from a single line.

use std::fmt;
use std::str::FromStr;

use musig2_proto::{ElectionMethod, Topology};

use crate::adversary::Behaviour;
use crate::error::{Result, TestkitError};
use crate::scenario::{CreatorAnnouncement, Report, Scenario, Violation};

/// The part a randomized adversary plays besides signing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A member; signer 0 is honest and creates the session (and coordinates in star).
    Member,
    /// It creates and announces the session (it may sit in slot 0 and then also coordinate in
    /// star).
    Creator,
    /// Star only: the elected coordinator (the last signer, `ElectionMethod::LastSigner`).
    Coordinator,
}

/// One randomized run: the seed (keys, network and the adversary's decisions), the number of
/// signers, topology, commitments, role and slot of the adversary.
///
/// Its [`Display`](fmt::Display) form, e.g. `seed=17 n=4 topology=star commitments=on
/// role=creator index=0` (with ` failovers=2` when failover is on), parses back with [`FromStr`], so a failing case printed by a test
/// can be re-run alone (see the crate README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RandomizedCase {
    /// Seed of the keys, the network and the strategy.
    pub seed: u64,
    /// Number of signers.
    pub signers: usize,
    /// Mesh or star.
    pub topology: Topology,
    /// Whether nonce commitments are exchanged first.
    pub commitments: bool,
    /// The adversary's role.
    pub role: Role,
    /// The adversary's signer index.
    pub index: u16,
    /// The announcement's `max_failovers` (0: off, the default; see
    /// [`Scenario::max_failovers`]). Printed as `failovers=<n>` when not 0.
    pub failovers: u16,
}

impl RandomizedCase {
    /// The case of `seed` in a configuration group: 3 to 5 signers and the adversary's slot
    /// (where the role leaves a choice) are drawn from the seed.
    pub fn new(seed: u64, topology: Topology, commitments: bool, role: Role) -> RandomizedCase {
        let signers = 3 + (seed % 3) as usize;
        let n = signers as u64;
        let index = match role {
            Role::Member => 1 + (seed / 3) % (n - 1),
            Role::Creator => (seed / 3) % n,
            Role::Coordinator => n - 1,
        };
        RandomizedCase {
            seed,
            signers,
            topology,
            commitments,
            role,
            index: u16::try_from(index).unwrap_or(1),
            failovers: 0,
        }
    }

    /// The same case with `max_failovers` set to `failovers`.
    pub fn with_failovers(mut self, failovers: u16) -> RandomizedCase {
        self.failovers = failovers;
        self
    }

    /// The scenario of this case.
    pub fn scenario(&self) -> Scenario {
        let mut scenario = Scenario::new(self.seed, self.signers)
            .topology(self.topology)
            .commitments(self.commitments)
            .adversary(self.index, Behaviour::Randomized { seed: self.seed });
        if self.failovers > 0 {
            scenario = scenario.max_failovers(self.failovers);
        }
        match self.role {
            Role::Member => {}
            Role::Creator => scenario = scenario.adversary_creates(CreatorAnnouncement::Honest),
            Role::Coordinator => scenario = scenario.election(ElectionMethod::LastSigner),
        }
        scenario
    }

    /// Runs the case and returns its report.
    pub async fn run(&self) -> Result<Report> {
        self.scenario().run().await
    }

    /// Runs the case and returns what broke the property of
    /// [`Report::randomized_violations`] (empty when the run was safe) with the report.
    pub async fn check(&self) -> Result<(Vec<Violation>, Report)> {
        let report = self.run().await?;
        Ok((report.randomized_violations(), report))
    }
}

impl fmt::Display for RandomizedCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topology = match self.topology {
            Topology::Mesh => "mesh",
            Topology::Star => "star",
        };
        let role = match self.role {
            Role::Member => "member",
            Role::Creator => "creator",
            Role::Coordinator => "coordinator",
        };
        write!(
            f,
            "seed={} n={} topology={topology} commitments={} role={role} index={}",
            self.seed,
            self.signers,
            if self.commitments { "on" } else { "off" },
            self.index
        )?;
        if self.failovers > 0 {
            write!(f, " failovers={}", self.failovers)?;
        }
        Ok(())
    }
}

impl FromStr for RandomizedCase {
    type Err = TestkitError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |what: &str| TestkitError::InvalidScenario(format!("randomized case: {what}"));
        let mut case = RandomizedCase {
            seed: 0,
            signers: 0,
            topology: Topology::Mesh,
            commitments: true,
            role: Role::Member,
            index: 1,
            failovers: 0,
        };
        for field in s.split_whitespace() {
            let (key, value) = field.split_once('=').ok_or_else(|| bad(field))?;
            match key {
                "seed" => case.seed = value.parse().map_err(|_| bad(field))?,
                "n" => case.signers = value.parse().map_err(|_| bad(field))?,
                "index" => case.index = value.parse().map_err(|_| bad(field))?,
                "failovers" => case.failovers = value.parse().map_err(|_| bad(field))?,
                "topology" => {
                    case.topology = match value {
                        "mesh" => Topology::Mesh,
                        "star" => Topology::Star,
                        _ => return Err(bad(field)),
                    }
                }
                "commitments" => case.commitments = value == "on",
                "role" => {
                    case.role = match value {
                        "member" => Role::Member,
                        "creator" => Role::Creator,
                        "coordinator" => Role::Coordinator,
                        _ => return Err(bad(field)),
                    }
                }
                _ => return Err(bad(field)),
            }
        }
        if case.signers < 2 {
            return Err(bad("n missing or below 2"));
        }
        Ok(case)
    }
}
