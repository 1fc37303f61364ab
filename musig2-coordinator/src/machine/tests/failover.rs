//! Star aggregator failover and the broadcast turn (ADR 0008), driven by hand: dead nodes,
//! partitions, out-of-turn claims, and who is (never) blamed.

use super::*;
use crate::store::SessionStore;

const JOIN_END: u64 = T0 + 60_000;
const NONCE_MS: u64 = 30_000;
const WINDOW: u64 = NONCE_MS / 2;

/// A star network with first-signer election (node 0 aggregates first, then 1, 2, ...) and
/// two failovers allowed, before `edit`.
fn star(n: usize, commit: bool, edit: impl FnOnce(&mut Policy)) -> Net {
    Net::custom(
        n,
        Topology::Star,
        commit,
        ElectionMethod::FirstSigner,
        true,
        |p| {
            p.max_failovers = 2;
            edit(p);
        },
        &Config::default(),
    )
}

/// When a delivery happens: `hold(sent_at, from, to)` is the earliest time it may arrive (a
/// partition that heals delays frames, as the node's send retries do, rather than losing them).
type Hold<'a> = &'a dyn Fn(u64, usize, usize) -> u64;

impl Net {
    /// Runs the network until every node that is not `frozen` forever has finished. A node is
    /// frozen (a stopped process: it neither ticks nor handles frames, which wait for it) until
    /// `frozen_until[i]`; frames wait for `hold`. Records every envelope sent in `ledger`.
    fn drive(&mut self, frozen_until: &[u64], hold: Hold<'_>, ledger: &mut NonceLedger) {
        let n = self.machines.len();
        let mut waiting: Vec<(u64, usize, usize, SignedEnvelope)> = Vec::new();
        for _ in 0..2_000 {
            while let Some((from, to, envs)) = self.queue.pop_front() {
                let to = self.index_of(&to);
                for e in envs {
                    ledger.see(&e);
                    let at = hold(self.now, from, to).max(frozen_until[to]);
                    waiting.push((at, from, to, e));
                }
            }
            let (due, later): (Vec<_>, Vec<_>) =
                waiting.into_iter().partition(|(at, ..)| *at <= self.now);
            waiting = later;
            for (_, from, to, e) in due {
                self.deliver(from, to, e);
            }
            if !self.queue.is_empty() {
                continue;
            }
            // Deadlines at this instant, after everything that arrived by it.
            for (i, &until) in frozen_until.iter().enumerate() {
                if until <= self.now {
                    let out = self.machines[i].tick(self.now, &mut self.rng);
                    self.absorb(i, out);
                }
            }
            if !self.queue.is_empty() {
                continue;
            }
            let finished = (0..n)
                .filter(|&i| frozen_until[i] != u64::MAX)
                .all(|i| self.machines[i].phase().is_terminal());
            if finished {
                return;
            }
            let next = (0..n)
                .filter(|&i| frozen_until[i] != u64::MAX)
                .filter_map(|i| {
                    self.machines[i]
                        .next_deadline()
                        .map(|d| d.max(frozen_until[i]))
                })
                .chain(waiting.iter().map(|(at, ..)| *at))
                .min()
                .expect("something is due");
            self.now = self.now.max(next);
        }
        panic!("the session did not finish");
    }

    fn failovers(&self, i: usize) -> Vec<(u16, SignerIndex, SignerIndex)> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::CoordinatorFailover {
                    attempt,
                    replaced,
                    coordinator,
                    ..
                } => Some((attempt.get(), *replaced, *coordinator)),
                _ => None,
            })
            .collect()
    }

    /// Every live node holds the same valid signature, made in `attempt` under coordinator
    /// `coordinator`, and none aborted.
    fn assert_live_signed(&self, live: &[bool], attempt: u16, coordinator: u16) {
        let key = self.machines[0].key_aggs()[0].x_only_key();
        let mut first = None;
        for (i, m) in self.machines.iter().enumerate().filter(|(i, _)| live[*i]) {
            let sig = m
                .signatures()
                .map(|s| s[0])
                .unwrap_or_else(|| panic!("node {i} did not sign: {:?}", self.abort_of(i)));
            schnorr::verify(&sig, MSG, &key).expect("BIP340 verification");
            assert_eq!(*first.get_or_insert(sig), sig, "node {i}");
            assert_eq!(m.attempt.get(), attempt, "node {i}'s attempt");
            assert_eq!(m.coordinator(), idx(coordinator), "node {i}'s coordinator");
            assert!(self.abort_of(i).is_none(), "node {i} aborted");
        }
    }
}

