//! The randomized adversary of issue 9: a seeded strategy bends every message the adversary
//! sends (drop, duplicate, delay, reorder, re-date, reuse a sequence number, equivocate to a
//! subset, relay stale contributions, sign with another key), in mesh and star, with and
//! without commitments, as member, creator or star coordinator. Every run must keep the
//! property of `Report::randomized_violations`: no honest node's own finding blames an honest
//! signer, the honest nodes that finish hold the same valid signature, no honest nonce is used
//! twice, and no honest node hangs past the session deadline.
//!
//! A failing case prints a line such as `seed=17 n=4 topology=star commitments=on
//! role=creator index=0`; re-run it alone with
//! `MUSIG2_RANDOM_CASE='<line>' cargo test -p musig2-testkit --test randomized repro -- --ignored --nocapture`.
//! The long run: `MUSIG2_RANDOM_SEEDS=10000 cargo test -p musig2-testkit --test randomized
//! long_run -- --ignored --nocapture`.

use std::collections::BTreeMap;

use musig2_proto::Topology;
use musig2_testkit::{RandomizedCase, Role};

/// Every configuration: topology, commitments, role.
const CONFIGS: [(Topology, bool, Role); 10] = [
    (Topology::Mesh, true, Role::Member),
    (Topology::Mesh, false, Role::Member),
    (Topology::Star, true, Role::Member),
    (Topology::Star, false, Role::Member),
    (Topology::Mesh, true, Role::Creator),
    (Topology::Mesh, false, Role::Creator),
    (Topology::Star, true, Role::Creator),
    (Topology::Star, false, Role::Creator),
    (Topology::Star, true, Role::Coordinator),
    (Topology::Star, false, Role::Coordinator),
];

/// Failures grouped by class: how many runs, and the first (smallest-seed) case with its
/// account.
#[derive(Default)]
struct Failures {
    runs: usize,
    /// Runs in which some honest node followed or made a star failover.
    failover_runs: usize,
    by_class: BTreeMap<String, (usize, RandomizedCase, String)>,
}

impl Failures {
    async fn run(&mut self, case: RandomizedCase) {
        self.runs += 1;
        let (violations, report) = case.check().await.expect("scenario runs");
        if report.honest.iter().any(|h| !h.failovers.is_empty()) {
            self.failover_runs += 1;
        }
        if violations.is_empty() {
            return;
        }
        // Grouped by what broke and where: `<violation class> | <configuration>`.
        let config = case.to_string();
        let config = config
            .split_whitespace()
            .skip(2)
            .filter(|f| !f.starts_with("index="))
            .collect::<Vec<_>>()
            .join(" ");
        let mut classes: Vec<String> = violations
            .iter()
            .map(|v| format!("{} | {config}", v.class()))
            .collect();
        classes.sort();
        classes.dedup();
        let detail = report.describe_violations(&violations);
        if std::env::var_os("MUSIG2_RANDOM_VERBOSE").is_some() {
            println!("FAIL {case}\n{detail}");
        }
        for class in classes {
            let entry = self
                .by_class
                .entry(class)
                .or_insert_with(|| (0, case, detail.clone()));
            entry.0 += 1;
            if case.seed < entry.1.seed {
                entry.1 = case;
                entry.2 = detail.clone();
            }
        }
    }

    fn summary(&self) -> String {
        let mut text = format!(
            "{} runs ({} with a failover)\n",
            self.runs, self.failover_runs
        );
        for (class, (count, case, detail)) in &self.by_class {
            text.push_str(&format!(
                "\n== {class}: {count} runs; smallest: {case}\n{detail}"
            ));
        }
        text
    }

    fn assert_none(&self) {
        assert!(
            self.by_class.is_empty(),
            "randomized adversary broke the property; re-run one case with \
             MUSIG2_RANDOM_CASE='<case>' cargo test -p musig2-testkit --test randomized repro \
             -- --ignored --nocapture\n{}",
            self.summary()
        );
    }
}

/// Star with failover on (`max_failovers = 2`, issue 11): commitments, role. The adversary
/// does not follow `FailoverClaim`s (it keeps to its attempt and withholds in the new one), as
/// an adversary may.
const FAILOVER_CONFIGS: [(Topology, bool, Role); 6] = [
    (Topology::Star, true, Role::Member),
    (Topology::Star, false, Role::Member),
    (Topology::Star, true, Role::Creator),
    (Topology::Star, false, Role::Creator),
    (Topology::Star, true, Role::Coordinator),
    (Topology::Star, false, Role::Coordinator),
];

/// `max_failovers` in the failover runs.
const FAILOVERS: u16 = 2;

/// Runs `seeds` seeds of each configuration in `configs`.
async fn run_group(configs: &[(Topology, bool, Role)], seeds: std::ops::Range<u64>) {
    run_group_with(configs, seeds, 0).await;
}

