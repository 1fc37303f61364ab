//! Failover (ADR 0008): the star aggregator role passing down the election order when the
//! aggregator misses its deadline, and the broadcast turn passing on after the signature.
//!
//! Every claim is a signed `FailoverClaim` by the signer at the claimed position. It is
//! followed only once the current aggregator's deadline has passed on the follower's own clock
//! (earlier, it waits, bounded to one claim); one that no honest clock can explain, or from a
//! signer not at that position, is an offence of its author.

use super::*;

/// A valid claim of the next attempt that arrived before our own deadline for the current
/// aggregator passed.
#[derive(Debug, Clone)]
pub(super) struct PendingClaim {
    pub(super) attempt: Attempt,
    pub(super) rank: u16,
    pub(super) env: SignedEnvelope,
    pub(super) accept_at_ms: u64,
}

/// Whose turn it is to act on the signature.
#[derive(Debug, Clone)]
pub(super) struct Broadcast {
    /// The position whose turn it is.
    rank: u16,
    /// The position whose turn came first (the coordinator that produced the signature).
    first_rank: u16,
    /// When the current turn ends.
    deadline_ms: u64,
    /// The latest signed timestamp of what made the signature (partial signatures, the final
    /// signature): no honest signer had it earlier.
    signed_floor_ms: u64,
    state: BroadcastState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BroadcastState {
    Pending,
    Confirmed,
    Exhausted,
}

impl SessionMachine {
    /// The election order: position 0 coordinates first; the others take over in turn.
    pub fn election_order(&self) -> &[SignerIndex] {
        &self.order
    }

    /// The current coordinator's position in the election order (0 until a failover).
    pub fn coordinator_position(&self) -> u16 {
        self.rank
    }

    /// Whether the signature is waiting for a coordinator to confirm the broadcast.
    pub fn awaits_broadcast(&self) -> bool {
        self.broadcast
            .as_ref()
            .is_some_and(|b| b.state == BroadcastState::Pending)
    }

    /// Whether a confirmation of the broadcast could still change something here (none has
    /// arrived, even if every turn has passed).
    pub fn open_to_confirmation(&self) -> bool {
        self.broadcast
            .as_ref()
            .is_some_and(|b| b.state != BroadcastState::Confirmed)
    }

    /// Whether someone (this node or another signer) confirmed the broadcast.
    pub fn broadcast_confirmed(&self) -> bool {
        self.broadcast
            .as_ref()
            .is_some_and(|b| b.state == BroadcastState::Confirmed)
    }

    pub(super) fn position_of(&self, signer: SignerIndex) -> Option<u16> {
        self.order
            .iter()
            .position(|&s| s == signer)
            .and_then(|p| u16::try_from(p).ok())
    }

    fn at_position(&self, rank: u16) -> Option<SignerIndex> {
        self.order.get(usize::from(rank)).copied()
    }

    /// Whether the star aggregator role can still pass on: a position and an attempt are left.
    pub(super) fn can_fail_over(&self) -> bool {
        self.topology == Topology::Star
            && self.rank < self.max_rank
            && self.attempt.get().saturating_add(1) < self.max_attempts
    }

    /// The time each position skipped over gets to claim (half a phase timeout).
    fn claim_window_ms(&self) -> u64 {
        (self.nonce_timeout_ms / 2).max(1)
    }

    /// Our position, if we are among those who may claim the aggregator role next.
    fn my_claim_position(&self) -> Option<u16> {
        self.position_of(self.me)
            .filter(|&p| p > self.rank && p <= self.max_rank)
    }

