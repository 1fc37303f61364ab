//! Clusters of honest nodes (and at most one adversary) on a seeded memory network, one signing
//! session across them, and the outcome of every honest node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use musig2_coordinator::{
    AbortOrigin, Config, CoordinatorError, Event, MemoryStore, Node, SessionHealth, SessionRequest,
    SessionStore, StoredSession, announcement_record_validator, dht_key,
};
use musig2_proto::{
    AbortReason, Announcement, ElectionMethod, PeerIdBytes, Policy, SessionId, SignedAnnouncement,
    SignerIndex, SignerInfo, Topology,
};
use musig2_transport::{
    Delay, Libp2pConfig, Libp2pTransport, LinkFault, MemoryConfig, MemoryNetwork, PeerId, Transport,
};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use secp256k1::{Keypair, XOnlyPublicKey, schnorr};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::adversary::{
    Adversary, AdversaryLog, AdversarySetup, Behaviour, FloodStats, SharedTransport, flood_junk,
};
use crate::clock::WallClock;
use crate::crash::{CrashPoint, CrashRecord, stored_nonce_reuse};
use crate::error::{Result, TestkitError};

/// `n` signing keys derived from `seed` (ChaCha20), the same for the same seed.
pub fn keypairs_from_seed(seed: u64, n: usize) -> Vec<Keypair> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n).map(|_| Keypair::new(&mut rng)).collect()
}

/// A node configuration for simulations: production defaults with shorter deadlines, so a
/// stalled session ends after little (paused) time.
pub fn test_config() -> Config {
    Config {
        session_timeout: Duration::from_secs(120),
        // Machines, not people, join here: a short join window.
        join_timeout: Duration::from_secs(20),
        nonce_exchange_timeout: Duration::from_secs(10),
        partial_sig_exchange_timeout: Duration::from_secs(10),
        dht_query_timeout: Duration::from_secs(5),
        // Every scenario's announcement is in the DHT when `create_session` returns, as the
        // crash scenarios' timing (which signer's step comes last) was laid out for; the
        // deferred put of the default is tested in musig2-coordinator's `memory` suite and
        // runs in the libp2p scenarios.
        dht_announce: musig2_coordinator::DhtAnnounce::Always,
        ..Config::default()
    }
}

/// How long a send on a faulty network waits before a dropped frame counts as lost (see
/// [`Scenario::link_fault`]).
pub const FAULTY_SEND_TIMEOUT: Duration = Duration::from_millis(250);

/// A node configuration for libp2p runs on loopback in real time: deadlines of a few seconds,
/// so a withholding adversary costs about two seconds of wall time.
pub fn libp2p_test_config() -> Config {
    Config {
        session_timeout: Duration::from_secs(10),
        join_timeout: Duration::from_secs(2),
        nonce_exchange_timeout: Duration::from_millis(1500),
        partial_sig_exchange_timeout: Duration::from_millis(1500),
        dht_query_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

/// How often a crash scenario looks at the victim's store.
const CRASH_POLL: Duration = Duration::from_millis(1);

/// The delay on every link into a signer that is to crash: longer than [`CRASH_POLL`] and than
/// the node's delay for records it commits lazily (20 ms: its partial signature, its aggregate
/// nonce, its outcome), so each step of its own is in its store before anything it would
/// answer arrives.
fn crash_inbound_delay() -> LinkFault {
    LinkFault::none().with_delay(Delay::Fixed(Duration::from_millis(50)))
}

/// How long a crashed node stays down by default (see [`Scenario::restart_after`]): long
/// enough for the old node to see its transport close and stop.
const DEFAULT_DOWN: Duration = Duration::from_millis(10);

/// A network partition over a span of the run (see [`Scenario::partition`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PartitionWindow {
    groups: Vec<Vec<u16>>,
    from: Duration,
    until: Option<Duration>,
}

/// An honest node of a run, with the store that outlives it.
struct HonestNode {
    index: SignerIndex,
    node: Node,
    events: broadcast::Receiver<Event>,
    store: MemoryStore,
    failovers: FailoverLog,
}

/// The network of a run.
enum Net {
    /// The seeded memory network; transports are added on demand.
    Memory(MemoryNetwork),
    /// Loopback libp2p nodes, handed out in order (the next one at the index).
    Libp2p(Vec<Arc<Libp2pTransport>>, usize),
}

impl Net {
    fn next_transport(&mut self) -> SharedTransport {
        match self {
            Net::Memory(network) => Arc::new(network.add_node()),
            Net::Libp2p(transports, next) => {
                let t = transports[*next % transports.len()].clone();
                *next += 1;
                t
            }
        }
    }
}

/// How one honest node's session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It holds the final signatures, one per message (which the node verified under the
    /// aggregate key; scenarios sign one message).
    Signed(Vec<schnorr::Signature>),
    /// It aborted.
    Aborted {
        /// Why.
        reason: AbortReason,
        /// Whom it blamed.
        blamed: Vec<SignerIndex>,
        /// Who decided: the node itself, or a participant whose signed Abort it received.
        origin: AbortOrigin,
    },
    /// Neither happened before the scenario's deadline (a liveness failure).
    Stalled,
}

/// What an adversarial creator (see [`Scenario::adversary_creates`]) puts in the announcement
/// it signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CreatorAnnouncement {
    /// Every signer with its real peer id (a valid session of the adversary's making).
    Honest,
    /// The adversary's own peer id listed at `victim`'s index as well as at its own: the
    /// victim's messages would be routed to the adversary.
    PeerIdOf {
        /// The honest signer whose peer id is replaced.
        victim: SignerIndex,
    },
}

/// A signing session over a simulated network: `signers` slots, honest [`Node`]s except for at
/// most one [`Adversary`].
///
/// Signer 0 is always honest and creates the session; every peer id is listed in the
/// announcement. The election is [`ElectionMethod::FirstSigner`] unless
/// [`Scenario::election`] says otherwise, so by default the star coordinator is signer 0; with
/// [`ElectionMethod::LastSigner`] it is the last signer, which may be the adversary.
#[derive(Debug, Clone)]
pub struct Scenario {
    seed: u64,
    signers: usize,
    topology: Topology,
    commitments: bool,
    message: Vec<u8>,
    config: Config,
    adversary: Option<(SignerIndex, Behaviour)>,
    outsider_flood: Option<usize>,
    election: ElectionMethod,
    link_fault: Option<LinkFault>,
    creator: Option<CreatorAnnouncement>,
    crash: Option<(SignerIndex, CrashPoint)>,
    max_attempts: Option<u16>,
    libp2p: bool,
    links: Vec<(usize, usize, LinkFault)>,
    max_failovers: Option<u16>,
    restart_after: Duration,
    partitions: Vec<PartitionWindow>,
}

