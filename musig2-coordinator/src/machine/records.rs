//! Durability and restarts: what the store must keep, a machine rebuilt from it, a new
//! attempt, and the answers a signer that missed something gets (ADR 0007).

use super::*;

impl SessionMachine {
    /// A machine for a session this node stored before it stopped (see [`crate::store`]),
    /// and what to send now.
    ///
    /// A finished session stays finished. Otherwise what the store holds decides (the store
    /// never holds a secret nonce, so one we had is gone):
    /// * our partial signature of the current attempt: re-send exactly that one, never sign
    ///   again in that attempt;
    /// * anything else after our join: a public nonce of ours may have left (a restored older
    ///   copy of the store looks the same as a store that saw nothing sent), so we start a new
    ///   attempt with a signed `Restart`, which the others follow without blaming anyone;
    ///   past the announcement's `max_attempts` the session aborts with reason `Restarted`
    ///   naming us (if no attempt is left and nothing of a round is stored, we continue).
    ///
    /// Sequence numbers continue one reservation block past the stored reservation, so a
    /// restored copy up to a block behind never reuses a number.
    pub fn restore<R: rand::CryptoRng + ?Sized>(
        stored: &StoredSession,
        keypair: Keypair,
        local_peer: PeerId,
        config: &Config,
        now_ms: u64,
        untweaked: Option<&KeyAggContext>,
        rng: &mut R,
    ) -> Result<(SessionMachine, Vec<Output>)> {
        let id = stored.session_id();
        let unrestorable = |why: String| CoordinatorError::Unrestorable { session: id, why };
        let created = stored.announcement.announcement().created_at_ms;
        let ann = stored
            .announcement
            .verify(created, &config.limits)
            .map_err(|e| unrestorable(format!("announcement: {e}")))?;
        let mut m = Self::with_key_agg(
            ann,
            keypair,
            local_peer,
            config,
            stored.learned_ms,
            untweaked,
        )?;
        let mut out = Vec::new();
        if let Some((outcome, _)) = &stored.outcome {
            m.persist = true;
            m.phase_deadline_ms = None;
            match outcome {
                Outcome::Signed(sigs) => {
                    m.phase = Phase::Done;
                    m.signatures = Some(sigs.clone());
                }
                Outcome::Aborted {
                    reason,
                    blamed,
                    origin,
                } => {
                    m.phase = Phase::Aborted;
                    m.aborted = Some((*reason, blamed.clone(), *origin));
                }
            }
            m.final_env = stored
                .envelopes
                .iter()
                .rev()
                .find(|e| {
                    matches!(
                        e.envelope().body(),
                        Body::Abort { .. } | Body::FinalSignature { .. }
                    )
                })
                .cloned()
                .map(Box::new);
            m.attempt = stored.attempt;
            m.restore_failover(&stored.envelopes, now_ms, &mut out);
            m.next_seq = SeqNo::new(stored.next_seq.get().saturating_add(SEQ_RESERVATION_BLOCK))
                .map_err(|e| unrestorable(e.to_string()))?;
            m.reserve_seq(m.next_seq.get());
            // What we sent last before the crash may not have left: the others may still be
            // waiting for it. Tell them how it ended while the session lasts.
            if now_ms < m.session_deadline_ms {
                m.tell_the_end(now_ms, &mut out);
            }
            m.flush_records(&mut out);
            return Ok((m, out));
        }
        m.attempt = stored.attempt;
        let mut own_aggnonce = None;
        let mut scratch = Vec::new();
        for env in &stored.envelopes {
            let verified = env
                .verify(&m.ann)
                .map_err(|e| unrestorable(format!("stored envelope: {e}")))?;
            let signer = verified.signer();
            m.replay[signer.as_usize()].record(verified.seq());
            m.remember_verified(&verified);
            if signer == m.me {
                if matches!(verified.body(), Body::AggregateNonce { attempt, .. } if *attempt == m.attempt)
                {
                    own_aggnonce = Some(env.clone());
                }
                m.restore_own(verified);
            } else if let Err(e) = m.apply(verified, stored.learned_ms, &mut scratch) {
                // Contributions of attempts we left are stored for the transcript, not used.
                tracing::trace!(session = %id, error = %e, "stored envelope not applied");
            }
        }
        m.restore_failover(&stored.envelopes, now_ms, &mut out);
        m.persist = true;
        let seq_floor = stored
            .next_seq
            .get()
            .max(m.next_seq.get())
            .saturating_add(SEQ_RESERVATION_BLOCK);
        m.next_seq = SeqNo::new(seq_floor).map_err(|e| unrestorable(e.to_string()))?;
        m.reserve_seq(seq_floor);
        if m.phase.is_terminal() {
            // The stored contributions imply the end (it was decided but not yet stored).
            let outcome = match (&m.signatures, &m.aborted) {
                (Some(sigs), _) => Some(Outcome::Signed(sigs.clone())),
                (None, Some((reason, blamed, origin))) => Some(Outcome::Aborted {
                    reason: *reason,
                    blamed: blamed.clone(),
                    origin: *origin,
                }),
                _ => None,
            };
            if let Some(outcome) = outcome {
                m.record(Record::Outcome {
                    session: id,
                    outcome,
                    at_ms: now_ms,
                });
            }
            m.flush_records(&mut out);
            return Ok((m, out));
        }
        let Some(own_join) = m.own_join().cloned() else {
            // Not joined: nothing of ours left the node.
            m.phase = Phase::Created;
            m.flush_records(&mut out);
            return Ok((m, out));
        };
        m.phase = Phase::Joined;
        let a = m.ann.announcement();
        let deadline = a
            .created_at_ms
            .saturating_add(a.policy.timeouts.join_ms)
            .max(now_ms.saturating_add(m.nonce_timeout_ms));
        m.schedule_join_wait(deadline);
        let me = m.me.as_usize();
        out.push(Output::Event(Event::SessionResumed { session: id }));
        if let Some((_, own_psig)) = m.psigs[me].as_deref().cloned() {
            m.resume_signed(own_psig, own_aggnonce, now_ms, &mut out);
        } else {
            let next = m.attempt.get().saturating_add(1);
            let round_stored = m.commits[me].is_some() || m.nonces[me].is_some();
            if next < m.max_attempts {
                let attempt = Attempt::new(next).map_err(|e| unrestorable(e.to_string()))?;
                let restart = m.sign(now_ms, Body::Restart { attempt });
                m.new_attempt(attempt, now_ms);
                m.attempt_start.push(restart.clone());
                out.push(Output::Event(Event::AttemptStarted {
                    session: id,
                    attempt,
                    signer: m.me,
                }));
                let others: Vec<SignerIndex> = m.others().collect();
                m.send_to(&mut out, others, vec![own_join, restart]);
            } else if round_stored {
                m.abort(now_ms, AbortReason::Restarted, vec![m.me], &mut out);
            } else {
                let others: Vec<SignerIndex> = m.others().collect();
                m.send_to(&mut out, others, vec![own_join]);
            }
            m.advance(now_ms, rng, &mut out);
        }
        m.restored = true;
        m.flush_records(&mut out);
        Ok((m, out))
    }