    /// Sets the deadlines of a star wait whose aggregator must deliver by `aggregator_deadline`.
    ///
    /// With a failover left: the signer at position `rank + k` claims at `aggregator_deadline +
    /// (k - 1) · W` (W: half the nonce timeout); the aggregator gives up one window after the
    /// last claimant's turn, everyone else half a phase timeout later still. With none left:
    /// the aggregator gives up at its deadline and members half a phase timeout later. Either
    /// way an aggregator that gives up (naming a withholding member) is heard before a member
    /// would blame it.
    pub(super) fn schedule_star_wait(&mut self, aggregator_deadline: u64, timeout_ms: u64) {
        self.aggregator_deadline_ms = Some(aggregator_deadline);
        let window = self.claim_window_ms();
        let aggregator_gives_up = if self.can_fail_over() {
            aggregator_deadline
                .saturating_add(window.saturating_mul(u64::from(self.max_rank - self.rank)))
        } else {
            aggregator_deadline
        };
        let deadline = match self.my_claim_position() {
            Some(p) if self.can_fail_over() => aggregator_deadline
                .saturating_add(window.saturating_mul(u64::from(p - self.rank - 1))),
            // First the aggregator asks whether it was replaced (see `phase_timed_out`).
            _ if self.me == self.coordinator && self.can_fail_over() => aggregator_deadline,
            _ if self.me == self.coordinator => aggregator_gives_up,
            _ => aggregator_gives_up.saturating_add(timeout_ms / 2),
        };
        self.aggregator_gives_up_ms = aggregator_gives_up;
        self.phase_deadline_ms = Some(deadline);
    }

    /// The phase deadline passed: claim the aggregator role if it is our turn, else end the
    /// session.
    ///
    /// Blame follows only from what every honest signer sees alike: before any failover (no
    /// claim seen), the aggregator names the members it lacks and a member names the
    /// aggregator, as without failover. Once a claim is about, honest signers may be an
    /// attempt apart for a while (each follows on its own clock), so a timeout names nobody.
    pub(super) fn phase_timed_out<R: rand::CryptoRng + ?Sized>(
        &mut self,
        now_ms: u64,
        rng: &mut R,
        out: &mut Vec<Output>,
    ) {
        let star_wait = self.aggregator_deadline_ms.is_some();
        let settled = self.rank == 0 && !self.claim_seen;
        if star_wait
            && self.me == self.coordinator
            && self.can_fail_over()
            && now_ms < self.aggregator_gives_up_ms
        {
            // Our deadline passed with a failover possible: we may have been replaced while
            // cut off. Our join, sent again, asks the others (they answer with the claim that
            // made their attempt, a bounded number of times); we ask again each claim window
            // (a cut can heal after the send retries end) until we give up.
            if let Some(own) = self.own_join().cloned() {
                let others: Vec<SignerIndex> = self.others().collect();
                self.send_to(out, others, vec![own]);
            }
            self.phase_deadline_ms = Some(
                now_ms
                    .saturating_add(self.claim_window_ms())
                    .min(self.aggregator_gives_up_ms),
            );
            return;
        }
        if !star_wait || self.me == self.coordinator {
            let holdouts = if settled || !star_wait {
                self.holdouts()
            } else {
                Vec::new()
            };
            self.abort(now_ms, AbortReason::Timeout, holdouts, out);
            return;
        }
        if self.can_fail_over() {
            if let Some(p) = self.my_claim_position() {
                self.claim(p, now_ms, rng, out);
                return;
            }
        }
        let failover = self.rank > 0 || self.can_fail_over();
        let reason = if failover {
            AbortReason::FailoverExhausted
        } else {
            AbortReason::Timeout
        };
        // The aggregator did not deliver, nor give up naming someone (it would have been heard
        // by now), and nobody whose turn it was claimed.
        let blamed = if settled {
            vec![self.coordinator]
        } else {
            Vec::new()
        };
        self.abort(now_ms, reason, blamed, out);
    }