impl Scenario {
    /// A mesh session with nonce commitments among `signers` honest nodes, keys and network
    /// faults drawn from `seed`.
    pub fn new(seed: u64, signers: usize) -> Scenario {
        Scenario {
            seed,
            signers,
            topology: Topology::Mesh,
            commitments: true,
            message: format!("musig2-testkit scenario {seed}").into_bytes(),
            config: test_config(),
            adversary: None,
            outsider_flood: None,
            election: ElectionMethod::FirstSigner,
            link_fault: None,
            creator: None,
            crash: None,
            max_attempts: None,
            libp2p: false,
            links: Vec::new(),
            max_failovers: None,
            restart_after: DEFAULT_DOWN,
            partitions: Vec::new(),
        }
    }

    /// Mesh or star message flow.
    pub fn topology(mut self, topology: Topology) -> Scenario {
        self.topology = topology;
        self
    }

    /// Whether signers exchange nonce commitments before their nonces.
    pub fn commitments(mut self, on: bool) -> Scenario {
        self.commitments = on;
        self
    }

    /// The message to sign.
    pub fn message(mut self, message: impl Into<Vec<u8>>) -> Scenario {
        self.message = message.into();
        self
    }

    /// The honest nodes' configuration (default: [`test_config`]).
    pub fn config(mut self, config: Config) -> Scenario {
        self.config = config;
        self
    }

    /// Puts an adversary with `behaviour` in signer slot `index` (not 0, the creator, unless
    /// [`Scenario::adversary_creates`]).
    pub fn adversary(mut self, index: u16, behaviour: Behaviour) -> Scenario {
        self.adversary = SignerIndex::new(index).ok().map(|i| (i, behaviour));
        self
    }

    /// How the coordinator is elected (default [`ElectionMethod::FirstSigner`]: signer 0).
    /// [`ElectionMethod::LastSigner`] makes the last signer the star coordinator, so an adversary
    /// in that slot plays the coordinator.
    pub fn election(mut self, method: ElectionMethod) -> Scenario {
        self.election = method;
        self
    }

    /// Applies `fault` (drop, delay, duplication, reorder; decisions drawn from the seed) to
    /// every link, from the session's creation on. A dropped frame fails its send after
    /// [`FAULTY_SEND_TIMEOUT`] (instead of the memory network's default five seconds), and the
    /// honest nodes' and the adversary's retries re-send it.
    pub fn link_fault(mut self, fault: LinkFault) -> Scenario {
        self.link_fault = Some(fault);
        self
    }

    /// The adversary (which must be set with [`Scenario::adversary`], and may then sit in any
    /// slot, 0 included) creates the session instead of signer 0: it signs `announcement` with
    /// its own key, stores it in the DHT, sends it to every listed peer (through its send path,
    /// so a [`Behaviour::Randomized`] adversary may drop or delay those copies), and every honest
    /// node is asked to join it by id. A node that refuses the announcement reports it in
    /// [`HonestOutcome::join_error`].
    pub fn adversary_creates(mut self, announcement: CreatorAnnouncement) -> Scenario {
        self.creator = Some(announcement);
        self
    }

    /// Applies `fault` to the one link from signer `from` to signer `to` (after
    /// [`Scenario::link_fault`] and the delays of [`Scenario::crash_restart`], which it
    /// overrides on that link). Memory network only.
    pub fn link_fault_between(mut self, from: u16, to: u16, fault: LinkFault) -> Scenario {
        self.links.push((usize::from(from), usize::from(to), fault));
        self
    }

    /// Kills honest signer `signer`'s node once its store shows `point` (its transport goes
    /// down and the node is dropped without shutdown, as a process dies), and starts a new node
    /// on the same store, key and peer id (see [`Node::spawn_with_store`]). Frames to the
    /// victim get a small link delay, so nothing it would answer arrives between the point and
    /// the crash. [`Report::crash`] says what its store held at the crash. Memory network only.
    pub fn crash_restart(mut self, signer: u16, point: CrashPoint) -> Scenario {
        self.crash = SignerIndex::new(signer).ok().map(|i| (i, point));
        self
    }

    /// The announcement's `max_attempts` (all attempts, the first included; default 3): with
    /// 1, a signer that restarts after sending round-1 material ends the session (reason
    /// `Restarted`, naming it).
    pub fn max_attempts(mut self, attempts: u16) -> Scenario {
        self.max_attempts = Some(attempts);
        self
    }

    /// The announcement's `max_failovers` (default 0: off): how far down the election order
    /// the star aggregator role (and the broadcast turn) may pass (ADR 0008).
    pub fn max_failovers(mut self, failovers: u16) -> Scenario {
        self.max_failovers = Some(failovers);
        self
    }

    /// How long the signer of [`Scenario::crash_restart`] stays down between its crash and its
    /// restart (default 10 ms). Frames sent to it meanwhile are lost; a down time past the
    /// phase timeouts lets the others fail over (star, [`Scenario::max_failovers`]) or time
    /// out. A long down time makes the victim unreachable for [`Report::assert_safe`]: a timeout
    /// may name it.
    pub fn restart_after(mut self, down: Duration) -> Scenario {
        self.restart_after = down.max(DEFAULT_DOWN);
        self
    }

    /// Splits the network into `groups` of signer indices from `from` until `until` (`None`:
    /// for good), both measured from the session's creation (a partition from zero comes
    /// before anyone joins; the joiners then find the announcement in the DHT, which
    /// partitions do not split). Signers in no group form one more group together. Windows
    /// must not overlap; each ends with a heal of the whole network. Signers in different
    /// groups of a window are unreachable to each other for [`Report::assert_safe`]: a
    /// timeout (`Timeout`, `FailoverExhausted`) by one may name the other. Memory network only.
    pub fn partition(
        mut self,
        groups: &[&[u16]],
        from: Duration,
        until: Option<Duration>,
    ) -> Scenario {
        self.partitions.push(PartitionWindow {
            groups: groups.iter().map(|g| g.to_vec()).collect(),
            from,
            until,
        });
        self
    }