    /// Sends every other signer the envelope that ends the session (see
    /// [`SessionMachine::answer_finished`]).
    pub(super) fn tell_the_end(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        if let Some(env) = self.final_word(now_ms) {
            let others: Vec<SignerIndex> = self.others().collect();
            self.send_to(out, others, vec![env]);
        }
    }

    /// The signed final signature (made once, on demand, in mesh) or the signed abort.
    pub(super) fn final_word(&mut self, now_ms: u64) -> Option<SignedEnvelope> {
        match (&self.final_env, &self.signatures) {
            (Some(env), _) => Some(SignedEnvelope::clone(env)),
            (None, Some(sigs)) => {
                let signatures = sigs
                    .iter()
                    .map(|s| musig2_proto::Signature64(s.to_byte_array()))
                    .collect();
                let env = self.sign(
                    now_ms,
                    Body::FinalSignature {
                        attempt: self.attempt,
                        signatures,
                    },
                );
                self.final_env = Some(Box::new(env.clone()));
                Some(env)
            }
            (None, None) => None,
        }
    }

    /// Puts one of our own stored envelopes back in its slot.
    pub(super) fn restore_own(&mut self, env: VerifiedEnvelope) {
        let me = self.me.as_usize();
        let signed = env.signed().clone();
        match env.body().clone() {
            Body::Join { .. } => {
                if let Some(peer) = self.peers[me] {
                    self.joins[me] = Some(Box::new((peer, signed)));
                }
            }
            Body::NonceCommit {
                attempt,
                commitment,
            } if attempt == self.attempt => self.commits[me] = Some(Box::new((commitment, signed))),
            Body::Nonce {
                attempt,
                pub_nonces,
            } if attempt == self.attempt => {
                self.my_nonces = Some(pub_nonces.clone());
                self.nonces[me] = Some(Box::new((pub_nonces, signed)));
                if self.is_star_coordinator() {
                    self.verified_nonces[me] = Some(Box::new(env));
                }
            }
            Body::PartialSig {
                attempt,
                partial_sigs,
                aggregate,
            } if attempt == self.attempt => {
                if self.topology == Topology::Mesh {
                    self.mesh_aggregate = aggregate;
                }
                self.psigs[me] = Some(Box::new((partial_sigs, signed)));
            }
            Body::AggregateNonce {
                attempt,
                agg_nonces,
                nonce_set,
            } if attempt == self.attempt => {
                self.star_aggregate = Some(StarAggregate {
                    reference: Body::aggregate_ref(&self.id, attempt, &agg_nonces),
                    agg_nonces,
                    nonce_set,
                });
            }
            _ => {}
        }
    }