    /// Claims the aggregator role at position `rank` for the next attempt.
    fn claim<R: rand::CryptoRng + ?Sized>(
        &mut self,
        rank: u16,
        now_ms: u64,
        rng: &mut R,
        out: &mut Vec<Output>,
    ) {
        let Some(attempt) = self.attempt.next() else {
            let holdouts = self.holdouts();
            self.abort(now_ms, AbortReason::Timeout, holdouts, out);
            return;
        };
        tracing::info!(session = %self.id, position = rank, attempt = attempt.get(), "claiming the aggregator role");
        self.claim_seen = true;
        let claim = self.sign(now_ms, Body::FailoverClaim { attempt, rank });
        // Our join goes with it: signers whose peers were not announced may not know ours.
        let mut envs: Vec<SignedEnvelope> = self.own_join().cloned().into_iter().collect();
        envs.push(claim.clone());
        let others: Vec<SignerIndex> = self.others().collect();
        self.send_to(out, others, envs);
        self.take_over(claim, rank, attempt, now_ms, out);
        self.advance(now_ms, rng, out);
    }

    /// Follows a claim: the coordinator at `rank` runs `attempt`, which started at
    /// `claimed_at_ms` on the claimant's clock. The caller then runs `advance`.
    fn take_over(
        &mut self,
        claim: SignedEnvelope,
        rank: u16,
        attempt: Attempt,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let claimed_at_ms = claim.envelope().timestamp_ms();
        if !self.move_role_to(rank, attempt, out) {
            return;
        }
        // The claimant started this attempt no earlier than the claim's timestamp less the
        // skew; its first round then lasts at least a nonce timeout.
        self.earliest_claim_ms = claimed_at_ms
            .saturating_sub(self.max_skew_ms.saturating_mul(2))
            .saturating_add(self.nonce_timeout_ms);
        self.adopt_unchecked_aggregate(now_ms, out);
        if self.phase.is_terminal() {
            return;
        }
        self.new_attempt(attempt, now_ms);
        self.rank_claimed = true;
        self.attempt_start.push(claim);
        self.send_join_to_coordinator(out);
        self.apply_waiting(now_ms, out);
    }

    /// Makes the signer at position `rank` the coordinator (for `attempt`) and says so; false
    /// when the order has no such position.
    fn move_role_to(&mut self, rank: u16, attempt: Attempt, out: &mut Vec<Output>) -> bool {
        let replaced = self.coordinator;
        let Some(coordinator) = self.at_position(rank) else {
            return false;
        };
        self.rank = rank;
        self.coordinator = coordinator;
        self.pending_claim = None;
        out.push(Output::Event(Event::CoordinatorFailover {
            session: self.id,
            attempt,
            replaced,
            coordinator,
        }));
        true
    }

    /// `signer` still speaks in an earlier attempt (it was cut off, or restarted from an older
    /// store): show it, a bounded number of times, the restart and claims that made ours.
    pub(super) fn catch_up(&mut self, signer: SignerIndex, out: &mut Vec<Output>) {
        if self.attempt_start.is_empty() || self.phase.is_terminal() {
            return;
        }
        let Some(count) = self.answered.get_mut(signer.as_usize()) else {
            return;
        };
        if *count >= MAX_FINISHED_ANSWERS {
            return;
        }
        *count += 1;
        let envs = self.attempt_start.clone();
        self.send_to(out, [signer], envs);
    }

    /// The new coordinator needs our peer to answer us.
    fn send_join_to_coordinator(&mut self, out: &mut Vec<Output>) {
        let c = self.coordinator;
        if c == self.me || self.phase == Phase::Created || self.join_sent[c.as_usize()] {
            return;
        }
        if let Some(own) = self.own_join().cloned() {
            self.join_sent[c.as_usize()] = true;
            self.send_to(out, [c], vec![own]);
        }
    }

    /// Contributions of the attempt just entered that arrived before it.
    pub(super) fn apply_waiting(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let waiting = std::mem::take(&mut self.next_attempt);
        for early in waiting {
            if self.phase.is_terminal() {
                break;
            }
            if let Err(e) = self.apply(early, now_ms, out) {
                tracing::debug!(session = %self.id, error = %e, "early contribution dropped");
            }
        }
    }