    /// Runs every node (and the adversary, and the flooding outsider) on its own
    /// [`Libp2pTransport`] on 127.0.0.1 instead of the memory network. Real sockets need real
    /// time: do not pause the clock, and give the nodes short timeouts (see
    /// [`libp2p_test_config`]). Link faults and crashes are memory-network only.
    pub fn over_libp2p(mut self) -> Scenario {
        self.libp2p = true;
        self
    }

    /// Adds a peer outside the session that sends `frames` junk frames to every honest node
    /// while the session runs.
    pub fn outsider_flood(mut self, frames: usize) -> Scenario {
        self.outsider_flood = Some(frames);
        self
    }

    /// Builds the network, runs the session to its end on every honest node, stops the
    /// adversary and reports. Needs a tokio runtime; use a paused clock for speed and
    /// determinism (a paused clock is refused with [`Scenario::over_libp2p`], whose sockets
    /// need real time).
    pub async fn run(self) -> Result<Report> {
        let n = self.signers;
        self.check()?;
        let mut net = self
            .network(n + usize::from(self.outsider_flood.is_some()))
            .await?;
        let keypairs = keypairs_from_seed(self.seed, n);
        let mut honest: Vec<HonestNode> = Vec::new();
        let mut adversary_transport = None;
        let mut peers = Vec::with_capacity(n);
        for (i, kp) in keypairs.iter().enumerate() {
            let index = SignerIndex::try_from(i)?;
            let transport = net.next_transport();
            peers.push(Some(transport.local_peer_id()));
            match self.adversary {
                Some((a, behaviour)) if a == index => {
                    adversary_transport = Some((transport, *kp, behaviour));
                }
                _ => {
                    let store = MemoryStore::new();
                    let node =
                        Node::spawn_with_store(transport, *kp, self.config.clone(), store.clone())?;
                    let events = node.events();
                    honest.push(HonestNode {
                        index,
                        node,
                        events,
                        store,
                        failovers: FailoverLog::default(),
                    });
                }
            }
        }
        let outsider = self.outsider_flood.map(|frames| {
            let transport = net.next_transport();
            let targets: Vec<_> = honest.iter().map(|h| h.node.peer_id()).collect();
            let seed = self.seed ^ 0x0f10_0d00;
            tokio::spawn(
                async move { flood_junk(transport.as_ref(), &targets, frames, seed).await },
            )
        });
        let mut policy = Policy {
            topology: self.topology,
            nonce_commitment: self.commitments,
            election: self.election,
            ..honest[0].node.default_policy()
        };
        if let Some(max) = self.max_attempts {
            policy.max_attempts = max;
        }
        if let Some(max) = self.max_failovers {
            policy.max_failovers = max;
        }
        let request = SessionRequest {
            signers: keypairs.iter().map(Keypair::public_key).collect(),
            peers: peers.clone(),
            messages: vec![musig2_proto::MessageToSign::new(self.message.clone())],
            document_digest: None,
            policy,
        };
        if let (Some(fault), Net::Memory(network)) = (self.link_fault, &net) {
            network.set_default_fault(fault);
        }
        if let (Some((victim, _)), Net::Memory(network)) = (self.crash, &net) {
            // Everything reaching the victim comes a little late, so it can be stopped right
            // after a step of its own, before anything it would answer arrives.
            for (j, peer) in peers.iter().enumerate() {
                if let (Some(from), Some(Some(to))) = (peer, peers.get(victim.as_usize())) {
                    if j != victim.as_usize() {
                        network.set_link_fault(*from, *to, crash_inbound_delay());
                    }
                }
            }
        }
        if let Net::Memory(network) = &net {
            for &(from, to, fault) in &self.links {
                if let (Some(Some(a)), Some(Some(b))) = (peers.get(from), peers.get(to)) {
                    network.set_link_fault(*a, *b, fault);
                }
            }
        }
        let mut adversary = None;
        let mut created = None;
        if let Some((transport, kp, behaviour)) = adversary_transport {
            let announcement = match (self.creator, self.adversary) {
                (Some(tamper), Some((a, _))) => {
                    let signed = self.adversary_announcement(&request, &peers, a, tamper, &kp)?;
                    let frame = signed.to_frame_bytes();
                    let ttl = self.config.session_timeout;
                    if let Err(e) = transport
                        .dht_put(dht_key(&signed.session_id()), frame, ttl)
                        .await
                    {
                        tracing::debug!(error = %e, "DHT put of the adversary's announcement failed");
                    }
                    created = Some(signed.session_id());
                    Some(signed)
                }
                _ => None,
            };
            adversary = Some(Adversary::spawn_on(
                transport,
                kp,
                behaviour,
                AdversarySetup {
                    limits: self.config.limits,
                    seed: self.seed ^ 0xad5e_55a1,
                    max_clock_skew: self.config.max_clock_skew,
                    announcement,
                    announce_to: None,
                },
            ));
        }
        let (session, joiners) = match created {
            Some(id) => (id, 0..honest.len()),
            None => (
                honest[0].node.create_session(request).await?,
                1..honest.len(),
            ),
        };
        let start = Instant::now();
        let mut watchers = Vec::new();
        for h in &honest {
            watchers.push(watch_failovers(
                &h.node,
                session,
                start,
                h.failovers.clone(),
            ));
        }
        let partitions = match &net {
            Net::Memory(network) if !self.partitions.is_empty() => Some(tokio::spawn(
                run_partitions(network.clone(), self.partitions.clone(), peers.clone()),
            )),
            _ => None,
        };
        if partitions.is_some() {
            // A partition from zero comes before the joins.
            tokio::task::yield_now().await;
        }
        let mut join_errors = vec![None; honest.len()];
        for k in joiners {
            // A session an adversary already ended cannot be joined; the outcome says why.
            if let Err(e) = honest[k].node.join_session(session).await {
                tracing::debug!(error = %e, "join failed");
                join_errors[k] = Some(e.to_string());
            }
        }
        let crash = match (self.crash, &mut net) {
            (Some((victim, point)), Net::Memory(network)) => {
                let record = self
                    .crash_and_restart(network, &mut honest, session, victim, point)
                    .await?;
                if let Some(h) = honest.iter().find(|h| h.index == victim && record.crashed) {
                    watchers.push(watch_failovers(
                        &h.node,
                        session,
                        start,
                        h.failovers.clone(),
                    ));
                }
                Some(record)
            }
            _ => None,
        };
        let deadline = self.config.session_timeout + Duration::from_secs(60);
        let mut outcomes = Vec::with_capacity(honest.len());
        for (h, join_error) in honest.iter_mut().zip(join_errors) {
            let restarted = crash
                .as_ref()
                .is_some_and(|c| c.crashed && c.signer == h.index);
            let outcome = if restarted {
                // The new node may hold the outcome from before its crash: ask for it.
                outcome_of(&h.node, session, deadline).await
            } else {
                wait_for_outcome(&mut h.events, session, deadline).await
            };
            let failovers = h.failovers.lock().map(|l| l.clone()).unwrap_or_default();
            let health = h.node.health(session).await.ok();
            outcomes.push(HonestOutcome {
                signer: h.index,
                outcome,
                failovers,
                health,
                join_error,
                known_sessions: Vec::new(),
                forged_joined: Vec::new(),
                stored: None,
            });
        }
        let adversary_log = match adversary {
            Some(a) => Some(a.stop().await),
            None => None,
        };
        let forged = adversary_log
            .as_ref()
            .map(|log| log.forged_sessions.clone())
            .unwrap_or_default();
        for (h, out) in honest.iter().zip(&mut outcomes) {
            out.known_sessions = h
                .node
                .sessions()
                .await
                .map(|all| all.iter().map(|x| x.session).collect())
                .unwrap_or_default();
            // Asked to join a forged session by id, the node must refuse (its announcement is
            // nowhere to be found in a form that verifies).
            for id in &forged {
                if h.node.join_session(*id).await.is_ok() {
                    out.forged_joined.push(*id);
                }
            }
            out.stored = h.store.load(&session).ok().flatten();
        }
        if let Some(task) = partitions {
            task.abort();
        }
        for task in watchers {
            task.abort();
        }
        if let Net::Memory(network) = &net {
            network.heal();
        }
        let outsider_flood = match outsider {
            Some(task) => task.await.ok(),
            None => None,
        };
        for h in &honest {
            let _ = h.node.shutdown().await;
        }
        if let Net::Libp2p(transports, _) = &net {
            for t in transports {
                let _ = t.shutdown().await;
            }
        }
        let aggregate_key = musig2_core::KeyAggContext::new(
            &keypairs.iter().map(Keypair::public_key).collect::<Vec<_>>(),
        )?
        .x_only_key();
        let unreachable = self.unreachable(crash.as_ref());
        Ok(Report {
            session,
            message: self.message,
            aggregate_key,
            adversary: self.adversary.map(|(i, _)| i),
            honest: outcomes,
            adversary_log,
            outsider_flood,
            crash,
            unreachable,
        })
    }