fn everyone(n: usize) -> Vec<bool> {
    vec![true; n]
}

/// Nodes `stopped` are down until `until` (u64::MAX: for good).
fn frozen(n: usize, stopped: &[usize], until: u64) -> Vec<u64> {
    (0..n)
        .map(|i| if stopped.contains(&i) { until } else { 0 })
        .collect()
}

fn at_once(_: u64, _: usize, _: usize) -> u64 {
    0
}

#[test]
fn an_aggregator_down_from_the_start_is_replaced_and_signs_as_a_member_when_back() {
    for commit in [false, true] {
        let mut net = star(4, commit, |_| {});
        // Node 0 (the first aggregator) is down until just after its deadline.
        let stopped = frozen(4, &[0], JOIN_END + 1_000);
        let mut ledger = NonceLedger::default();
        net.join_all();
        net.drive(&stopped, &at_once, &mut ledger);
        net.assert_live_signed(&everyone(4), 1, 1);
        for i in 0..4 {
            assert_eq!(net.failovers(i), vec![(1, idx(0), idx(1))], "node {i}");
        }
        // The claim went out when the first aggregator's deadline passed, not before: the
        // first round counts from the end of the join window less a nonce timeout.
        let claim = net.stores[1]
            .load(&net.machines[1].session_id())
            .unwrap()
            .unwrap()
            .envelopes
            .into_iter()
            .find(|e| matches!(e.envelope().body(), Body::FailoverClaim { .. }))
            .expect("node 1 stored its claim");
        assert_eq!(claim.envelope().timestamp_ms(), JOIN_END);
        ledger.assert_no_reuse();
    }
}

#[test]
fn an_aggregator_that_crashes_in_any_phase_is_replaced_and_old_contributions_stay_out() {
    // Node 0 crashes after handling `k` deliveries (in the commitment, nonce or partial
    // signature phase), loses what it had in flight and restarts from its store once the
    // others have failed over.
    for commit in [false, true] {
        for k in [1usize, 2, 3, 4, 6, 8] {
            let mut net = star(4, commit, |_| {});
            let mut ledger = NonceLedger::default();
            net.join_all();
            let mut handled = 0;
            while let Some((from, to, envs)) = net.queue.pop_front() {
                let to = net.index_of(&to);
                for e in envs {
                    ledger.see(&e);
                    if to == 0 {
                        handled += 1;
                    }
                    if handled <= k || to != 0 {
                        net.deliver(from, to, e);
                    }
                }
                if handled > k {
                    break;
                }
            }
            if net.machines[1].phase().is_terminal() {
                continue;
            }
            // Down: what it sent is lost, what reaches it is lost.
            net.queue
                .retain(|(from, to, _)| *from != 0 && *to != net.peers[0]);
            let restart_at = JOIN_END + NONCE_MS / 3;
            let stopped = frozen(4, &[0], restart_at);
            let lost = |sent: u64, from: usize, to: usize| {
                if (from == 0 || to == 0) && sent < restart_at {
                    u64::MAX
                } else {
                    0
                }
            };
            net.drive_until(&stopped, &lost, &mut ledger, restart_at);
            net.crash_and_restart(0, true);
            net.drive(&frozen(4, &[], 0), &at_once, &mut ledger);
            for i in 0..4 {
                let m = &net.machines[i];
                let sig = m.signatures().map(|s| s[0]).unwrap_or_else(|| {
                    panic!("commit={commit} k={k} node {i}: {:?}", net.abort_of(i))
                });
                schnorr::verify(&sig, MSG, &m.key_aggs()[0].x_only_key()).unwrap();
                // Every contribution used is of the attempt that signed.
                for (j, slot) in m.psigs.iter().enumerate() {
                    if let Some((_, env)) = slot.as_deref() {
                        assert!(
                            matches!(env.envelope().body(), Body::PartialSig { attempt, .. } if *attempt == m.attempt),
                            "node {i} holds signer {j}'s partial signature of another attempt"
                        );
                    }
                }
            }
            assert!(
                (1..4).all(|i| net.failovers(i).first() == Some(&(1, idx(0), idx(1)))),
                "commit={commit} k={k}: the others failed over to signer 1"
            );
            ledger.assert_no_reuse();
        }
    }
}

