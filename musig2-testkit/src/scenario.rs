//! Clusters of honest nodes (and at most one adversary) on a seeded memory network, one signing
//! session across them, and the outcome of every honest node.

use std::sync::Arc;
use std::time::Duration;

use musig2_coordinator::{AbortOrigin, Config, Event, Node, SessionHealth, SessionRequest};
use musig2_proto::{AbortReason, ElectionMethod, Policy, SessionId, SignerIndex, Topology};
use musig2_transport::{LinkFault, MemoryConfig, MemoryNetwork, Transport};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use secp256k1::{Keypair, XOnlyPublicKey, schnorr};
use tokio::sync::broadcast;

use crate::adversary::{Adversary, AdversaryLog, Behaviour, FloodStats, flood_junk};
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
        ..Config::default()
    }
}

/// How long a send on a faulty network waits before a dropped frame counts as lost (see
/// [`Scenario::link_fault`]).
pub const FAULTY_SEND_TIMEOUT: Duration = Duration::from_millis(250);

/// How one honest node's session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It holds a final signature (which the node verified under the aggregate key).
    Signed(schnorr::Signature),
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

    /// Puts an adversary with `behaviour` in signer slot `index` (not 0: the creator).
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

    /// Adds a peer outside the session that sends `frames` junk frames to every honest node
    /// while the session runs.
    pub fn outsider_flood(mut self, frames: usize) -> Scenario {
        self.outsider_flood = Some(frames);
        self
    }

    /// Builds the network, runs the session to its end on every honest node, stops the
    /// adversary and reports. Needs a tokio runtime; use a paused clock for speed and
    /// determinism.
    pub async fn run(self) -> Result<Report> {
        let n = self.signers;
        if n < 2 {
            return Err(TestkitError::InvalidScenario("at least two signers".into()));
        }
        if let Some((i, _)) = self.adversary {
            if i.as_usize() == 0 || i.as_usize() >= n {
                return Err(TestkitError::InvalidScenario(format!(
                    "adversary index {i} must be in 1..{n}"
                )));
            }
        }
        let network = MemoryNetwork::with_config(MemoryConfig {
            seed: self.seed,
            send_timeout: if self.link_fault.is_some() {
                FAULTY_SEND_TIMEOUT
            } else {
                MemoryConfig::default().send_timeout
            },
            ..MemoryConfig::default()
        });
        let keypairs = keypairs_from_seed(self.seed, n);
        let mut honest: Vec<(SignerIndex, Node, broadcast::Receiver<Event>)> = Vec::new();
        let mut adversary = None;
        let mut peers = Vec::with_capacity(n);
        for (i, kp) in keypairs.iter().enumerate() {
            let index = SignerIndex::try_from(i)?;
            let transport = network.add_node();
            peers.push(Some(transport.local_peer_id()));
            match self.adversary {
                Some((a, behaviour)) if a == index => {
                    let seed = self.seed ^ 0xad5e_55a1;
                    adversary = Some(Adversary::spawn(
                        transport,
                        *kp,
                        behaviour,
                        self.config.limits,
                        seed,
                    ));
                }
                _ => {
                    let node = Node::spawn(Arc::new(transport), *kp, self.config.clone());
                    let events = node.events();
                    honest.push((index, node, events));
                }
            }
        }
        let outsider = self.outsider_flood.map(|frames| {
            let transport = network.add_node();
            let targets: Vec<_> = honest.iter().map(|(_, node, _)| node.peer_id()).collect();
            let seed = self.seed ^ 0x0f10_0d00;
            tokio::spawn(async move { flood_junk(&transport, &targets, frames, seed).await })
        });
        let request = SessionRequest {
            signers: keypairs.iter().map(Keypair::public_key).collect(),
            peers,
            message: self.message.clone(),
            tweaks: Vec::new(),
            policy: Policy {
                topology: self.topology,
                nonce_commitment: self.commitments,
                election: self.election,
                ..honest[0].1.default_policy()
            },
        };
        if let Some(fault) = self.link_fault {
            network.set_default_fault(fault);
        }
        let session = honest[0].1.create_session(request).await?;
        for (_, node, _) in &honest[1..] {
            // A session an adversary already ended cannot be joined; the outcome says why.
            if let Err(e) = node.join_session(session).await {
                tracing::debug!(error = %e, "join failed");
            }
        }
        let deadline = self.config.session_timeout + Duration::from_secs(60);
        let mut outcomes = Vec::with_capacity(honest.len());
        for (index, node, events) in &mut honest {
            let outcome = wait_for_outcome(events, session, deadline).await;
            let health = node.health(session).await.ok();
            outcomes.push(HonestOutcome {
                signer: *index,
                outcome,
                health,
                known_sessions: Vec::new(),
                forged_joined: Vec::new(),
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
        for ((_, node, _), out) in honest.iter().zip(&mut outcomes) {
            out.known_sessions = node
                .sessions()
                .await
                .map(|all| all.iter().map(|h| h.session).collect())
                .unwrap_or_default();
            // Asked to join a forged session by id, the node must refuse (its announcement is
            // nowhere to be found in a form that verifies).
            for id in &forged {
                if node.join_session(*id).await.is_ok() {
                    out.forged_joined.push(*id);
                }
            }
        }
        let outsider_flood = match outsider {
            Some(task) => task.await.ok(),
            None => None,
        };
        for (_, node, _) in &honest {
            let _ = node.shutdown().await;
        }
        let aggregate_key = musig2_core::KeyAggContext::new(
            &keypairs.iter().map(Keypair::public_key).collect::<Vec<_>>(),
        )?
        .x_only_key();
        Ok(Report {
            session,
            message: self.message,
            aggregate_key,
            adversary: self.adversary.map(|(i, _)| i),
            honest: outcomes,
            adversary_log,
            outsider_flood,
        })
    }
}

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
                    signature,
                }) if s == session => return Outcome::Signed(signature),
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