    /// Ordered pairs of signers cut off from each other at some time of the run: by a
    /// partition, or by a crash with a down time longer than the default.
    fn unreachable(&self, crash: Option<&CrashRecord>) -> BTreeSet<(SignerIndex, SignerIndex)> {
        let all: Vec<SignerIndex> = (0..self.signers)
            .filter_map(|i| SignerIndex::try_from(i).ok())
            .collect();
        let mut pairs = BTreeSet::new();
        for window in &self.partitions {
            let group_of = |s: SignerIndex| {
                window
                    .groups
                    .iter()
                    .position(|g| g.iter().any(|&i| usize::from(i) == s.as_usize()))
            };
            for &a in &all {
                for &b in &all {
                    if a != b && group_of(a) != group_of(b) {
                        pairs.insert((a, b));
                    }
                }
            }
        }
        if let Some(c) = crash.filter(|c| c.crashed && self.restart_after > DEFAULT_DOWN) {
            for &b in all.iter().filter(|&&b| b != c.signer) {
                pairs.insert((c.signer, b));
                pairs.insert((b, c.signer));
            }
        }
        pairs
    }

    /// Rejects parameters that make no sense together.
    fn check(&self) -> Result<()> {
        let n = self.signers;
        let invalid = |why: String| Err(TestkitError::InvalidScenario(why));
        if n < 2 {
            return invalid("at least two signers".into());
        }
        let first = usize::from(self.creator.is_none());
        match self.adversary {
            Some((i, _)) if i.as_usize() < first || i.as_usize() >= n => {
                return invalid(format!("adversary index {i} must be in {first}..{n}"));
            }
            None if self.creator.is_some() => {
                return invalid("an adversarial creator needs an adversary".into());
            }
            _ => {}
        }
        if let Some((victim, _)) = self.crash {
            if victim.as_usize() >= n || self.adversary.is_some_and(|(a, _)| a == victim) {
                return invalid(format!("crashed signer {victim} must be an honest signer"));
            }
        }
        if self.libp2p
            && (self.link_fault.is_some()
                || self.crash.is_some()
                || !self.links.is_empty()
                || !self.partitions.is_empty())
        {
            return invalid("link faults, crashes and partitions need the memory network".into());
        }
        let mut windows: Vec<&PartitionWindow> = self.partitions.iter().collect();
        windows.sort_by_key(|w| w.from);
        for pair in windows.windows(2) {
            if pair[0].until.is_none_or(|end| end > pair[1].from) {
                return invalid("partition windows overlap".into());
            }
        }
        for w in &self.partitions {
            if w.until.is_some_and(|end| end <= w.from)
                || w.groups.iter().flatten().any(|&i| usize::from(i) >= n)
            {
                return invalid(format!("bad partition window {w:?}"));
            }
        }
        Ok(())
    }

    /// The network: `nodes` memory transports, or libp2p nodes on loopback.
    async fn network(&self, nodes: usize) -> Result<Net> {
        if self.libp2p {
            let config = Libp2pConfig {
                record_validator: Some(announcement_record_validator(self.config.limits)),
                ..Libp2pConfig::default()
            };
            let transports = Libp2pTransport::spawn_local_network(nodes, config)
                .await
                .map_err(|e| TestkitError::InvalidScenario(format!("libp2p network: {e}")))?;
            return Ok(Net::Libp2p(
                transports.into_iter().map(Arc::new).collect(),
                0,
            ));
        }
        let lossy = self.link_fault.is_some();
        Ok(Net::Memory(MemoryNetwork::with_config(MemoryConfig {
            seed: self.seed,
            send_timeout: if lossy {
                FAULTY_SEND_TIMEOUT
            } else {
                MemoryConfig::default().send_timeout
            },
            ..MemoryConfig::default()
        })))
    }