    /// After a restart with our partial signature stored: the session context is rebuilt
    /// from the stored nonces and exactly the stored signature is sent again.
    pub(super) fn resume_signed(
        &mut self,
        own_psig: SignedEnvelope,
        own_aggnonce: Option<SignedEnvelope>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let contexts = self.signing_contexts();
        // A star member that signed under an aggregate taken unchecked stored its partial
        // signature but not that aggregate (ADR 0026): it needs none to finish, and takes it as
        // evidence if the coordinator sends it again.
        let unchecked_aggregate = self.is_star_member() && self.star_aggregate.is_none();
        if contexts.is_none() && !unchecked_aggregate {
            // We signed, so every nonce was here; a store that lost them cannot aggregate.
            self.abort(now_ms, AbortReason::Internal, Vec::new(), out);
            return;
        }
        self.contexts = contexts;
        self.nonces_announced = true;
        self.aggnonce_received = true;
        self.drop_psigs_under_other_aggregates(out);
        // Our join first: it asks the others for what we may have lost.
        if let Some(own_join) = self.own_join().cloned() {
            let others: Vec<SignerIndex> = self.others().collect();
            self.send_to(out, others, vec![own_join]);
        }
        if self.is_star_coordinator() {
            if let Some(aggnonce) = own_aggnonce {
                let others: Vec<SignerIndex> = self.others().collect();
                self.send_to(out, others, vec![aggnonce.clone()]);
                self.aggnonce_sent = Some(Box::new(aggnonce));
            }
        }
        self.send_partial_sig(own_psig, out);
        self.enter(Phase::PartialSig, now_ms, self.partial_sig_timeout_ms);
    }

    /// The store could not keep what a step produced: nothing of it was sent. The session ends
    /// here without a word to the others (their deadlines end it for them), and it is not
    /// stored any more.
    pub fn store_failed(&mut self, now_ms: u64) -> Vec<Output> {
        self.records.clear();
        self.persist = false;
        let mut out = Vec::new();
        if self.phase.is_terminal() {
            return out;
        }
        tracing::error!(session = %self.id, "the session store failed: aborting without sending");
        self.phase = Phase::Aborted;
        self.phase_deadline_ms = None;
        self.secnonces.clear();
        self.aborted = Some((AbortReason::Internal, Vec::new(), AbortOrigin::Local));
        let _ = now_ms;
        out.push(Output::Event(Event::Aborted {
            session: self.id,
            reason: AbortReason::Internal,
            blamed: Vec::new(),
            origin: AbortOrigin::Local,
        }));
        out
    }