impl Net {
    /// [`Net::drive`] until `until` (or the end).
    fn drive_until(
        &mut self,
        frozen_until: &[u64],
        hold: Hold<'_>,
        ledger: &mut NonceLedger,
        until: u64,
    ) {
        let n = self.machines.len();
        for _ in 0..2_000 {
            while let Some((from, to, envs)) = self.queue.pop_front() {
                let to = self.index_of(&to);
                for e in envs {
                    ledger.see(&e);
                    if hold(self.now, from, to) <= self.now && frozen_until[to] <= self.now {
                        self.deliver(from, to, e);
                    }
                }
            }
            let next = (0..n)
                .filter(|&i| frozen_until[i] <= self.now)
                .filter_map(|i| self.machines[i].next_deadline())
                .min();
            match next {
                Some(t) if t < until => {
                    self.now = self.now.max(t);
                    for (i, &thaw) in frozen_until.iter().enumerate() {
                        if thaw <= self.now {
                            let out = self.machines[i].tick(self.now, &mut self.rng);
                            self.absorb(i, out);
                        }
                    }
                }
                _ => {
                    self.now = until;
                    return;
                }
            }
        }
    }
}

#[test]
fn two_aggregators_down_in_a_row_hand_the_role_to_the_third() {
    for commit in [false, true] {
        let mut net = star(5, commit, |_| {});
        // 0 and 1 are down past the second claimant's window.
        let stopped = frozen(5, &[0, 1], JOIN_END + WINDOW + 1_000);
        let mut ledger = NonceLedger::default();
        net.join_all();
        net.drive(&stopped, &at_once, &mut ledger);
        net.assert_live_signed(&everyone(5), 1, 2);
        for i in 2..5 {
            assert_eq!(net.failovers(i), vec![(1, idx(0), idx(2))], "node {i}");
        }
        ledger.assert_no_reuse();
    }
}

#[test]
fn exhausted_failover_aborts_naming_the_aggregators_that_failed_and_nobody_else() {
    for commit in [false, true] {
        // One failover allowed, and the first two aggregators are down for good.
        let mut net = star(4, commit, |p| p.max_failovers = 1);
        let stopped = frozen(4, &[0, 1], u64::MAX);
        let mut ledger = NonceLedger::default();
        net.join_all();
        net.drive(&stopped, &at_once, &mut ledger);
        for i in 2..4 {
            let (reason, blamed, origin) = net.abort_of(i).expect("aborted");
            assert_eq!(reason, AbortReason::FailoverExhausted, "node {i}");
            assert_eq!(origin, AbortOrigin::Local);
            // Before any claim, a member names the aggregator it waited for, as without
            // failover; the silent claimant is not named (it may only be late).
            assert_eq!(blamed, vec![idx(0)], "node {i}");
        }
        ledger.assert_no_reuse();
    }
}

#[test]
fn without_an_attempt_left_there_is_no_failover() {
    let mut net = star(4, false, |p| p.max_attempts = 1);
    let stopped = frozen(4, &[0], u64::MAX);
    let mut ledger = NonceLedger::default();
    net.join_all();
    net.drive(&stopped, &at_once, &mut ledger);
    for i in 1..4 {
        assert!(net.failovers(i).is_empty());
        let (reason, blamed, _) = net.abort_of(i).expect("aborted");
        assert_eq!((reason, blamed), (AbortReason::Timeout, vec![idx(0)]));
    }
}