    /// Waits until `victim`'s store shows `point`, then kills its node (transport down, node
    /// dropped without shutdown; frames in flight are lost) and starts a new one on the same
    /// store, peer id and key.
    async fn crash_and_restart(
        &self,
        network: &MemoryNetwork,
        honest: &mut [HonestNode],
        session: SessionId,
        victim: SignerIndex,
        point: CrashPoint,
    ) -> Result<CrashRecord> {
        let mut record = CrashRecord {
            signer: victim,
            point,
            crashed: false,
            stored_at_crash: Vec::new(),
            finished_at_crash: false,
        };
        let Some(h) = honest.iter_mut().find(|h| h.index == victim) else {
            return Ok(record);
        };
        let give_up = tokio::time::Instant::now() + self.config.session_timeout;
        let stored = loop {
            let stored = h.store.load(&session)?;
            if let Some(stored) = stored.filter(|s| point.reached(victim, s)) {
                break stored;
            }
            if tokio::time::Instant::now() >= give_up {
                return Ok(record);
            }
            tokio::time::sleep(CRASH_POLL).await;
        };
        record.crashed = true;
        record.finished_at_crash = stored.outcome.is_some();
        for e in &stored.envelopes {
            let env = e.envelope();
            if env.signer() == victim && !record.stored_at_crash.contains(&env.body().kind()) {
                record.stored_at_crash.push(env.body().kind());
            }
        }
        let peer = h.node.peer_id();
        network
            .crash(peer)
            .map_err(|e| TestkitError::InvalidScenario(format!("crash: {e}")))?;
        // Let the old node see its transport close and stop, and stay down as long as asked.
        tokio::time::sleep(self.restart_after).await;
        let transport = network
            .restart(peer)
            .map_err(|e| TestkitError::InvalidScenario(format!("restart: {e}")))?;
        let keypair = keypairs_from_seed(self.seed, self.signers)[victim.as_usize()];
        h.node = Node::spawn_with_store(
            Arc::new(transport),
            keypair,
            self.config.clone(),
            h.store.clone(),
        )?;
        h.events = h.node.events();
        Ok(record)
    }
}

impl Scenario {
    /// The announcement an adversarial creator at index `creator` signs: the honest request's
    /// signers, message and policy, with the peer ids `tamper` says.
    fn adversary_announcement(
        &self,
        request: &SessionRequest,
        peers: &[Option<PeerId>],
        creator: SignerIndex,
        tamper: CreatorAnnouncement,
        keypair: &Keypair,
    ) -> Result<SignedAnnouncement> {
        let mut peers = peers.to_vec();
        if let CreatorAnnouncement::PeerIdOf { victim } = tamper {
            let ours = peers.get(creator.as_usize()).copied().flatten();
            if let Some(slot) = peers.get_mut(victim.as_usize()) {
                *slot = ours;
            }
        }
        let signers = request
            .signers
            .iter()
            .zip(&peers)
            .map(|(key, peer)| SignerInfo {
                key: *key,
                peer_id: peer.and_then(|p| PeerIdBytes::new(p.to_bytes()).ok()),
            })
            .collect();
        let now = WallClock::new().now_ms();
        let session_ms = u64::try_from(self.config.session_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut salt = [0u8; 32];
        ChaCha20Rng::seed_from_u64(self.seed ^ 0x5a17).fill_bytes(&mut salt);
        let announcement = Announcement {
            signers,
            messages: request.messages.clone(),
            document_digest: request.document_digest,
            creator,
            policy: request.policy,
            salt,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(session_ms),
        };
        Ok(announcement.sign(keypair, &self.config.limits)?)
    }
}

/// The most distinct values signer `i` showed in one attempt.
fn most_per_attempt<T>(seen: &BTreeMap<(usize, u16), BTreeSet<T>>, i: usize) -> usize {
    seen.iter()
        .filter(|((j, _), _)| *j == i)
        .map(|(_, s)| s.len())
        .max()
        .unwrap_or(0)
}

/// The outcome `node` holds or reaches for `session` (a node restarted after its session ended
/// emits no event for it, but answers).
async fn outcome_of(node: &Node, session: SessionId, deadline: Duration) -> Outcome {
    match tokio::time::timeout(deadline, node.wait_for_signatures(session)).await {
        Ok(Ok(signatures)) => Outcome::Signed(signatures),
        Ok(Err(CoordinatorError::Aborted {
            reason,
            blamed,
            origin,
            ..
        })) => Outcome::Aborted {
            reason,
            blamed,
            origin,
        },
        Ok(Err(_)) | Err(_) => Outcome::Stalled,
    }
}

/// Applies the partition windows (sorted by start) on `network`, times from now.
async fn run_partitions(
    network: MemoryNetwork,
    mut windows: Vec<PartitionWindow>,
    peers: Vec<Option<PeerId>>,
) {
    windows.sort_by_key(|w| w.from);
    let start = tokio::time::Instant::now();
    for w in windows {
        tokio::time::sleep_until(start + w.from).await;
        let groups: Vec<Vec<PeerId>> = w
            .groups
            .iter()
            .map(|g| {
                g.iter()
                    .filter_map(|&i| peers.get(usize::from(i)).copied().flatten())
                    .collect()
            })
            .collect();
        tracing::debug!(groups = ?w.groups, "partition");
        network.partition(&groups);
        let Some(until) = w.until else {
            return;
        };
        tokio::time::sleep_until(start + until).await;
        tracing::debug!("heal");
        network.heal();
    }
}

/// The failover `event` reports for `session`, if it is one.
fn failover_seen(event: &Event, session: SessionId, start: Instant) -> Option<FailoverSeen> {
    match event {
        Event::CoordinatorFailover {
            session: s,
            attempt,
            replaced,
            coordinator,
        } if *s == session => Some(FailoverSeen {
            attempt: attempt.get(),
            replaced: *replaced,
            coordinator: *coordinator,
            at: start.elapsed(),
        }),
        _ => None,
    }
}

/// Waits for the outcome of `session`, collecting the failovers reported on the way.
async fn wait_for_outcome(
    events: &mut broadcast::Receiver<Event>,
    session: SessionId,
    deadline: Duration,
) -> Outcome {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(Event::SignatureReady {
                    session: s,
                    signatures,
                }) if s == session => return Outcome::Signed(signatures),
                Ok(Event::Aborted {
                    session: s,
                    reason,
                    blamed,
                    origin,
                }) if s == session => {
                    return Outcome::Aborted {
                        reason,
                        blamed,
                        origin,
                    };
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Outcome::Stalled,
            }
        }
    };
    tokio::time::timeout(deadline, wait)
        .await
        .unwrap_or(Outcome::Stalled)
}