    /// Whether `header` is that of the join we hold from its signer: a signer sends its own join
    /// again only after a restart (to ask what it may have lost). Signer, sequence number and
    /// signature identify it whether it was signed alone or in a batch (ADR 0018): the signer's
    /// other envelopes under one batch signature have other sequence numbers.
    pub fn is_join_replay(&self, header: &musig2_proto::EnvelopeHeader) -> bool {
        self.joins
            .get(header.signer.as_usize())
            .and_then(Option::as_deref)
            .is_some_and(|(_, env)| {
                env.envelope().seq() == header.seq
                    && env
                        .sealed_auth()
                        .is_some_and(|a| a.signature() == &header.signature)
            })
    }

    /// Whether `envelope` is exactly the join we hold from its signer.
    pub fn is_join_copy(&self, envelope: &SignedEnvelope) -> bool {
        matches!(envelope.envelope().body(), Body::Join { .. })
            && self
                .joins
                .get(envelope.envelope().signer().as_usize())
                .and_then(Option::as_deref)
                .is_some_and(|(_, env)| env == envelope)
    }

    /// A bound signer sent us its own join again: it restarted and may have lost what we sent
    /// it. Sends it, a bounded number of times, our contributions of the current attempt (or
    /// how the session ended), exactly as first sent.
    pub fn answer_repeat(&mut self, from: PeerId, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.repeat_for(from, now_ms, &mut out);
        self.flush_records(&mut out);
        out
    }

    pub(super) fn repeat_for(&mut self, from: PeerId, now_ms: u64, out: &mut Vec<Output>) {
        if self.phase.is_terminal() {
            out.extend(self.answer_finished(from, now_ms));
            return;
        }
        let Some(signer) = self.signer_of(&from) else {
            return;
        };
        if signer == self.me || self.phase == Phase::Created {
            return;
        }
        let Some(count) = self.answered.get_mut(signer.as_usize()) else {
            return;
        };
        if *count >= MAX_FINISHED_ANSWERS {
            return;
        }
        *count += 1;
        let me = self.me.as_usize();
        // How the current attempt and its coordinator came about, in case it missed that.
        let mut envs: Vec<SignedEnvelope> = self.attempt_start.clone();
        if self.is_star_coordinator() {
            envs.extend(self.aggnonce_sent.as_deref().cloned());
        } else if self.topology == Topology::Mesh || signer == self.coordinator {
            envs.extend(self.commits[me].as_deref().map(|(_, e)| e.clone()));
            envs.extend(self.nonces[me].as_deref().map(|(_, e)| e.clone()));
            envs.extend(self.psigs[me].as_deref().map(|(_, e)| e.clone()));
        }
        if !envs.is_empty() {
            out.push(Output::Send {
                to: from,
                envelopes: envs,
            });
        }
    }

    /// A bound signer still talks about a session that has finished here (it missed the end,
    /// e.g. while restarting): tells it how it ended, with a signed final signature or the
    /// signed abort, a bounded number of times.
    pub fn answer_finished(&mut self, from: PeerId, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        if !self.phase.is_terminal() {
            return out;
        }
        let Some(signer) = self.signer_of(&from) else {
            return out;
        };
        if signer == self.me {
            return out;
        }
        let Some(count) = self.answered.get_mut(signer.as_usize()) else {
            return out;
        };
        if *count >= MAX_FINISHED_ANSWERS {
            return out;
        }
        *count += 1;
        let Some(env) = self.final_word(now_ms) else {
            return out;
        };
        out.push(Output::Send {
            to: from,
            envelopes: vec![env],
        });
        self.flush_records(&mut out);
        out
    }