/// Runs `seeds` seeds of each configuration in `configs` with `max_failovers = failovers`.
async fn run_group_with(
    configs: &[(Topology, bool, Role)],
    seeds: std::ops::Range<u64>,
    failovers: u16,
) {
    let mut failures = Failures::default();
    for &(topology, commitments, role) in configs {
        for seed in seeds.clone() {
            failures
                .run(
                    RandomizedCase::new(seed, topology, commitments, role)
                        .with_failovers(failovers),
                )
                .await;
        }
    }
    failures.assert_none();
}

#[tokio::test(start_paused = true)]
async fn random_mesh_member() {
    run_group(&CONFIGS[0..2], 0..28).await;
}

#[tokio::test(start_paused = true)]
async fn random_star_member() {
    run_group(&CONFIGS[2..4], 0..28).await;
}

#[tokio::test(start_paused = true)]
async fn random_creator() {
    run_group(&CONFIGS[4..8], 0..14).await;
}

#[tokio::test(start_paused = true)]
async fn random_star_coordinator() {
    run_group(&CONFIGS[8..10], 0..28).await;
}

#[tokio::test(start_paused = true)]
async fn random_star_failover_member() {
    run_group_with(&FAILOVER_CONFIGS[0..2], 0..FAILOVER_SEEDS, FAILOVERS).await;
}

#[tokio::test(start_paused = true)]
async fn random_star_failover_creator() {
    run_group_with(&FAILOVER_CONFIGS[2..4], 0..FAILOVER_SEEDS, FAILOVERS).await;
}

#[tokio::test(start_paused = true)]
async fn random_star_failover_coordinator() {
    run_group_with(&FAILOVER_CONFIGS[4..6], 0..FAILOVER_SEEDS, FAILOVERS).await;
}

/// Seeds of each failover configuration in the committed run.
const FAILOVER_SEEDS: u64 = 70;

/// `MUSIG2_RANDOM_SEEDS` seeds (default 3,000) over the failover configurations only
/// (`max_failovers = 2`, or `MUSIG2_RANDOM_FAILOVERS`); prints each failure class with its count and smallest case.
#[tokio::test(start_paused = true)]
#[ignore = "long run: MUSIG2_RANDOM_SEEDS=3000"]
async fn long_run_failover() {
    let failovers = env_number("MUSIG2_RANDOM_FAILOVERS", FAILOVERS);
    long_run_over("long run (failover)", &FAILOVER_CONFIGS, failovers, 3_000).await;
}

/// `MUSIG2_RANDOM_SEEDS` seeds (default 10,000), spread over every configuration; prints each
/// failure class with its count and smallest case.
#[tokio::test(start_paused = true)]
#[ignore = "long run: MUSIG2_RANDOM_SEEDS=10000"]
async fn long_run() {
    long_run_over("long run", &CONFIGS, 0, 10_000).await;
}

/// `MUSIG2_RANDOM_SEEDS` seeds (default `default_seeds`) from `MUSIG2_RANDOM_FIRST_SEED`
/// (default 0, so that a later long run can cover seeds an earlier one did not) cycling through
/// `configs` with `max_failovers = failovers`; prints the summary under `title`.
async fn long_run_over(
    title: &str,
    configs: &[(Topology, bool, Role)],
    failovers: u16,
    default_seeds: u64,
) {
    let seeds = env_number("MUSIG2_RANDOM_SEEDS", default_seeds);
    let first = env_number("MUSIG2_RANDOM_FIRST_SEED", 0u64);
    let start = std::time::Instant::now();
    let mut failures = Failures::default();
    for seed in first..first.saturating_add(seeds) {
        let (topology, commitments, role) = configs[(seed % configs.len() as u64) as usize];
        failures
            .run(RandomizedCase::new(seed, topology, commitments, role).with_failovers(failovers))
            .await;
    }
    println!(
        "{title}: {} in {:.1?}\n{}",
        failures.runs,
        start.elapsed(),
        failures.summary()
    );
    failures.assert_none();
}

/// The number in environment variable `name`, or `default` if it is unset or not a number.
fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Re-runs one case given as `MUSIG2_RANDOM_CASE='seed=.. n=.. topology=.. commitments=..
/// role=.. index=..'` and prints every honest outcome and the adversary's mutations.
#[tokio::test(start_paused = true)]
#[ignore = "needs MUSIG2_RANDOM_CASE"]
async fn repro() {
    let line = std::env::var("MUSIG2_RANDOM_CASE").expect("MUSIG2_RANDOM_CASE");
    let case: RandomizedCase = line.parse().expect("a case line");
    let (violations, report) = case.check().await.expect("scenario runs");
    println!("{case}\n{}", report.describe_violations(&violations));
    assert!(violations.is_empty(), "{case}: {violations:?}");
}