#[test]
fn a_withholding_member_costs_the_failovers_and_nobody_honest_is_blamed() {
    for commit in [false, true] {
        let mut net = star(4, commit, |_| {});
        let mut ledger = NonceLedger::default();
        net.join_all();
        // Node 3 joined, then says nothing more (its frames never arrive).
        let silent = |_: u64, from: usize, _: usize| if from == 3 { u64::MAX } else { 0 };
        net.drive(&frozen(4, &[3], u64::MAX), &silent, &mut ledger);
        for i in 0..3 {
            let (reason, blamed, origin) = net.abort_of(i).expect("aborted");
            assert!(
                !blamed.iter().any(|b| b.as_usize() < 3),
                "node {i} blamed an honest signer: {reason:?} {blamed:?} {origin:?}"
            );
        }
        // The role went down the order to its bound before the session gave up.
        assert_eq!(net.machines[0].coordinator(), idx(2));
        ledger.assert_no_reuse();
    }
}

#[test]
fn without_failover_a_withholding_member_is_named_by_the_aggregator() {
    let mut net = star(4, true, |p| p.max_failovers = 0);
    let mut ledger = NonceLedger::default();
    net.join_all();
    let silent = |_: u64, from: usize, _: usize| if from == 3 { u64::MAX } else { 0 };
    net.drive(&frozen(4, &[3], u64::MAX), &silent, &mut ledger);
    assert_eq!(
        net.abort_of(0).unwrap(),
        (AbortReason::Timeout, vec![idx(3)], AbortOrigin::Local)
    );
    for i in 1..3 {
        assert_eq!(
            net.abort_of(i).unwrap(),
            (
                AbortReason::Timeout,
                vec![idx(3)],
                AbortOrigin::Remote(idx(0))
            ),
            "node {i} heard the aggregator first"
        );
    }
}

#[test]
fn a_partitioned_aggregator_that_comes_back_after_being_replaced_follows_and_signs() {
    for commit in [false, true] {
        let mut net = star(4, commit, |_| {});
        let mut ledger = NonceLedger::default();
        net.join_all();
        // Node 0 is cut off (frames wait) until after the claim; its late attempt-0 messages
        // are then ignored, not blamed on anyone.
        let heal_at = JOIN_END + NONCE_MS / 3;
        let hold = |_: u64, from: usize, to: usize| if from == 0 || to == 0 { heal_at } else { 0 };
        net.drive(&frozen(4, &[], 0), &hold, &mut ledger);
        net.assert_live_signed(&everyone(4), 1, 1);
        // What node 0 sent in attempt 0 reached the others late and changed nothing.
        assert!(
            net.errors
                .iter()
                .any(|(to, e)| *to != 0 && e.peer_action() == crate::PeerAction::Ignore),
            "{:?}",
            net.errors
        );
        ledger.assert_no_reuse();
    }
}

#[test]
fn members_split_between_two_claimants_settle_on_the_lower_position_once_healed() {
    for commit in [false, true] {
        // Node 0 is down for good... no: it comes back after the partition heals. {1, 3} and
        // {2, 4} cannot hear each other until after the second claimant's window, so 1 and 2
        // both claim attempt 1.
        let mut net = star(5, commit, |_| {});
        let heal_at = JOIN_END + WINDOW + 1_000;
        let stopped = frozen(5, &[0], heal_at);
        let mut ledger = NonceLedger::default();
        net.join_all();
        let side = |i: usize| i % 2;
        let hold = |_: u64, from: usize, to: usize| {
            if side(from) != side(to) { heal_at } else { 0 }
        };
        net.drive(&stopped, &hold, &mut ledger);
        net.assert_live_signed(&everyone(5), 1, 1);
        for i in [2, 4] {
            assert_eq!(
                net.failovers(i).last(),
                Some(&(1, idx(2), idx(1))),
                "node {i} moved from claimant 2 to claimant 1"
            );
        }
        ledger.assert_no_reuse();
    }
}