    /// Drops what only a running session needs, once this one is finished: every
    /// contribution slot, the envelopes remembered from the rounds, the replay windows of
    /// signers whose broadcast turn never comes, the signing contexts, the aggregates, the key
    /// aggregation, and its copy of the peers the announcement lists; and, once no broadcast
    /// confirmation or claim can change anything (see [`Self::open_to_confirmation`]), the
    /// remaining windows too. A node keeps up to `max_finished_sessions` finished sessions,
    /// and most of these are O(n). What is kept answers a signer that missed the end (the
    /// joins, the bindings, the final word), takes a late confirmation while one is awaited,
    /// and reports [`Self::health`] as it was. The envelopes themselves stay in the store for
    /// the transcript. Idempotent; call it again when a confirmation may have come.
    pub fn shed(&mut self) {
        if !self.phase.is_terminal() {
            return;
        }
        if self.shed.is_none() {
            // After the end only a confirmation or a claim is taken, and only from a signer whose
            // broadcast turn can come (positions 0 ..= max_rank): only theirs keep a replay
            // window, indexed by position from now on (`window_of`). What the rounds' envelopes
            // were remembered for (dropping copies, catching a number signed twice) cannot
            // change a finished session: what comes later is remembered afresh.
            let turns: Option<Vec<ReplayWindow>> = (0..=self.max_rank)
                .map(|p| {
                    let signer = self.order.get(usize::from(p))?;
                    self.replay.get(signer.as_usize()).cloned()
                })
                .collect();
            self.replay = turns.unwrap_or_default();
            self.seen = vec![SeenWindow::default(); self.replay.len()];
            self.shed = Some(ShedCounts {
                commitments: filled(&self.commits),
                nonces: filled(&self.nonces),
                partial_signatures: filled(&self.psigs),
            });
            // A finished session refuses every envelope but a confirmation or a claim before it
            // reads any of these (see `accept`); neither those nor what answers a signer that
            // missed the end (`answer_finished`, the join checks) reads them.
            self.commits = Vec::new();
            self.nonces = Vec::new();
            self.verified_nonces = Vec::new();
            self.psigs = Vec::new();
            self.psig_unchecked = Vec::new();
            self.set_flags = Vec::new();
            self.mesh_aggregate = None;
            self.join_sent = Vec::new();
            self.key_aggs = Vec::new();
            self.contexts = None;
            self.star_aggregate = None;
            self.aggnonce_env = None;
            self.nonce_set_env = None;
            self.aggnonce_sent = None;
            self.pending_claim = None;
            self.attempt_start = Vec::new();
            self.next_attempt = Vec::new();
            self.unbound = VecDeque::new();
            self.my_nonces = None;
            self.nonce_ahead = None;
            self.reveal_signal = None;
            self.aggnonce_unchecked = None;
            self.shed_listed_peers();
        }
        if !self.open_to_confirmation() {
            self.replay = Vec::new();
            self.seen = Vec::new();
        }
    }