/// The failovers a node reports, as they come (see [`FailoverSeen`]).
type FailoverLog = Arc<std::sync::Mutex<Vec<FailoverSeen>>>;

/// Records every failover `node` reports for `session` in `log`, with its time since `start`,
/// until the node stops (or the task is aborted).
fn watch_failovers(
    node: &Node,
    session: SessionId,
    start: Instant,
    log: FailoverLog,
) -> tokio::task::JoinHandle<()> {
    let mut events = node.events();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(seen) = failover_seen(&e, session, start) {
                        if let Ok(mut log) = log.lock() {
                            log.push(seen);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// A star failover an honest node followed or made ([`Event::CoordinatorFailover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverSeen {
    /// The attempt it started.
    pub attempt: u16,
    /// The aggregator replaced.
    pub replaced: SignerIndex,
    /// The new aggregator.
    pub coordinator: SignerIndex,
    /// When the node reported it, from the session's creation (paused clock: exact).
    pub at: Duration,
}

/// A way a run broke the property of [`Report::randomized_violations`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// An honest node's finding (or an honest peer's signed abort it took) blames an honest
    /// signer.
    HonestBlamed {
        /// The node whose outcome it is.
        by: SignerIndex,
        /// The honest signer it blames.
        blamed: SignerIndex,
        /// The abort reason.
        reason: AbortReason,
        /// Whose decision it was.
        origin: AbortOrigin,
    },
    /// A node's signature does not verify under the aggregate key.
    InvalidSignature {
        /// The node.
        signer: SignerIndex,
    },
    /// Two honest nodes hold different signatures.
    SignaturesDiffer {
        /// One node.
        signer: SignerIndex,
        /// The first node that signed.
        other: SignerIndex,
    },
    /// An honest signer showed the adversary two nonces or two partial signatures.
    NonceReuse {
        /// The signer.
        signer: SignerIndex,
        /// Distinct nonces seen.
        nonces: usize,
        /// Distinct partial signatures seen.
        partial_sigs: usize,
    },
    /// The honest nodes' stores hold two nonces or two partial signatures of one honest signer
    /// in one attempt, or one nonce of it in two attempts.
    StoredNonceReuse {
        /// The signer.
        signer: SignerIndex,
        /// The attempt.
        attempt: u16,
        /// What was found.
        what: &'static str,
    },
    /// A node that joined neither signed nor aborted by a minute past the session deadline.
    Stalled {
        /// The node.
        signer: SignerIndex,
        /// Its phase at the end, if it still knew the session.
        phase: Option<String>,
    },
}

impl Violation {
    /// The failure class, without the signer indices (for grouping many runs' failures).
    pub fn class(&self) -> String {
        match self {
            Violation::HonestBlamed { reason, origin, .. } => {
                let origin = match origin {
                    AbortOrigin::Local => "own finding",
                    AbortOrigin::Remote(_) => "honest peer's abort",
                };
                format!("honest signer blamed: {reason:?} ({origin})")
            }
            Violation::InvalidSignature { .. } => "invalid signature".into(),
            Violation::SignaturesDiffer { .. } => "signatures differ".into(),
            Violation::NonceReuse { .. } => "nonce reuse".into(),
            Violation::StoredNonceReuse { .. } => "nonce reuse (stores)".into(),
            Violation::Stalled { phase, .. } => format!("stalled in {phase:?}"),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::HonestBlamed {
                by,
                blamed,
                reason,
                origin,
            } => write!(
                f,
                "signer {by} blames honest signer {blamed} ({reason:?}, origin {origin:?})"
            ),
            Violation::InvalidSignature { signer } => {
                write!(f, "signer {signer}: signature does not verify")
            }
            Violation::SignaturesDiffer { signer, other } => {
                write!(f, "signers {signer} and {other} hold different signatures")
            }
            Violation::NonceReuse {
                signer,
                nonces,
                partial_sigs,
            } => write!(
                f,
                "signer {signer} showed {nonces} nonces and {partial_sigs} partial signatures"
            ),
            Violation::StoredNonceReuse {
                signer,
                attempt,
                what,
            } => write!(f, "signer {signer}, attempt {attempt}: {what} (stores)"),
            Violation::Stalled { signer, phase } => {
                write!(f, "signer {signer} stalled (phase {phase:?})")
            }
        }
    }
}

/// One honest node's result.
#[derive(Debug, Clone)]
pub struct HonestOutcome {
    /// Its signer index.
    pub signer: SignerIndex,
    /// How its session ended.
    pub outcome: Outcome,
    /// The star failovers it followed or made, in order (for a restarted node, only those
    /// after its restart).
    pub failovers: Vec<FailoverSeen>,
    /// Its view of the session afterwards (phase, holdouts, rejected messages).
    pub health: Option<SessionHealth>,
    /// Why it could not join the session, if it could not (e.g. it refused the announcement).
    pub join_error: Option<String>,
    /// Every session it knows at the end (a verified announcement it took in).
    pub known_sessions: Vec<SessionId>,
    /// The adversary's forged sessions (see [`Behaviour::ForgeAnnouncement`]) that it joined
    /// when asked to by id after the run.
    pub forged_joined: Vec<SessionId>,
    /// What its store held of the session at the end.
    pub stored: Option<StoredSession>,
}

/// What a [`Scenario`] produced, with the assertions every scenario makes.
#[derive(Debug, Clone)]
pub struct Report {
    /// The session.
    pub session: SessionId,
    /// The message that was to be signed.
    pub message: Vec<u8>,
    /// The aggregate key the signature must verify under.
    pub aggregate_key: XOnlyPublicKey,
    /// The adversary's signer index, if there was one.
    pub adversary: Option<SignerIndex>,
    /// Every honest node's outcome, in signer order.
    pub honest: Vec<HonestOutcome>,
    /// What the adversary did and saw.
    pub adversary_log: Option<AdversaryLog>,
    /// What the outsider's flood achieved, if there was one.
    pub outsider_flood: Option<FloodStats>,
    /// The crash and restart of an honest signer, if the scenario had one
    /// ([`Scenario::crash_restart`]).
    pub crash: Option<CrashRecord>,
    /// Ordered pairs `(a, b)` of signers cut off from each other at some time of the run (by a
    /// [`Scenario::partition`], or a crash longer than the default down time): a timeout by
    /// `a` naming `b` is what it saw, not a false accusation.
    pub unreachable: BTreeSet<(SignerIndex, SignerIndex)>,
}

impl Report {
    fn is_honest(&self, index: SignerIndex) -> bool {
        self.honest.iter().any(|h| h.signer == index)
    }

    /// The safety invariant that holds in every scenario: no honest node's own finding, nor an
    /// honest peer's signed abort, blames an honest signer; every signature verifies under the
    /// aggregate key (BIP340, libsecp256k1) and all signatures agree; no honest signer showed
    /// the adversary two different nonces or two different partial signatures; no honest node
    /// took in or joined a session from a forged announcement.
    ///
    /// Blame in an Abort sent by the adversary is its claim, not a finding, and is not checked
    /// here (see [`Report::assert_aborted_by_adversary`]).
    pub fn assert_safe(&self) {
        let mut first_sig = None;
        for h in &self.honest {
            match &h.outcome {
                Outcome::Signed(sigs) => {
                    let sig = &sigs[..]
                        .first()
                        .copied()
                        .unwrap_or_else(|| panic!("signer {}: no signature", h.signer));
                    assert_eq!(sigs.len(), 1, "signer {}: one message", h.signer);
                    schnorr::verify(sig, &self.message, &self.aggregate_key).unwrap_or_else(|e| {
                        panic!("signer {}: signature does not verify: {e}", h.signer)
                    });
                    assert_eq!(
                        *first_sig.get_or_insert(*sig),
                        *sig,
                        "signer {}: signatures differ",
                        h.signer
                    );
                }
                Outcome::Aborted {
                    reason,
                    blamed,
                    origin,
                } => {
                    let decider = match origin {
                        AbortOrigin::Local => Some(h.signer),
                        AbortOrigin::Remote(from) => Some(*from).filter(|f| self.is_honest(*f)),
                    };
                    if let Some(decider) = decider {
                        for b in blamed {
                            assert!(
                                self.blame_allowed(decider, *reason, *b),
                                "signer {} blames honest signer {b}: {:?}",
                                h.signer,
                                h.outcome
                            );
                        }
                    }
                }
                Outcome::Stalled => {}
            }
        }
        self.assert_no_nonce_reuse();
        self.assert_no_forged_session();
    }

    /// The property every [`Behaviour::Randomized`] run must keep, as a list of what broke it
    /// (empty: the run was safe):
    ///
    /// 1. no honest node's own finding ([`AbortOrigin::Local`]), nor an honest peer's signed
    ///    abort, blames an honest signer (blaming the adversary is fine, and so is an abort
    ///    whose origin is the adversary: its blame is a claim);
    /// 2. the honest nodes that finished with a signature hold the same one, and it verifies
    ///    under the aggregate key;
    /// 3. no honest signer showed the adversary two nonces or two partial signatures;
    /// 4. no honest node that joined is still running (neither signed nor aborted) a minute
    ///    after the session deadline: a hang is a bug.
    pub fn randomized_violations(&self) -> Vec<Violation> {
        let mut found = Vec::new();
        let mut first_sig: Option<(SignerIndex, schnorr::Signature)> = None;
        for h in &self.honest {
            match &h.outcome {
                Outcome::Signed(sigs) => {
                    let Some(sig) = sigs.first().filter(|_| sigs.len() == 1) else {
                        found.push(Violation::InvalidSignature { signer: h.signer });
                        continue;
                    };
                    if schnorr::verify(sig, &self.message, &self.aggregate_key).is_err() {
                        found.push(Violation::InvalidSignature { signer: h.signer });
                    }
                    match first_sig {
                        Some((other, s)) if s != *sig => found.push(Violation::SignaturesDiffer {
                            signer: h.signer,
                            other,
                        }),
                        Some(_) => {}
                        None => first_sig = Some((h.signer, *sig)),
                    }
                }
                Outcome::Aborted {
                    reason,
                    blamed,
                    origin,
                } => {
                    let decider = match origin {
                        AbortOrigin::Local => Some(h.signer),
                        AbortOrigin::Remote(from) => Some(*from).filter(|f| self.is_honest(*f)),
                    };
                    if let Some(decider) = decider {
                        for b in blamed
                            .iter()
                            .filter(|b| !self.blame_allowed(decider, *reason, **b))
                        {
                            found.push(Violation::HonestBlamed {
                                by: h.signer,
                                blamed: *b,
                                reason: *reason,
                                origin: *origin,
                            });
                        }
                    }
                }
                Outcome::Stalled if h.join_error.is_none() => {
                    found.push(Violation::Stalled {
                        signer: h.signer,
                        phase: h.health.as_ref().map(|x| format!("{:?}", x.phase)),
                    });
                }
                Outcome::Stalled => {}
            }
        }
        found.extend(self.nonce_reuse());
        found
    }

    /// Whether honest node `decider` may blame `blamed` for `reason`: it is not honest; or it
    /// is the signer that crashed and restarted, named with reason `Restarted` (what happened
    /// to it, not an accusation; ADR 0007); or it was cut off from `decider`
    /// ([`Report::unreachable`]) and is named for a timeout (`Timeout`, `FailoverExhausted`).
    fn blame_allowed(
        &self,
        decider: SignerIndex,
        reason: AbortReason,
        blamed: SignerIndex,
    ) -> bool {
        !self.is_honest(blamed)
            || (reason == AbortReason::Restarted
                && self
                    .crash
                    .as_ref()
                    .is_some_and(|c| c.crashed && c.signer == blamed))
            || (matches!(
                reason,
                AbortReason::Timeout | AbortReason::FailoverExhausted
            ) && self.unreachable.contains(&(decider, blamed)))
    }

    /// Every honest nonce used twice, by two checks: the adversary's log (it never saw two
    /// nonces or two partial signatures of one honest signer in one attempt, nor one nonce in
    /// two attempts) and the honest nodes' stores (no honest signer's envelopes, as the honest
    /// nodes verified and kept them, hold two nonces or two partial signatures for one
    /// attempt, or one nonce in two attempts).
    fn nonce_reuse(&self) -> Vec<Violation> {
        let mut found = Vec::new();
        if let Some(log) = &self.adversary_log {
            for h in &self.honest {
                let i = h.signer.as_usize();
                let nonces = most_per_attempt(&log.nonces_by_attempt, i);
                let partial_sigs = most_per_attempt(&log.partial_sigs_by_attempt, i);
                let attempts_total: usize = log
                    .nonces_by_attempt
                    .iter()
                    .filter(|((j, _), _)| *j == i)
                    .map(|(_, s)| s.len())
                    .sum();
                let distinct = log.nonces_seen.get(&i).map_or(0, |s| s.len());
                if nonces > 1 || partial_sigs > 1 || attempts_total > distinct {
                    found.push(Violation::NonceReuse {
                        signer: h.signer,
                        nonces,
                        partial_sigs,
                    });
                }
            }
        }
        let stores: Vec<&StoredSession> = self
            .honest
            .iter()
            .filter_map(|h| h.stored.as_ref())
            .collect();
        let honest: Vec<SignerIndex> = self.honest.iter().map(|h| h.signer).collect();
        for (signer, attempt, what) in stored_nonce_reuse(&stores, &honest) {
            found.push(Violation::StoredNonceReuse {
                signer,
                attempt,
                what,
            });
        }
        found
    }

    /// Panics with every [`Report::randomized_violations`] and each honest node's outcome.
    pub fn assert_randomized_safety(&self) {
        let found = self.randomized_violations();
        assert!(found.is_empty(), "{}", self.describe_violations(&found));
    }

    /// A readable account of `violations` with every honest outcome and the adversary's
    /// mutations (for assertion messages).
    pub fn describe_violations(&self, violations: &[Violation]) -> String {
        let mut text = String::new();
        for v in violations {
            text.push_str(&format!("  violation: {v}\n"));
        }
        for h in &self.honest {
            text.push_str(&format!(
                "  signer {}: {:?}{}\n",
                h.signer,
                h.outcome,
                h.join_error
                    .as_ref()
                    .map(|e| format!(" (join refused: {e})"))
                    .unwrap_or_default()
            ));
        }
        if let Some(log) = &self.adversary_log {
            for m in &log.mutations {
                text.push_str(&format!("  adversary: {m}\n"));
            }
        }
        text
    }

    /// No honest node knows or joined a session the adversary announced with a forged
    /// announcement.
    pub fn assert_no_forged_session(&self) {
        let Some(log) = &self.adversary_log else {
            return;
        };
        for h in &self.honest {
            assert!(
                h.forged_joined.is_empty(),
                "signer {} joined forged sessions {:?}",
                h.signer,
                h.forged_joined
            );
            for id in &log.forged_sessions {
                assert!(
                    !h.known_sessions.contains(id),
                    "signer {} took in forged session {id}",
                    h.signer
                );
            }
        }
    }

    /// No honest signer sent the adversary two different public nonces or two different partial
    /// signatures in one attempt of this session, or one nonce in two attempts (a nonce used for
    /// two challenges would leak its secret key); and the honest nodes' stores show the same of
    /// every honest signer.
    pub fn assert_no_nonce_reuse(&self) {
        let found = self.nonce_reuse();
        assert!(found.is_empty(), "{}", self.describe_violations(&found));
    }

    /// Every honest node finished with the same valid signature; returns it.
    pub fn assert_all_signed(&self) -> schnorr::Signature {
        self.assert_safe();
        let sigs: Vec<schnorr::Signature> = self
            .honest
            .iter()
            .map(|h| match &h.outcome {
                Outcome::Signed(sigs) if sigs.len() == 1 => sigs[0],
                other => panic!("signer {} did not sign: {other:?}", h.signer),
            })
            .collect();
        sigs[0]
    }

    /// Every honest node aborted for one of `reasons`, blaming exactly the adversary, on its own
    /// finding or on an honest peer's signed abort. Returns each node's reason.
    pub fn assert_aborted_blaming_adversary(&self, reasons: &[AbortReason]) -> Vec<AbortReason> {
        self.assert_safe();
        let culprit = self.adversary.expect("the scenario has an adversary");
        self.honest
            .iter()
            .map(|h| match &h.outcome {
                Outcome::Aborted {
                    reason,
                    blamed,
                    origin,
                } => {
                    assert_ne!(
                        *origin,
                        AbortOrigin::Remote(culprit),
                        "signer {}: ended by the adversary's own abort",
                        h.signer
                    );
                    assert_eq!(blamed, &vec![culprit], "signer {}: wrong blame", h.signer);
                    assert!(
                        reasons.contains(reason),
                        "signer {}: reason {reason:?} not in {reasons:?}",
                        h.signer
                    );
                    *reason
                }
                other => panic!("signer {} did not abort: {other:?}", h.signer),
            })
            .collect()
    }

    /// The safety invariant ([`Report::assert_safe`]), and every honest node either signed or
    /// aborted blaming exactly the adversary (on its own finding or an honest peer's abort, for
    /// any reason): the outcome of an attack the protocol may survive or not, depending on
    /// timing or on a later recovery (such as star failover).
    pub fn assert_signed_or_blamed_adversary(&self) {
        self.assert_safe();
        let culprit = self.adversary.expect("the scenario has an adversary");
        for h in &self.honest {
            match &h.outcome {
                Outcome::Signed(_) => {}
                Outcome::Aborted { blamed, origin, .. } => {
                    assert_ne!(
                        *origin,
                        AbortOrigin::Remote(culprit),
                        "signer {}: ended by the adversary's own abort",
                        h.signer
                    );
                    assert_eq!(blamed, &vec![culprit], "signer {}: wrong blame", h.signer);
                }
                Outcome::Stalled => panic!("signer {} stalled", h.signer),
            }
        }
    }

    /// Every honest node aborted because of a signed Abort from the adversary (whose blame is
    /// the adversary's claim), and none blamed an honest signer on its own account.
    pub fn assert_aborted_by_adversary(&self) {
        self.assert_safe();
        let culprit = self.adversary.expect("the scenario has an adversary");
        for h in &self.honest {
            match &h.outcome {
                Outcome::Aborted { origin, .. } => assert_eq!(
                    *origin,
                    AbortOrigin::Remote(culprit),
                    "signer {}: not ended by the adversary's abort",
                    h.signer
                ),
                other => panic!("signer {} did not abort: {other:?}", h.signer),
            }
        }
    }

    /// Messages each honest node rejected as invalid (bad signature, wrong peer, ...).
    pub fn rejected_messages(&self) -> Vec<u64> {
        self.honest
            .iter()
            .map(|h| h.health.as_ref().map_or(0, |s| s.rejected_messages))
            .collect()
    }
}