#[test]
fn a_claim_before_our_own_deadline_waits_for_it() {
    let mut net = star(3, false, |_| {});
    net.join_all();
    // The aggregator's frames are lost: it never sends the aggregate nonce.
    net.run_with(|from, _, e| if from == 0 { vec![] } else { vec![e] });
    let claim_time = JOIN_END;
    net.now = claim_time;
    let out = net.machines[1].tick(net.now, &mut net.rng);
    let claims: Vec<SignedEnvelope> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send { to, envelopes } if *to == net.peers[2] => Some(envelopes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        claims
            .iter()
            .any(|e| matches!(e.envelope().body(), Body::FailoverClaim { rank: 1, .. })),
        "node 1 claims at the aggregator's deadline"
    );
    net.absorb(1, out);
    // Node 2 started its round later (by 5 s): its own deadline for the aggregator is later.
    net.machines[2].aggregator_deadline_ms = Some(claim_time + 5_000);
    net.machines[2].phase_deadline_ms = Some(claim_time + 5_000 + WINDOW);
    for e in claims {
        net.deliver(1, 2, e);
    }
    assert_eq!(
        net.machines[2].attempt.get(),
        0,
        "followed before its own deadline"
    );
    assert_eq!(net.machines[2].next_deadline(), Some(claim_time + 5_000));
    net.now = claim_time + 5_000;
    let out = net.machines[2].tick(net.now, &mut net.rng);
    net.absorb(2, out);
    assert_eq!(net.machines[2].attempt.get(), 1);
    assert_eq!(net.machines[2].coordinator(), idx(1));
    net.queue.clear();
}

/// A claim envelope by `signer` for `rank` and `attempt`, signed at `at`.
fn claim_by(net: &Net, signer: usize, rank: u16, attempt: u16, at: u64) -> SignedEnvelope {
    Envelope::sign(
        net.machines[0].session_id(),
        idx(signer as u16),
        SeqNo::new(60).unwrap(),
        at,
        Body::FailoverClaim {
            attempt: Attempt::new(attempt).unwrap(),
            rank,
        },
        &net.keypairs[signer],
    )
}

#[test]
fn a_claim_out_of_turn_aborts_the_session_naming_its_author() {
    let cases: [(usize, u16, u16, &str); 4] = [
        (2, 1, 1, "position 1 belongs to signer 1"),
        (3, 3, 1, "past max_failovers (2)"),
        (1, 1, 3, "past max_attempts (3)"),
        (0, 0, 1, "position 0 is never claimed"),
    ];
    for (author, rank, attempt, why) in cases {
        let mut net = star(4, false, |_| {});
        net.join_all();
        net.run_with(|_, to, e| if to == 0 { vec![] } else { vec![e] });
        net.now = JOIN_END;
        let claim = claim_by(&net, author, rank, attempt, net.now);
        let victim = if author == 3 { 2 } else { 3 };
        let result =
            net.machines[victim].handle_envelope(net.peers[author], claim, net.now, &mut net.rng);
        let out = result.unwrap_or_else(|e| panic!("{why}: expected the abort to go out: {e}"));
        net.absorb(victim, out);
        assert_eq!(
            net.abort_of(victim),
            Some((
                AbortReason::InvalidClaim,
                vec![idx(author as u16)],
                AbortOrigin::Local
            )),
            "{why}"
        );
    }
}

/// First-signer election, two failovers allowed, no commitments, and clocks trusted to within
/// 1 s (so the bounds on honest claims are tight).
fn tight_clocks(n: usize, topology: Topology) -> Net {
    let config = Config {
        max_clock_skew: std::time::Duration::from_secs(1),
        ..Config::default()
    };
    Net::custom(
        n,
        topology,
        false,
        ElectionMethod::FirstSigner,
        true,
        |p| p.max_failovers = 2,
        &config,
    )
}