/// One honest node's result.
#[derive(Debug, Clone)]
pub struct HonestOutcome {
    /// Its signer index.
    pub signer: SignerIndex,
    /// How its session ended.
    pub outcome: Outcome,
    /// Its view of the session afterwards (phase, holdouts, rejected messages).
    pub health: Option<SessionHealth>,
    /// Every session it knows at the end (a verified announcement it took in).
    pub known_sessions: Vec<SessionId>,
    /// The adversary's forged sessions (see [`Behaviour::ForgeAnnouncement`]) that it joined
    /// when asked to by id after the run.
    pub forged_joined: Vec<SessionId>,
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
                Outcome::Signed(sig) => {
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
                Outcome::Aborted { blamed, origin, .. } => {
                    let trusted = match origin {
                        AbortOrigin::Local => true,
                        AbortOrigin::Remote(from) => self.is_honest(*from),
                    };
                    if trusted {
                        for b in blamed {
                            assert!(
                                !self.is_honest(*b),
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
    /// signatures in this session (a nonce used for two challenges would leak its secret key).
    pub fn assert_no_nonce_reuse(&self) {
        let Some(log) = &self.adversary_log else {
            return;
        };
        for h in &self.honest {
            let i = h.signer.as_usize();
            let nonces = log.nonces_seen.get(&i).map_or(0, |s| s.len());
            let psigs = log.partial_sigs_seen.get(&i).map_or(0, |s| s.len());
            assert!(nonces <= 1, "signer {i} revealed {nonces} nonces");
            assert!(psigs <= 1, "signer {i} sent {psigs} partial signatures");
        }
    }

    /// Every honest node finished with the same valid signature; returns it.
    pub fn assert_all_signed(&self) -> schnorr::Signature {
        self.assert_safe();
        let sigs: Vec<schnorr::Signature> = self
            .honest
            .iter()
            .map(|h| match &h.outcome {
                Outcome::Signed(sig) => *sig,
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