    /// A finished session still sends (a confirmation, a claim, its final word) and answers,
    /// so it still needs every signer's peer; but where the announcement lists a signer's peer,
    /// the copy in `peers` (88 bytes a signer) is redundant. Kept as a short list of the bound
    /// peers it does not list when there are few of them (a listed session's member: its own at
    /// most); else `peers` stays as it is.
    fn shed_listed_peers(&mut self) {
        const MAX_OFF_LIST: usize = 8;
        let mut off = Vec::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let Some(peer) = peer else { continue };
            let Ok(index) = SignerIndex::try_from(i) else {
                return;
            };
            let listed = self
                .ann
                .announcement()
                .signers
                .get(i)
                .and_then(|s| s.peer_id.as_ref())
                .is_some_and(|b| peer.is_encoded_as(b.as_bytes()));
            if !listed {
                if off.len() == MAX_OFF_LIST {
                    return;
                }
                off.push((index, *peer));
            }
        }
        self.peers = Vec::new();
        self.peers_off_list = Some(off);
    }

    /// Whether [`Self::shed`] has dropped the running session's state.
    pub fn is_shed(&self) -> bool {
        self.shed.is_some()
    }

    /// Reserves a block of sequence numbers from `from` on: the store learns of it before any
    /// envelope numbered in it leaves.
    pub(super) fn reserve_seq(&mut self, from: u64) {
        self.reserved_seq = from.saturating_add(SEQ_RESERVATION_BLOCK);
        if let Ok(next) = SeqNo::new(self.reserved_seq) {
            self.record(Record::SeqReserved {
                session: self.id,
                next,
            });
        }
    }

    pub(super) fn record(&mut self, record: Record) {
        if self.persist {
            self.records.push(record);
        }
    }

    /// Hands the step's records out first: the runtime commits them before it sends anything.
    pub(super) fn flush_records(&mut self, out: &mut Vec<Output>) {
        if self.records.is_empty() {
            return;
        }
        let me = self.me;
        let (urgent, later): (Vec<Record>, Vec<Record>) = std::mem::take(&mut self.records)
            .into_iter()
            .partition(|r| match r {
                // A restart must know that our join, a nonce (or its commitment) or a restart
                // of ours may have left; the rest of ours (a partial signature, an aggregate
                // nonce) only spares a restart an attempt (ADR 0007).
                Record::Envelope(env) => {
                    env.envelope().signer() == me
                        && matches!(
                            env.envelope().body(),
                            Body::Join { .. }
                                | Body::NonceCommit { .. }
                                | Body::Nonce { .. }
                                | Body::Restart { .. }
                                | Body::FailoverClaim { .. }
                        )
                }
                Record::Outcome { .. } => false,
                _ => true,
            });
        if !later.is_empty() {
            out.insert(0, Output::PersistLater(later));
        }
        if !urgent.is_empty() {
            out.insert(0, Output::Persist(urgent));
        }
    }

    /// From our join on, the session is stored: the announcement, what we hold already, and a
    /// first block of sequence numbers.
    pub(super) fn start_persisting(&mut self) {
        if self.persist {
            return;
        }
        self.persist = true;
        self.record(Record::Session {
            announcement: self.ann.signed().clone(),
            learned_ms: self.started_ms,
        });
        let held: Vec<SignedEnvelope> = self
            .joins
            .iter()
            .flatten()
            .map(|slot| slot.1.clone())
            .chain(self.commits.iter().flatten().map(|slot| slot.1.clone()))
            .chain(self.nonces.iter().flatten().map(|slot| slot.1.clone()))
            .chain(
                self.psigs
                    .iter()
                    .zip(&self.psig_unchecked)
                    .filter(|(_, check)| **check != DeferredCheck::Pending)
                    .filter_map(|(slot, _)| slot.as_deref().map(|s| s.1.clone())),
            )
            .chain(self.aggnonce_env.as_deref().cloned())
            .chain(self.nonce_set_env.as_deref().cloned())
            .collect();
        for env in held {
            self.record(Record::Envelope(env));
        }
        self.reserve_seq(self.next_seq.get());
    }

    /// Moves the session to `attempt`: every contribution of the attempt we leave is dropped
    /// (never mixed into the new one), our secret nonce with it; everyone makes fresh nonces.
    pub(super) fn new_attempt(&mut self, attempt: Attempt, now_ms: u64) {
        self.attempt = attempt;
        self.record(Record::Attempt {
            session: self.id,
            attempt,
        });
        for slot in &mut self.commits {
            *slot = None;
        }
        for slot in &mut self.nonces {
            *slot = None;
        }
        for slot in &mut self.verified_nonces {
            *slot = None;
        }
        for slot in &mut self.psigs {
            *slot = None;
        }
        self.psig_unchecked.fill(DeferredCheck::None);
        self.set_flags.fill(0);
        self.asks = Asks::Idle;
        self.mesh_aggregate = None;
        self.aggnonce_received = false;
        self.aggnonce_env = None;
        self.star_aggregate = None;
        self.nonce_set_env = None;
        self.aggnonce_sent = None;
        self.nonces_announced = false;
        self.psigs_announced = false;
        self.secnonces.clear();
        self.my_nonces = None;
        self.nonce_ahead = None;
        self.reveal_signal = None;
        self.aggnonce_unchecked = None;
        self.contexts = None;
        self.pending_claim = None;
        self.rank_claimed = false;
        self.restored = false;
        self.attempt_start.clear();
        if !matches!(self.phase, Phase::Created) && !self.phase.is_terminal() {
            self.phase = Phase::Joined;
            let a = self.ann.announcement();
            let join_end = a.created_at_ms.saturating_add(a.policy.timeouts.join_ms);
            let deadline = join_end.max(now_ms.saturating_add(self.nonce_timeout_ms));
            self.schedule_join_wait(deadline);
        }
    }
}