/// Star, clocks within 1 s of each other, the aggregator deaf; signer 1 claims at `at` and
/// node 2 hears it.
fn claim_heard_at(at: u64) -> Net {
    let mut net = tight_clocks(4, Topology::Star);
    net.join_all();
    net.run_with(|_, to, e| if to == 0 { vec![] } else { vec![e] });
    net.now = at;
    let claim = claim_by(&net, 1, 1, 1, net.now);
    let out = net.machines[2]
        .handle_envelope(net.peers[1], claim, net.now, &mut net.rng)
        .unwrap();
    net.absorb(2, out);
    net
}

#[test]
fn a_claim_earlier_than_any_honest_clock_allows_is_an_offence() {
    // The first round cannot have started before the join window's end less a nonce timeout,
    // so no honest claim comes before the window's end (less the skew).
    let net = claim_heard_at(JOIN_END - 2_000);
    assert_eq!(
        net.abort_of(2),
        Some((AbortReason::InvalidClaim, vec![idx(1)], AbortOrigin::Local))
    );
    // At the edge of what an honest clock allows, the same claim only waits.
    let net = claim_heard_at(JOIN_END - 1_000);
    assert!(net.abort_of(2).is_none());
    assert_eq!(net.machines[2].attempt.get(), 0);
    assert!(net.machines[2].pending_claim.is_some());
}

#[test]
fn a_late_message_of_the_replaced_aggregator_is_ignored_not_blamed() {
    let mut net = star(3, false, |_| {});
    net.join_all();
    // Node 0's aggregate nonce is held back; 1 and 2 fail over to 1.
    let mut held = Vec::new();
    net.run_with(|from, _, e| {
        if from == 0 && matches!(e.envelope().body(), Body::AggregateNonce { .. }) {
            held.push(e);
            vec![]
        } else {
            vec![e]
        }
    });
    // Node 0 is slow (it does not reach its own deadline first).
    net.now = JOIN_END;
    for i in 1..3 {
        let out = net.machines[i].tick(net.now, &mut net.rng);
        net.absorb(i, out);
    }
    net.run();
    assert_eq!(net.machines[2].attempt.get(), 1);
    let before = net.errors.len();
    for e in held {
        net.deliver(0, 2, e);
    }
    let (_, err) = net.errors.get(before).expect("refused");
    assert_eq!(err.peer_action(), crate::PeerAction::Ignore, "{err}");
    assert!(net.abort_of(2).is_none());
}

// ------------------------------------------------------------------------------------------------
// The broadcast turn

fn finalize_due(net: &Net, i: usize) -> Vec<u16> {
    net.events[i]
        .iter()
        .filter_map(|e| match e {
            Event::FinalizeDue { position, .. } => Some(*position),
            _ => None,
        })
        .collect()
}