    /// A verified `FailoverClaim` from `env`'s author.
    pub(super) fn on_claim(
        &mut self,
        env: VerifiedEnvelope,
        attempt: Attempt,
        rank: u16,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Result<()> {
        let signer = env.signer();
        let offence = |why| CoordinatorError::InvalidClaim { signer, why };
        if self.at_position(rank) != Some(signer) {
            return self.claim_offence(&env, offence("not the claimant's position"), now_ms, out);
        }
        if rank == 0 || rank > self.max_rank {
            return self.claim_offence(
                &env,
                offence("a position the failover order does not allow"),
                now_ms,
                out,
            );
        }
        if attempt.get() >= self.max_attempts {
            return self.claim_offence(
                &env,
                offence("an attempt the session does not allow"),
                now_ms,
                out,
            );
        }
        if self.phase == Phase::Done {
            return self.on_broadcast_claim(signer, attempt, rank, now_ms, out);
        }
        self.claim_seen = true;
        let superseded = Err(CoordinatorError::Superseded {
            signer,
            kind: "failover claim",
        });
        if self.topology != Topology::Star {
            // A broadcast claim of a signer that finished before us.
            return superseded;
        }
        if attempt == self.attempt {
            return self.claim_for_current(env, rank, now_ms, out);
        }
        if attempt < self.attempt || rank <= self.rank {
            return superseded;
        }
        if now_ms < self.earliest_claim_ms {
            return self.claim_offence(&env, offence("earlier than any honest claim"), now_ms, out);
        }
        let base = self
            .aggregator_deadline_ms
            .or(self.phase_deadline_ms)
            .unwrap_or(0);
        let accept_at_ms = base.saturating_add(
            self.claim_window_ms()
                .saturating_mul(u64::from(rank - self.rank - 1)),
        );
        let claim = PendingClaim {
            attempt,
            rank,
            env: env.signed().clone(),
            accept_at_ms,
        };
        // A node that just came back from a restart, or joined after the claim was made, did
        // not see the deadline pass: it has no deadline of its own to wait for (the claim's
        // timestamp passed the check above).
        let predates_us = self
            .own_join()
            .is_none_or(|own| env.timestamp_ms() <= own.envelope().timestamp_ms());
        if self.phase == Phase::Created || self.restored || predates_us || now_ms >= accept_at_ms {
            self.follow_claim(claim, now_ms, out);
            return Ok(());
        }
        match &self.pending_claim {
            Some(p) if p.rank <= rank => superseded,
            _ => {
                tracing::debug!(session = %self.id, %signer, "failover claim waits for our own deadline");
                self.pending_claim = Some(Box::new(claim));
                Ok(())
            }
        }
    }

    /// A claim's author is provably out of turn: in the rounds the session ends naming it.
    fn claim_offence(
        &mut self,
        env: &VerifiedEnvelope,
        error: CoordinatorError,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Result<()> {
        // The claim is the proof: it goes into the transcript.
        self.record(Record::Envelope(env.signed().clone()));
        if let CoordinatorError::InvalidClaim { signer, .. } = &error {
            if !self.phase.is_terminal() {
                self.abort(now_ms, AbortReason::InvalidClaim, vec![*signer], out);
            }
        }
        Err(error)
    }

    pub(super) fn accept_pending_claim<R: rand::CryptoRng + ?Sized>(
        &mut self,
        now_ms: u64,
        rng: &mut R,
        out: &mut Vec<Output>,
    ) {
        if let Some(claim) = self.pending_claim.take() {
            self.follow_claim(*claim, now_ms, out);
            self.advance(now_ms, rng, out);
        }
    }

    /// Passes a claim on (everyone must move together) and moves to its attempt.
    fn follow_claim(&mut self, claim: PendingClaim, now_ms: u64, out: &mut Vec<Output>) {
        let author = claim.env.envelope().signer();
        self.relay_claim(author, &claim.env, out);
        self.take_over(claim.env, claim.rank, claim.attempt, now_ms, out);
    }

    fn relay_claim(&mut self, author: SignerIndex, claim: &SignedEnvelope, out: &mut Vec<Output>) {
        let mut envs: Vec<SignedEnvelope> = self.joins[author.as_usize()]
            .as_deref()
            .map(|(_, e)| e.clone())
            .into_iter()
            .collect();
        envs.push(claim.clone());
        let others: Vec<SignerIndex> = self.others().filter(|&k| k != author).collect();
        self.send_to(out, others, envs);
    }

    /// A claim for the attempt we are in: competing claimants (one did not hear the other in
    /// time) settle on the lower position; a claim after a restart names the attempt's
    /// coordinator. Only before we signed or aggregated in it.
    fn claim_for_current(
        &mut self,
        env: VerifiedEnvelope,
        rank: u16,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Result<()> {
        let signer = env.signer();
        let switch = if self.rank_claimed {
            rank < self.rank
        } else {
            rank > self.rank
        };
        let committed = self.psigs[self.me.as_usize()].is_some() || self.aggnonce_sent.is_some();
        if !switch || committed {
            return Err(CoordinatorError::Superseded {
                signer,
                kind: "failover claim",
            });
        }
        self.relay_claim(signer, env.signed(), out);
        if !self.move_role_to(rank, self.attempt, out) {
            return Ok(());
        }
        self.rank_claimed = true;
        // What the previous coordinator was given or gave is not the new one's: only our own
        // contributions (the same ones, never new nonces in one attempt) go to it again.
        let me = self.me.as_usize();
        for (i, slot) in self.nonces.iter_mut().enumerate() {
            if i != me {
                *slot = None;
            }
        }
        for slot in &mut self.verified_nonces {
            *slot = None;
        }
        self.aggnonce_received = false;
        self.aggnonce_env = None;
        self.aggnonce_unchecked = None;
        self.star_aggregate = None;
        self.nonce_set_env = None;
        self.aggnonce_sent = None;
        self.attempt_start.push(env.signed().clone());
        self.send_join_to_coordinator(out);
        // The same commitment and nonce (never new ones in one attempt), signed afresh: the
        // first envelopes may be older than the new coordinator's clock check allows.
        let mut own: Vec<SignedEnvelope> = Vec::new();
        if let Some(&(commitment, _)) = self.commits[me].as_deref() {
            own.push(self.sign(
                now_ms,
                Body::NonceCommit {
                    attempt: self.attempt,
                    commitment,
                },
            ));
        }
        if self.phase == Phase::Nonce {
            if let Some((pub_nonces, _)) = self.nonces[me].as_deref().cloned() {
                own.push(self.sign(
                    now_ms,
                    Body::Nonce {
                        attempt: self.attempt,
                        pub_nonces,
                    },
                ));
            }
        }
        if !own.is_empty() {
            self.send_to(out, [self.coordinator], own);
        }
        let timeout = self.nonce_timeout_ms;
        if matches!(self.phase, Phase::NonceCommit | Phase::Nonce) {
            self.schedule_star_wait(now_ms.saturating_add(timeout), timeout);
        }
        Ok(())
    }

    // ------------------------------------------------------------------------------------------
    // The broadcast turn

    /// The signature is here: the coordinator's turn to act on it begins.
    pub(super) fn start_broadcast(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let signed_floor_ms = self
            .psigs
            .iter()
            .flatten()
            .map(|slot| slot.1.envelope().timestamp_ms())
            .chain(self.final_env.iter().map(|e| e.envelope().timestamp_ms()))
            .max()
            .unwrap_or(now_ms);
        self.broadcast = Some(Broadcast {
            rank: self.rank,
            first_rank: self.rank,
            deadline_ms: now_ms.saturating_add(self.broadcast_ms),
            signed_floor_ms,
            state: BroadcastState::Pending,
        });
        self.tell_if_due(out);
    }

    fn tell_if_due(&self, out: &mut Vec<Output>) {
        let (Some(b), Some(signatures)) = (&self.broadcast, &self.signatures) else {
            return;
        };
        if b.state == BroadcastState::Pending && self.at_position(b.rank) == Some(self.me) {
            out.push(Output::Event(Event::FinalizeDue {
                session: self.id,
                signatures: signatures.clone(),
                position: b.rank,
            }));
        }
    }

    pub(super) fn broadcast_deadline(&self) -> Option<u64> {
        self.broadcast
            .as_ref()
            .filter(|b| b.state == BroadcastState::Pending)
            .map(|b| b.deadline_ms)
    }

    pub(super) fn broadcast_tick(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let Some(b) = &self.broadcast else { return };
        if b.state != BroadcastState::Pending || now_ms < b.deadline_ms {
            return;
        }
        let rank = b.rank;
        if rank < self.max_rank {
            self.pass_broadcast_turn(rank + 1, now_ms, out);
            if self.at_position(rank + 1) == Some(self.me) {
                let env = self.sign(
                    now_ms,
                    Body::FailoverClaim {
                        attempt: self.attempt,
                        rank: rank + 1,
                    },
                );
                let others: Vec<SignerIndex> = self.others().collect();
                self.send_to(out, others, vec![env]);
            }
            self.tell_if_due(out);
        } else if let Some(b) = &mut self.broadcast {
            b.state = BroadcastState::Exhausted;
            tracing::warn!(session = %self.id, "no coordinator confirmed the broadcast");
            out.push(Output::Event(Event::BroadcastExhausted {
                session: self.id,
            }));
        }
    }

    fn pass_broadcast_turn(&mut self, to: u16, now_ms: u64, out: &mut Vec<Output>) {
        let (Some(failed), Some(next)) = (
            self.broadcast
                .as_ref()
                .and_then(|b| self.at_position(b.rank)),
            self.at_position(to),
        ) else {
            return;
        };
        if let Some(b) = &mut self.broadcast {
            b.rank = to;
            b.deadline_ms = now_ms.saturating_add(self.broadcast_ms);
        }
        out.push(Output::Event(Event::BroadcastFailover {
            session: self.id,
            failed,
            next,
        }));
    }

    fn on_broadcast_claim(
        &mut self,
        signer: SignerIndex,
        attempt: Attempt,
        rank: u16,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Result<()> {
        let superseded = Err(CoordinatorError::Superseded {
            signer,
            kind: "broadcast claim",
        });
        let Some(b) = &self.broadcast else {
            return superseded;
        };
        if attempt != self.attempt || b.state != BroadcastState::Pending || rank <= b.rank {
            return superseded;
        }
        let earliest = b.signed_floor_ms.saturating_add(
            self.broadcast_ms
                .saturating_mul(u64::from(rank.saturating_sub(b.first_rank))),
        );
        if now_ms.saturating_add(self.max_skew_ms.saturating_mul(2)) < earliest {
            return Err(CoordinatorError::InvalidClaim {
                signer,
                why: "earlier than any honest broadcast claim",
            });
        }
        let due = b.deadline_ms.saturating_add(
            self.broadcast_ms
                .saturating_mul(u64::from(rank - b.rank - 1)),
        );
        if now_ms < due {
            // Our own clock passes the turn on when it is time.
            return superseded;
        }
        self.pass_broadcast_turn(rank, now_ms, out);
        Ok(())
    }

    /// A signed `BroadcastConfirmed` from `signer`.
    pub(super) fn on_broadcast_confirmed(
        &mut self,
        signer: SignerIndex,
        attempt: Attempt,
        receipt: Vec<u8>,
        out: &mut Vec<Output>,
    ) -> Result<()> {
        if self.position_of(signer).is_none_or(|p| p > self.max_rank) {
            return Err(CoordinatorError::InvalidClaim {
                signer,
                why: "a broadcast confirmation from a signer whose turn never comes",
            });
        }
        let Some(b) = &mut self.broadcast else {
            return Err(CoordinatorError::Superseded {
                signer,
                kind: "broadcast confirmation",
            });
        };
        if attempt != self.attempt || b.state == BroadcastState::Confirmed {
            return Err(CoordinatorError::Superseded {
                signer,
                kind: "broadcast confirmation",
            });
        }
        b.state = BroadcastState::Confirmed;
        out.push(Output::Event(Event::BroadcastConfirmed {
            session: self.id,
            by: signer,
            receipt,
        }));
        Ok(())
    }

    /// Confirms that this node acted on the signature (e.g. published the transaction), with an
    /// opaque receipt of at most 256 bytes: the other signers get a signed `BroadcastConfirmed`.
    /// Only once it is (or was) this node's turn.
    pub fn confirm_finalized(&mut self, receipt: Vec<u8>, now_ms: u64) -> Result<Vec<Output>> {
        let refuse = |why| CoordinatorError::Broadcast {
            session: self.id,
            why,
        };
        if receipt.len() > musig2_proto::MAX_RECEIPT_BYTES {
            return Err(refuse("the receipt is longer than 256 bytes"));
        }
        let Some(b) = &self.broadcast else {
            return Err(refuse("the session has no signature"));
        };
        if b.state == BroadcastState::Confirmed {
            return Err(refuse("the broadcast is already confirmed"));
        }
        match self.position_of(self.me) {
            Some(p) if p <= b.rank && p <= self.max_rank => {}
            _ => return Err(refuse("it is not this node's turn")),
        }
        let mut out = Vec::new();
        let env = self.sign(
            now_ms,
            Body::BroadcastConfirmed {
                attempt: self.attempt,
                receipt: receipt.clone(),
            },
        );
        let others: Vec<SignerIndex> = self.others().collect();
        self.send_to(&mut out, others, vec![env]);
        if let Some(b) = &mut self.broadcast {
            b.state = BroadcastState::Confirmed;
        }
        out.push(Output::Event(Event::BroadcastConfirmed {
            session: self.id,
            by: self.me,
            receipt,
        }));
        self.flush_records(&mut out);
        Ok(out)
    }

    /// After a restart: the coordinator position and broadcast turn the stored claims and
    /// confirmations imply. Claims stored after the final signature are broadcast claims; the
    /// others set the aggregator of their attempt, which later attempts keep until a claim of
    /// their own.
    pub(super) fn restore_failover(
        &mut self,
        stored: &[SignedEnvelope],
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let mut after_signature = self.topology == Topology::Mesh;
        let mut aggregator: BTreeMap<u16, u16> = BTreeMap::new();
        let mut broadcast_rank: Option<u16> = None;
        let mut confirmed = false;
        for env in stored {
            match env.envelope().body() {
                Body::FinalSignature { .. } => after_signature = true,
                Body::FailoverClaim { attempt, rank } => {
                    if after_signature {
                        if *attempt == self.attempt {
                            broadcast_rank = Some(broadcast_rank.map_or(*rank, |r| r.max(*rank)));
                        }
                    } else if *attempt <= self.attempt {
                        let best = aggregator.entry(attempt.get()).or_insert(*rank);
                        *best = (*best).min(*rank);
                    }
                }
                Body::BroadcastConfirmed { attempt, .. } if *attempt == self.attempt => {
                    confirmed = true;
                }
                _ => {}
            }
        }
        if let Some((&attempt, &rank)) = aggregator.iter().next_back() {
            if let Some(c) = self.at_position(rank) {
                self.rank = rank;
                self.coordinator = c;
                self.rank_claimed = attempt == self.attempt.get();
            }
        }
        if self.phase == Phase::Done {
            self.start_broadcast(now_ms, &mut Vec::new());
            if let Some(b) = &mut self.broadcast {
                b.first_rank = self.rank;
                if let Some(r) = broadcast_rank {
                    b.rank = b.rank.max(r);
                }
                if confirmed {
                    b.state = BroadcastState::Confirmed;
                }
            }
            self.tell_if_due(out);
        }
    }
}