fn confirmations(net: &Net, i: usize) -> Vec<(SignerIndex, Vec<u8>)> {
    net.events[i]
        .iter()
        .filter_map(|e| match e {
            Event::BroadcastConfirmed { by, receipt, .. } => Some((*by, receipt.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn the_coordinator_is_asked_to_broadcast_and_its_confirmation_reaches_everyone() {
    for topology in [Topology::Mesh, Topology::Star] {
        let mut net = Net::new(3, topology, true);
        net.join_all();
        net.run();
        net.assert_all_signed();
        assert_eq!(finalize_due(&net, 0), vec![0]);
        assert!(finalize_due(&net, 1).is_empty() && finalize_due(&net, 2).is_empty());
        // Only the coordinator may confirm now.
        assert!(matches!(
            net.machines[1].confirm_finalized(vec![1], net.now),
            Err(CoordinatorError::Broadcast { .. })
        ));
        assert!(matches!(
            net.machines[0].confirm_finalized(vec![0; 257], net.now),
            Err(CoordinatorError::Broadcast { .. })
        ));
        let out = net.machines[0]
            .confirm_finalized(b"txid".to_vec(), net.now)
            .unwrap();
        net.absorb(0, out);
        net.run();
        for i in 0..3 {
            assert_eq!(confirmations(&net, i), vec![(idx(0), b"txid".to_vec())]);
            assert!(!net.machines[i].awaits_broadcast());
            assert_eq!(net.machines[i].next_deadline(), None);
        }
        assert!(net.machines[0].confirm_finalized(vec![], net.now).is_err());
    }
}

#[test]
fn an_unconfirmed_broadcast_passes_to_the_next_in_order_and_then_runs_out() {
    let mut net = Net::custom(
        3,
        Topology::Mesh,
        false,
        ElectionMethod::FirstSigner,
        true,
        |p| p.max_failovers = 2,
        &Config::default(),
    );
    net.join_all();
    net.run();
    net.assert_all_signed();
    // Nobody confirms: the turn passes 0 → 1 → 2 (max_failovers 2), then runs out.
    for turn in 1..=2u16 {
        let deadline = net.machines[0].next_deadline().unwrap();
        net.now = deadline;
        for i in 0..3 {
            let out = net.machines[i].tick(net.now, &mut net.rng);
            net.absorb(i, out);
        }
        net.run();
        assert_eq!(finalize_due(&net, usize::from(turn)), vec![turn]);
        for i in 0..3 {
            assert!(
                net.events[i].iter().any(|e| matches!(e,
                    Event::BroadcastFailover { next, .. } if *next == idx(turn))),
                "node {i} saw the turn pass to {turn}"
            );
        }
    }
    // The claim that went with the last turn was accepted quietly (it changes nothing).
    assert!(
        net.errors
            .iter()
            .all(|(_, e)| e.peer_action() == crate::PeerAction::Ignore),
        "{:?}",
        net.errors
    );
    net.now = net.machines[0].next_deadline().unwrap();
    for i in 0..3 {
        let out = net.machines[i].tick(net.now, &mut net.rng);
        net.absorb(i, out);
        assert!(
            net.events[i]
                .iter()
                .any(|e| matches!(e, Event::BroadcastExhausted { .. }))
        );
        assert_eq!(net.machines[i].next_deadline(), None);
    }
    // An earlier coordinator may still confirm late, and that ends it for everyone.
    let out = net.machines[0]
        .confirm_finalized(b"late".to_vec(), net.now)
        .unwrap();
    net.absorb(0, out);
    net.run();
    for i in 0..3 {
        assert_eq!(confirmations(&net, i), vec![(idx(0), b"late".to_vec())]);
    }
}

#[test]
fn a_broadcast_claim_out_of_turn_is_an_offence_of_its_author() {
    let mut net = tight_clocks(3, Topology::Mesh);
    net.join_all();
    net.run();
    net.assert_all_signed();
    let now = net.now;
    // Signer 2 claims position 1, which is signer 1's.
    let wrong = claim_by(&net, 2, 1, 0, now);
    let err = net.machines[0]
        .handle_envelope(net.peers[2], wrong, now, &mut net.rng)
        .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::InvalidClaim { signer, .. } if signer == idx(2)),
        "{err}"
    );
    assert_eq!(err.peer_action(), crate::PeerAction::Penalize);
    // Signer 1 claims its position right after the signature: no honest clock allows it.
    let early = claim_by(&net, 1, 1, 0, now);
    let err = net.machines[0]
        .handle_envelope(net.peers[1], early, now, &mut net.rng)
        .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::InvalidClaim { .. }),
        "{err}"
    );
    // The signature stands and the turn did not move.
    assert_eq!(net.machines[0].phase(), Phase::Done);
    assert!(net.machines[0].awaits_broadcast());
    assert_eq!(finalize_due(&net, 1), Vec::<u16>::new());
}

#[test]
fn a_restarted_node_remembers_the_failover_and_the_broadcast_turn() {
    let mut net = star(3, false, |_| {});
    let stopped = frozen(3, &[0], JOIN_END + 1_000);
    let mut ledger = NonceLedger::default();
    net.join_all();
    net.drive(&stopped, &at_once, &mut ledger);
    net.assert_live_signed(&everyone(3), 1, 1);
    // Node 1 aggregated after the failover, so the broadcast is its turn; it restarts.
    assert_eq!(finalize_due(&net, 1), vec![1]);
    net.events[1].clear();
    net.crash_and_restart(1, false);
    assert_eq!(net.machines[1].coordinator(), idx(1));
    assert_eq!(net.machines[1].coordinator_position(), 1);
    assert_eq!(
        finalize_due(&net, 1),
        vec![1],
        "asked again after the restart"
    );
    net.run();
    let out = net.machines[1]
        .confirm_finalized(b"r".to_vec(), net.now)
        .unwrap();
    net.absorb(1, out);
    net.run();
    assert_eq!(confirmations(&net, 2), vec![(idx(1), b"r".to_vec())]);
    // A node that restarts after the confirmation is not asked again.
    net.events[1].clear();
    net.crash_and_restart(1, false);
    assert!(finalize_due(&net, 1).is_empty());
    assert!(net.machines[1].broadcast_confirmed());
}

#[test]
fn an_aggregator_that_joins_only_after_being_replaced_catches_up_and_signs() {
    for commit in [false, true] {
        let mut net = star(4, commit, |_| {});
        let mut ledger = NonceLedger::default();
        // Node 0 is not running when the session starts: it joins after the others failed over.
        for i in 1..4 {
            net.join(i);
        }
        let back_at = JOIN_END + 1_000;
        let lost = |sent: u64, from: usize, to: usize| {
            if (from == 0 || to == 0) && sent < back_at {
                u64::MAX
            } else {
                0
            }
        };
        net.drive_until(&frozen(4, &[0], back_at), &lost, &mut ledger, back_at);
        assert_eq!(net.machines[1].attempt.get(), 1, "the others failed over");
        net.join(0);
        net.drive(&frozen(4, &[], 0), &at_once, &mut ledger);
        net.assert_live_signed(&everyone(4), 1, 1);
        ledger.assert_no_reuse();
    }
}

#[test]
fn transcripts_of_a_failed_over_session_verify_and_prove_an_out_of_turn_claim() {
    use crate::transcript::{BlameKind, Transcript, TranscriptLimits};
    // A session that failed over and signed: its transcript verifies, proves nothing against
    // anyone, and holds both attempts.
    let mut net = star(4, true, |_| {});
    let mut ledger = NonceLedger::default();
    net.join_all();
    net.drive(&frozen(4, &[0], JOIN_END + 1_000), &at_once, &mut ledger);
    net.assert_live_signed(&everyone(4), 1, 1);
    let id = net.machines[2].session_id();
    let stored = net.stores[2].load(&id).unwrap().unwrap();
    let report = Transcript::from_stored(&stored, Some(idx(2)))
        .verify(&TranscriptLimits::default())
        .expect("verifies");
    assert!(report.proofs.is_empty(), "{:?}", report.proofs);
    assert!(report.signatures_valid());
    assert_eq!(report.attempts.len(), 2);

    // Signer 2 claims position 1 (signer 1's): the transcript of whoever received it proves it.
    let mut net = star(4, false, |_| {});
    net.join_all();
    net.run_with(|_, to, e| if to == 0 { vec![] } else { vec![e] });
    net.now = JOIN_END;
    let claim = claim_by(&net, 2, 1, 1, net.now);
    let out = net.machines[3]
        .handle_envelope(net.peers[2], claim, net.now, &mut net.rng)
        .unwrap();
    net.absorb(3, out);
    let stored = net.stores[3].load(&id_of(&net)).unwrap().unwrap();
    let report = Transcript::from_stored(&stored, Some(idx(3)))
        .verify(&TranscriptLimits::default())
        .expect("verifies");
    assert!(
        report
            .proofs
            .iter()
            .any(|p| p.signer == idx(2) && p.kind == BlameKind::OutOfTurnClaim),
        "{:?}",
        report.proofs
    );
}

fn id_of(net: &Net) -> SessionId {
    net.machines[0].session_id()
}
