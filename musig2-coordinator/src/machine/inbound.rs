//! Inbound envelopes: cheap checks, authentication against the announcement, replay and
//! clock checks, contradiction (equivocation) evidence, and each body's effect.

use super::*;
use musig2_proto::RequestedSet;

impl SessionMachine {
    /// Handles one envelope delivered by `from`.
    ///
    /// Returns the outputs it causes, or the reason it was rejected (see
    /// [`CoordinatorError::peer_action`] for what to do with the peer).
    pub fn handle_envelope<R: rand::CryptoRng + ?Sized>(
        &mut self,
        from: PeerId,
        envelope: SignedEnvelope,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Output>> {
        let mut out = Vec::new();
        let restarted_author = self.is_join_copy(&envelope)
            && self.signer_of(&from) == Some(envelope.envelope().signer());
        let coordinator_asks = self.is_unheard_coordinator_join(&envelope, from);
        let result = self.accept(from, envelope, now_ms, &mut out);
        if result.is_ok() {
            self.advance(now_ms, rng, &mut out);
        }
        // An unheard coordinator's join is acted on once accepted, or (finished session: it
        // is not accepted any more) with how the session ended, which any signer may learn.
        if restarted_author || (coordinator_asks && (result.is_ok() || self.phase.is_terminal())) {
            self.repeat_for(from, now_ms, &mut out);
        }
        self.flush_records(&mut out);
        match result {
            Ok(()) => Ok(out),
            Err(e) => {
                if e.peer_action() == crate::PeerAction::Penalize {
                    self.rejected += 1;
                }
                if let CoordinatorError::WrongAttempt {
                    signer,
                    expected,
                    found,
                } = &e
                {
                    if found < expected && self.signer_of(&from) == Some(*signer) {
                        self.catch_up(*signer, &mut out);
                    }
                }
                // An abort decided while handling (e.g. equivocation) still has to go out.
                let acted = out
                    .iter()
                    .any(|o| matches!(o, Output::Send { .. } | Output::Event(_)));
                if acted { Ok(out) } else { Err(e) }
            }
        }
    }

    pub(super) fn accept(
        &mut self,
        from: PeerId,
        envelope: SignedEnvelope,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Result<()> {
        let after_end = matches!(
            envelope.envelope().body(),
            Body::BroadcastConfirmed { .. } | Body::FailoverClaim { .. }
        ) && self.open_to_confirmation();
        if self.phase.is_terminal() && !after_end {
            return Err(CoordinatorError::SessionFinished(self.id));
        }
        // Cheap checks first: an exact copy of what we hold costs no verification.
        let (claimed, claimed_seq) = (envelope.envelope().signer(), envelope.envelope().seq());
        let exact_copy = self
            .window_of(claimed)
            .and_then(|w| self.seen.get(w))
            .and_then(|m| m.get(claimed_seq.get()))
            .is_some_and(|s| s.is_copy(&envelope));
        if exact_copy || self.is_stored(&envelope) {
            return Err(CoordinatorError::Duplicate {
                signer: claimed,
                seq: claimed_seq,
            });
        }
        // A shed session no longer remembers the rounds' envelopes (`shed`): a number it has
        // accepted, or one too old, is refused by the replay window before any signature check,
        // and so is anything from a signer whose broadcast turn never comes (no window is kept).
        if self.shed.is_some() {
            let Some(w) = self.window_of(claimed) else {
                return Err(CoordinatorError::Superseded {
                    signer: claimed,
                    kind: "envelope after the end",
                });
            };
            let early = self
                .replay
                .get(w)
                .map(|window| window.check(claimed, claimed_seq));
            if let Some(Err(
                e @ (CoordinatorError::Duplicate { .. } | CoordinatorError::StaleSequence { .. }),
            )) = early
            {
                return Err(e);
            }
        }
        if self.takes_as_reveal_signal(&envelope, from, now_ms) {
            self.reveal_signal = Some(Box::new((from, envelope, now_ms)));
            return Ok(());
        }
        if self.takes_aggregate_unchecked(&envelope, from, now_ms) {
            self.take_aggregate_unchecked(from, envelope, now_ms);
            return Ok(());
        }
        if self.takes_psig_unchecked(&envelope, from, now_ms) {
            self.place_unchecked_psig(envelope);
            self.ask_if_lacking(claimed, RequestedSet::Nonces, now_ms, out);
            return Ok(());
        }
        // A nonce set costs a signature check per signer: only a star member that signed under
        // an aggregate and holds no set of this attempt yet takes one (ADR 0011), so a peer can
        // make it pay n checks at most once per attempt.
        if let Body::NonceSet { attempt, .. } = envelope.envelope().body() {
            let mut wanted = self.is_star_member()
                && claimed == self.coordinator
                && *attempt == self.attempt
                && self.star_aggregate.is_some()
                && self.nonce_set_env.is_none();
            // The set judges the aggregate we signed under: that one's signature first
            // (ADR 0026).
            if wanted {
                self.adopt_unchecked_aggregate(now_ms, out);
                wanted = !self.phase.is_terminal();
            }
            if !wanted {
                return Err(CoordinatorError::Superseded {
                    signer: claimed,
                    kind: "nonce set",
                });
            }
        }
        let verified = envelope
            .verify(&self.ann)
            .map_err(|source| CoordinatorError::InvalidMessage { peer: from, source })?;
        self.accept_verified(from, envelope, verified, now_ms, now_ms, out)
    }

    /// The rest of [`Self::accept`], once `envelope` verified as `verified`: who may deliver
    /// it, contradiction, replay and clock (judged at `received_ms`), then its effect.
    fn accept_verified(
        &mut self,
        from: PeerId,
        envelope: SignedEnvelope,
        verified: VerifiedEnvelope,
        received_ms: u64,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Result<()> {
        let signer = verified.signer();
        if signer == self.me {
            // How the session ended, told back to us after a restart that lost it (a final
            // signature verifies on its own; an abort is our own word).
            if matches!(
                verified.body(),
                Body::FinalSignature { .. } | Body::Abort { .. }
            ) {
                return self.apply(verified, now_ms, out);
            }
            // Our own envelope relayed back to us (not byte-equal: a forgery would not verify).
            return Err(CoordinatorError::Duplicate {
                signer,
                seq: verified.seq(),
            });
        }
        // A signed abort is its author's claim whoever delivers it (e.g. a signer the creator
        // misrouted, speaking from a peer the announcement does not list).
        let any_deliverer = matches!(verified.body(), Body::Abort { .. } | Body::Restart { .. });
        let direct_join = is_join_from(verified.body(), from);
        // Delivered by its author's own peer: bound, found in O(1) (any signer's is O(n)).
        if !direct_join
            && !any_deliverer
            && self.peer_of(signer) != Some(from)
            && self.signer_of(&from).is_none()
        {
            return self.buffer_unbound(from, envelope);
        }
        // A partial signature of ours placed unchecked is checked before another of its author
        // is compared with it: only a signed one can convict (ADR 0022).
        if matches!(verified.body(), Body::PartialSig { attempt, .. } if *attempt == self.attempt) {
            self.check_unchecked_psig(signer);
        }
        // The contradiction check runs on every verified envelope, before the replay and skew
        // filters: its author signed both, so it is evidence whoever relayed it and however late.
        let hash = verified.signing_hash();
        let reused_seq = self
            .window_of(signer)
            .and_then(|w| self.seen.get(w))
            .and_then(|window| window.get(verified.seq().get()))
            .is_some_and(|s| s.hash != hash);
        if reused_seq || self.contradicts(&verified) {
            self.abort(now_ms, AbortReason::Equivocation, vec![signer], out);
            return Err(CoordinatorError::Equivocation {
                signer,
                seq: verified.seq(),
            });
        }
        let relayed = self.peer_of(signer) != Some(from) && !direct_join;
        // No window: a settled finished session (`shed`) refuses every envelope before this.
        let window = self
            .window_of(signer)
            .and_then(|w| self.replay.get_mut(w))
            .ok_or(CoordinatorError::SessionFinished(self.id))?;
        if let Err(e) = window.check(signer, verified.seq()) {
            return Err(match e {
                // Same content, re-signed: only its author can make it, and it cost a
                // verification.
                CoordinatorError::Duplicate { signer, seq } => {
                    CoordinatorError::ResignedDuplicate { signer, seq }
                }
                other => other,
            });
        }
        // Judged by its author's signature: a relayed envelope may be as old as the session, and
        // so may the end of the session told to a signer that missed it.
        // So is a join (a binding, valid for the whole session, sent again when a new
        // coordinator needs it) and a failover claim (its timing has rules of its own).
        let final_word = matches!(
            verified.body(),
            Body::Abort { .. }
                | Body::FinalSignature { .. }
                | Body::Join { .. }
                | Body::FailoverClaim { .. }
        );
        if !relayed && !final_word {
            let skew_ms = verified.timestamp_ms().abs_diff(received_ms);
            if skew_ms > self.max_skew_ms {
                return Err(CoordinatorError::ClockSkew { signer, skew_ms });
            }
        }
        if let Some(window) = self.window_of(signer).and_then(|w| self.replay.get_mut(w)) {
            window.record(verified.seq());
        }
        self.remember_verified(&verified);
        // A request asks for nothing a restart would need.
        let keep = self.persist && !matches!(verified.body(), Body::Request { .. });
        let signed = keep.then(|| verified.signed().clone());
        // What a mesh envelope from its author's own peer shows it holds (ADR 0023).
        let shows = match verified.body() {
            Body::Nonce { attempt, .. } if !relayed && *attempt == self.attempt => {
                Some(RequestedSet::Commitments)
            }
            Body::PartialSig { attempt, .. } if !relayed && *attempt == self.attempt => {
                Some(RequestedSet::Nonces)
            }
            _ => None,
        };
        self.apply(verified, now_ms, out)?;
        if let Some(signed) = signed {
            self.record(Record::Envelope(signed));
        }
        if let Some(set) = shows {
            self.ask_if_lacking(signer, set, now_ms, out);
        }
        Ok(())
    }

    /// Star member (ADR 0021): the coordinator's commitment, sent once every commitment is in,
    /// is its "reveal now" (ADR 0011). Coming from the coordinator's own peer (listed by the
    /// announcement or bound by its join), in the commit round of this attempt, within the
    /// clock allowance and under a number the replay window allows, it is taken as that
    /// signal without its signature check: the transport authenticated the peer, and what a
    /// forgery there gains is our public nonce, which is public (BIP327: a secret nonce is used
    /// once). It is neither stored nor remembered nor evidence until it is checked
    /// ([`Self::adopt_reveal_signal`]).
    fn takes_as_reveal_signal(&self, envelope: &SignedEnvelope, from: PeerId, now_ms: u64) -> bool {
        let e = envelope.envelope();
        let c = self.coordinator;
        self.is_star_member()
            && self.phase == Phase::NonceCommit
            && self.reveal_signal.is_none()
            && e.signer() == c
            && matches!(e.body(), Body::NonceCommit { attempt, .. } if *attempt == self.attempt)
            && self.commits.get(c.as_usize()).is_some_and(Option::is_none)
            && self.came_from_its_author_in_time(e, from, now_ms)
    }

    /// What every envelope acted on before its signature check must be (ADR 0021, 0022, 0026):
    /// delivered by its author's own peer (listed or join-bound: the transport authenticated
    /// it), dated within the clock allowance, under a number its author's replay window allows.
    fn came_from_its_author_in_time(&self, e: &Envelope, from: PeerId, now_ms: u64) -> bool {
        let author = e.signer();
        self.peer_of(author) == Some(from)
            && e.timestamp_ms().abs_diff(now_ms) <= self.max_skew_ms
            && self
                .window_of(author)
                .and_then(|w| self.replay.get(w))
                .is_some_and(|w| w.check(author, e.seq()).is_ok())
    }

    /// The aggregate nonce our partial signature of this attempt names, if we signed.
    fn own_psig_aggregate(&self) -> Option<AggregateRef> {
        let (_, env) = self.psigs.get(self.me.as_usize())?.as_deref()?;
        match env.envelope().body() {
            Body::PartialSig {
                attempt, aggregate, ..
            } if *attempt == self.attempt => *aggregate,
            _ => None,
        }
    }

    /// Star member (ADR 0026): the coordinator's aggregate nonce of this attempt, coming from
    /// the coordinator's own peer (listed or join-bound) while we wait for it, within the clock
    /// allowance, under a number the replay window allows and with everything but its
    /// signature in order, is signed under before its signature is checked. BIP327's
    /// aggregator is untrusted: a partial signature under any aggregate, with a fresh secret
    /// nonce, leaks nothing, and the transport authenticated the peer. The envelope is not
    /// remembered, stored or evidence until it is checked ([`Self::adopt_unchecked_aggregate`]).
    fn takes_aggregate_unchecked(
        &self,
        envelope: &SignedEnvelope,
        from: PeerId,
        now_ms: u64,
    ) -> bool {
        let e = envelope.envelope();
        let c = self.coordinator;
        self.is_star_member()
            && self.phase == Phase::Nonce
            && self.star_aggregate.is_none()
            && self.aggnonce_unchecked.is_none()
            && e.signer() == c
            && matches!(e.body(), Body::AggregateNonce { attempt, .. } if *attempt == self.attempt)
            && self.came_from_its_author_in_time(e, from, now_ms)
            && envelope.check_unsigned(&self.ann).is_ok()
    }

    /// Takes an aggregate nonce passed by [`Self::takes_aggregate_unchecked`]: we sign under it
    /// (`may_sign`), and hold the envelope until it is checked.
    fn take_aggregate_unchecked(&mut self, from: PeerId, envelope: SignedEnvelope, now_ms: u64) {
        let Body::AggregateNonce {
            attempt,
            agg_nonces,
            nonce_set,
        } = envelope.envelope().body()
        else {
            return;
        };
        self.star_aggregate = Some(StarAggregate {
            reference: Body::aggregate_ref(&self.id, *attempt, agg_nonces),
            agg_nonces: agg_nonces.clone(),
            nonce_set: *nonce_set,
        });
        self.aggnonce_received = true;
        self.aggnonce_unchecked = Some(Box::new((from, envelope, now_ms)));
    }

    /// Checks the aggregate nonce we signed under before its signature was checked, now that
    /// it becomes evidence: the nonce set is judged against it, the coordinator sent another,
    /// or the attempt ends without a signature (ADR 0026). One that verifies is accepted as if
    /// it had just come (its clock judged when it came) and stored. One that does not is
    /// dropped and blames nobody: only the coordinator's peer
    /// sent it, which only the coordinator (or a peer the creator listed wrongly) can; what we
    /// signed under is then no one's word, and nothing is judged against it.
    pub(super) fn adopt_unchecked_aggregate(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        if let Some(held) = self.aggnonce_unchecked.take() {
            self.adopt_held(*held, "aggregate nonce", now_ms, out);
        }
    }

    /// A node that aggregates (a star coordinator, every mesh node) places a partial signature
    /// of the current attempt before checking its signature when it comes from its author's
    /// own peer (listed or join-bound), its slot is empty, its timestamp is within the clock
    /// allowance, the replay window allows its number and everything but the signature checks
    /// out (in star, it names our aggregate nonce). A valid final signature proves every
    /// partial signature in it, so in the happy path the check is never needed; it is made as
    /// soon as the envelope becomes evidence (ADR 0022): before any blame for a failed
    /// aggregation, before another partial signature of its author is compared with it,
    /// before it is stored or sent to anyone.
    fn takes_psig_unchecked(&self, envelope: &SignedEnvelope, from: PeerId, now_ms: u64) -> bool {
        let e = envelope.envelope();
        let j = e.signer();
        let ours = self.star_aggregate.as_ref().map(|a| a.reference);
        let Body::PartialSig {
            attempt, aggregate, ..
        } = e.body()
        else {
            return false;
        };
        (self.topology == Topology::Mesh || self.is_star_coordinator())
            && !self.phase.is_terminal()
            && *attempt == self.attempt
            && j != self.me
            && aggregate.is_some()
            && (self.topology == Topology::Mesh || *aggregate == ours)
            && (self.mesh_aggregate.is_none() || *aggregate == self.mesh_aggregate)
            && self.psigs.get(j.as_usize()).is_some_and(Option::is_none)
            && self.psig_unchecked.get(j.as_usize()) == Some(&DeferredCheck::None)
            && self.came_from_its_author_in_time(e, from, now_ms)
            && envelope.check_unsigned(&self.ann).is_ok()
    }

    /// Places a partial signature taken by [`Self::takes_psig_unchecked`]: in its slot, for
    /// aggregation, and nowhere else (not remembered, not stored) until it is checked.
    fn place_unchecked_psig(&mut self, envelope: SignedEnvelope) {
        let j = envelope.envelope().signer().as_usize();
        let Body::PartialSig { partial_sigs, .. } = envelope.envelope().body() else {
            return;
        };
        if let (Some(slot), Some(flag)) = (self.psigs.get_mut(j), self.psig_unchecked.get_mut(j)) {
            *slot = Some(Box::new((partial_sigs.clone(), envelope)));
            *flag = DeferredCheck::Pending;
        }
    }

    /// Checks the partial signature of `signer` placed unchecked, if any (ADR 0022). One that
    /// verifies is kept as if it had been checked on arrival (replay window, remembered,
    /// stored); one that does not is dropped, its slot emptied, and blames nobody: its
    /// author's peer sent it, which only the author (or a peer the creator listed wrongly)
    /// can; its next one is checked on arrival. Returns whether the slot still holds it.
    pub(super) fn check_unchecked_psig(&mut self, signer: SignerIndex) -> bool {
        let j = signer.as_usize();
        if self.psig_unchecked.get(j) != Some(&DeferredCheck::Pending) {
            return true;
        }
        self.psig_unchecked[j] = DeferredCheck::None;
        let Some(envelope) = self
            .psigs
            .get(j)
            .and_then(|s| s.as_deref())
            .map(|s| s.1.clone())
        else {
            return true;
        };
        match envelope.verify(&self.ann) {
            Ok(verified) => {
                if let Some(window) = self.window_of(signer).and_then(|w| self.replay.get_mut(w)) {
                    window.record(verified.seq());
                }
                self.remember_verified(&verified);
                if self.persist {
                    self.record(Record::Envelope(envelope));
                }
                true
            }
            Err(e) => {
                tracing::debug!(session = %self.id, %signer, error = %e, "dropped a partial signature taken unchecked");
                self.psigs[j] = None;
                self.psig_unchecked[j] = DeferredCheck::Failed;
                self.rejected += 1;
                false
            }
        }
    }

    /// Checks every partial signature placed unchecked (ADR 0022); returns whether all
    /// verified (otherwise the slots of those that did not are empty again).
    pub(super) fn check_unchecked_psigs(&mut self) -> bool {
        let mut all = true;
        for signer in self.all_signers() {
            all &= self.check_unchecked_psig(signer);
        }
        all
    }

    /// Checks the coordinator's commitment taken as the reveal signal, now that it is wanted as
    /// evidence (a revealed nonce set holds the coordinator's nonce): one that verifies is
    /// accepted as if it had just come (its clock judged when it came); one that does not is
    /// dropped and blames nobody (the creator's listing, not the coordinator, named its peer).
    pub(super) fn adopt_reveal_signal(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        if let Some(held) = self.reveal_signal.take() {
            self.adopt_held(*held, "reveal signal", now_ms, out);
        }
    }

    /// Checks an envelope taken from its author's peer before its signature was checked, and
    /// accepts it if it verifies; otherwise drops it, blaming nobody.
    fn adopt_held(
        &mut self,
        (from, envelope, received_ms): (PeerId, SignedEnvelope, u64),
        what: &'static str,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let result = envelope
            .verify(&self.ann)
            .map_err(|source| CoordinatorError::InvalidMessage { peer: from, source })
            .and_then(|verified| {
                self.accept_verified(from, envelope, verified, received_ms, now_ms, out)
            });
        if let Err(e) = result {
            tracing::debug!(session = %self.id, %from, error = %e, what, "dropped an envelope taken unchecked");
        }
    }

    /// Handles a session's unsigned final signatures delivered by `from` (ADR 0015): each must
    /// verify under its message's key, which only the signers together can bring about, so
    /// whoever delivers them, they end the session. Only a signer's peer may make us check
    /// them; a frame that does not verify is its deliverer's fault.
    pub fn handle_final_signatures(
        &mut self,
        from: PeerId,
        finals: &FinalSignatures,
        now_ms: u64,
    ) -> Result<Vec<Output>> {
        if self.phase.is_terminal() {
            return Err(CoordinatorError::SessionFinished(self.id));
        }
        let Some(deliverer) = self.signer_of(&from) else {
            return Err(CoordinatorError::UnboundPeer {
                peer: from,
                session: self.id,
            });
        };
        let sigs = self.verified_finals(finals.signatures()).ok_or(
            CoordinatorError::UnexpectedMessage {
                signer: deliverer,
                kind: "final signatures that do not verify",
            },
        )?;
        let mut out = Vec::new();
        self.finish(sigs, now_ms, &mut out);
        // Our own signed record of the end stands where the coordinator's envelope used to:
        // in the store (a restart reads the broadcast turn's claims after it), in transcripts,
        // and for telling a signer that missed the end.
        let _ = self.final_word(now_ms);
        self.flush_records(&mut out);
        Ok(out)
    }

    /// The final signatures, if there is one per message and each verifies under its key.
    fn verified_finals(&self, signatures: &[Signature64]) -> Option<Vec<schnorr::Signature>> {
        if signatures.len() != self.key_aggs.len() {
            return None;
        }
        let sigs: Vec<schnorr::Signature> = signatures
            .iter()
            .map(|s| schnorr::Signature::from_byte_array(s.to_bytes()))
            .collect();
        let all_verify = sigs
            .iter()
            .zip(&self.ann.announcement().messages)
            .zip(&self.key_aggs)
            .all(|((sig, m), key_agg)| {
                musig2_core::verify_signature(sig, &m.message, &key_agg.x_only_key()).is_ok()
            });
        all_verify.then_some(sigs)
    }

    /// Records a verified (or our own) envelope under its signer and sequence number, forgetting
    /// those that fell out of the replay window.
    /// Remembers a verified envelope, to drop exact copies of it unverified.
    pub(super) fn remember_verified(&mut self, verified: &VerifiedEnvelope) {
        let auth = verified.signed().auth();
        let (signature, direct) = (Some(*auth.signature()), auth.is_direct());
        self.remember(
            verified.signer(),
            verified.seq(),
            verified.signing_hash(),
            signature,
            direct,
        );
    }

    pub(super) fn remember(
        &mut self,
        signer: SignerIndex,
        seq: SeqNo,
        hash: [u8; 32],
        signature: Option<[u8; 64]>,
        direct: bool,
    ) {
        let Some(window) = self.window_of(signer).and_then(|w| self.seen.get_mut(w)) else {
            return;
        };
        let seen = SeenEnvelope {
            hash,
            signature,
            direct,
        };
        window.insert(seq.get(), seen, self.replay_window);
    }

    pub(super) fn buffer_unbound(&mut self, from: PeerId, envelope: SignedEnvelope) -> Result<()> {
        let from_peer = self.unbound.iter().filter(|(p, _)| *p == from).count();
        let total_cap = self.max_buffered_per_peer.saturating_mul(self.n);
        if from_peer >= self.max_buffered_per_peer || self.unbound.len() >= total_cap {
            return Err(CoordinatorError::UnboundPeer {
                peer: from,
                session: self.id,
            });
        }
        self.unbound.push_back((from, envelope));
        Ok(())
    }

    pub(super) fn apply(
        &mut self,
        env: VerifiedEnvelope,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Result<()> {
        let signer = env.signer();
        let j = signer.as_usize();
        let check_attempt = |a: Attempt| {
            if a == self.attempt {
                Ok(())
            } else {
                Err(CoordinatorError::WrongAttempt {
                    signer,
                    expected: self.attempt.get(),
                    found: a.get(),
                })
            }
        };
        // A contribution of the next attempt can overtake the restart that starts it (they
        // come from different signers): it waits, bounded, until the restart arrives.
        if body_attempt(env.body()).is_some_and(|a| a.get() == self.attempt.get().saturating_add(1))
        {
            if self.next_attempt.len() >= 4 * self.n {
                return Err(CoordinatorError::WrongAttempt {
                    signer,
                    expected: self.attempt.get(),
                    found: self.attempt.get().saturating_add(1),
                });
            }
            self.next_attempt.push(env);
            return Ok(());
        }
        match env.body().clone() {
            Body::Join { peer_id } => {
                let peer = PeerId::from_bytes(peer_id.as_bytes()).map_err(|_| {
                    CoordinatorError::UnexpectedMessage {
                        signer,
                        kind: "join with an invalid peer id",
                    }
                })?;
                if self.peers[j].is_some_and(|p| p != peer) {
                    // Re-binding an index to another peer is refused (part of recovery later).
                    return Err(CoordinatorError::UnexpectedMessage {
                        signer,
                        kind: "join from a second peer id",
                    });
                }
                if self.joins[j].is_some() {
                    // The stored join itself is dropped before verification; this is a new one.
                    return Err(CoordinatorError::RedundantMessage {
                        signer,
                        kind: "join",
                    });
                }
                self.peers[j] = Some(peer);
                self.joins[j] = Some(Box::new((peer, env.signed().clone())));
                // A signer whose peer we just learned could not have been sent our join yet.
                if !self.join_sent[j] && self.sends_own_join_to(signer, now_ms) {
                    if let Some(own) = self.own_join().cloned() {
                        self.join_sent[j] = true;
                        self.send_to(out, [signer], vec![own]);
                    }
                }
                out.push(Output::Event(Event::ParticipantJoined {
                    session: self.id,
                    signer,
                }));
                // A signer joining after a restart or failover starts in the first attempt:
                // show it how the current one came about.
                self.catch_up(signer, out);
                if self.me == self.ann.announcement().creator && !self.listed[j] {
                    let targets: Vec<SignerIndex> = self
                        .all_signers()
                        .filter(|&k| k != signer && self.needs_join_of(k, signer))
                        .filter(|&k| self.joins[k.as_usize()].is_some())
                        .collect();
                    self.send_to(out, targets, vec![env.signed().clone()]);
                    self.relay_unlisted_joins_to(out, signer);
                }
                self.replay_unbound(peer, now_ms, out);
            }
            Body::NonceCommit {
                attempt,
                commitment,
            } => {
                check_attempt(attempt)?;
                match place(&mut self.commits[j], commitment, env.signed().clone()) {
                    Slot::Conflict => {
                        self.abort(now_ms, AbortReason::Equivocation, vec![signer], out)
                    }
                    Slot::New => self.check_commitment(signer, now_ms, out),
                    Slot::Same => {
                        return Err(CoordinatorError::RedundantMessage {
                            signer,
                            kind: "nonce commitment",
                        });
                    }
                }
            }
            Body::Nonce {
                attempt,
                pub_nonces,
            } => {
                check_attempt(attempt)?;
                let signed = env.signed().clone();
                if self.is_star_coordinator() {
                    self.verified_nonces[j].get_or_insert_with(|| Box::new(env));
                }
                if let Slot::Same = self.place_nonce(signer, pub_nonces, signed, now_ms, out) {
                    return Err(CoordinatorError::RedundantMessage {
                        signer,
                        kind: "nonce",
                    });
                }
            }
            Body::AggregateNonce {
                attempt,
                agg_nonces,
                nonce_set,
            } => {
                check_attempt(attempt)?;
                if !self.is_star_member() || signer != self.coordinator {
                    return Err(CoordinatorError::UnexpectedMessage {
                        signer,
                        kind: "aggregate-nonce",
                    });
                }
                // At most one signature check, whatever n is, and from the coordinator's own
                // peer only once it is evidence (ADR 0026): we sign under it without seeing the
                // others' nonces. BIP327's aggregator is untrusted; a wrong aggregate only makes
                // the final signature fail, and then the nonce set it committed to shows who
                // lied (ADR 0011).
                let aggregate = StarAggregate {
                    reference: Body::aggregate_ref(&self.id, attempt, &agg_nonces),
                    agg_nonces,
                    nonce_set,
                };
                // The one we signed under, if it was not checked yet, is checked before another
                // is compared with it (ADR 0026).
                self.adopt_unchecked_aggregate(now_ms, out);
                if self.phase.is_terminal() {
                    return Ok(());
                }
                let attested = self.aggnonce_env.is_some();
                if let Some(held) = &self.star_aggregate {
                    if *held == aggregate && attested {
                        return Err(CoordinatorError::RedundantMessage {
                            signer,
                            kind: "aggregate nonce",
                        });
                    }
                    if *held == aggregate {
                        // What we signed under, now checked (ADR 0026).
                        self.aggnonce_env = Some(Box::new(env.signed().clone()));
                        return Ok(());
                    }
                    if !attested {
                        // We signed under an aggregate whose envelope failed its check: it is
                        // not the coordinator's word, so nothing contradicts this one. We
                        // cannot sign twice in one attempt, and nobody is blamed.
                        return Err(CoordinatorError::Superseded {
                            signer,
                            kind: "aggregate nonce after signing under an unchecked one",
                        });
                    }
                    // Two aggregates of one attempt, both signed by the coordinator (an honest
                    // one computes it once and, after a restart, sends the stored one again):
                    // equivocation, and nobody signs twice.
                    self.abort(now_ms, AbortReason::Equivocation, vec![signer], out);
                    return Ok(());
                }
                // Restored with our partial signature but not the aggregate it is under (taken
                // unchecked, so not stored; ADR 0026): the one it names, sent again, is taken
                // as evidence; any other is not what we signed under, and proves nothing.
                if let Some(ours) = self.own_psig_aggregate() {
                    if ours != aggregate.reference {
                        return Err(CoordinatorError::Superseded {
                            signer,
                            kind: "aggregate nonce other than the one we signed under",
                        });
                    }
                    self.star_aggregate = Some(aggregate);
                    self.contexts = self.signing_contexts();
                    self.aggnonce_received = true;
                    self.aggnonce_env = Some(Box::new(env.signed().clone()));
                    return Ok(());
                }
                self.star_aggregate = Some(aggregate);
                self.aggnonce_received = true;
                self.aggnonce_env = Some(Box::new(env.signed().clone()));
            }
            Body::NonceSet { attempt, nonces } => {
                check_attempt(attempt)?;
                // `accept` let it through only for a star member holding an aggregate of this
                // attempt and no set yet, from its coordinator.
                let Some(aggregate) = self.star_aggregate.clone() else {
                    return Err(CoordinatorError::UnexpectedMessage {
                        signer,
                        kind: "nonce set",
                    });
                };
                self.nonce_set_env = Some(Box::new(env.signed().clone()));
                if self.aggnonce_env.is_none() {
                    // The coordinator says the aggregation failed, and the aggregate we signed
                    // under came from its peer with a signature that does not verify (ADR 0026):
                    // nothing can be judged against what it did not sign. The session is over
                    // for us, and no one is blamed (a wrong listing could have put someone else
                    // on that peer).
                    self.abort(now_ms, AbortReason::InvalidAggregateNonce, Vec::new(), out);
                    return Ok(());
                }
                // The proto layer checked every relayed nonce's signature; each is its author's
                // signed statement. The coordinator signed both the aggregate (with the digest)
                // and this set: any disagreement between them is its own, provably.
                let k = self.key_aggs.len();
                let digest = Body::nonce_set_digest(&self.id, attempt, &nonces);
                let own_ok = nonces
                    .get(self.me.as_usize())
                    .is_some_and(|sn| Some(&sn.pub_nonces) == self.my_nonces.as_ref());
                let sum_ok =
                    Body::sum_nonce_set(&nonces, k).as_ref() == Some(&aggregate.agg_nonces);
                if digest != aggregate.nonce_set || !own_ok || !sum_ok {
                    self.abort(
                        now_ms,
                        AbortReason::InvalidAggregateNonce,
                        vec![signer],
                        out,
                    );
                    return Ok(());
                }
                // The coordinator's nonce is judged against its commitment.
                self.adopt_reveal_signal(now_ms, out);
                if self.phase.is_terminal() {
                    return Ok(());
                }
                for sn in &nonces {
                    if sn.signer == self.me {
                        continue;
                    }
                    let signed = sn.to_signed_envelope(self.id);
                    self.place_nonce(sn.signer, sn.pub_nonces.clone(), signed, now_ms, out);
                    if self.phase.is_terminal() {
                        return Ok(());
                    }
                }
            }
            Body::PartialSig {
                attempt,
                partial_sigs,
                aggregate,
            } => {
                check_attempt(attempt)?;
                // In star, a partial signature is judged only under the aggregate nonce it
                // names, and only if that is ours: one made under another aggregate (a lying
                // coordinator's, or a lie of its author) is never placed, so never blamed.
                if self.topology == Topology::Star
                    && aggregate != self.star_aggregate.as_ref().map(|a| a.reference)
                {
                    return Err(CoordinatorError::UnexpectedMessage {
                        signer,
                        kind: "partial signature under another aggregate nonce",
                    });
                }
                // A mesh one must name its aggregate (ADR 0023; the proto layer still verifies
                // one without, as sent before, for old transcripts).
                if self.topology == Topology::Mesh && aggregate.is_none() {
                    return Err(CoordinatorError::UnexpectedMessage {
                        signer,
                        kind: "mesh partial signature naming no aggregate nonce",
                    });
                }
                // In mesh the same holds once our aggregate is fixed (one that comes before is
                // placed, and judged when we sign: `drop_psigs_under_other_aggregates`). Its
                // author was shown other nonces than we were: it gets ours, and we get its
                // when ours reaches it, so both sides hold the two nonces someone signed
                // (ADR 0023). Not an offence of its author.
                if let Some(ours) = self.mesh_aggregate {
                    if aggregate != Some(ours) {
                        self.send_set(signer, RequestedSet::Nonces, out);
                        return Err(CoordinatorError::Superseded {
                            signer,
                            kind: "partial signature under another aggregate nonce",
                        });
                    }
                }
                match place(&mut self.psigs[j], partial_sigs, env.signed().clone()) {
                    Slot::Conflict => {
                        self.abort(now_ms, AbortReason::Equivocation, vec![signer], out)
                    }
                    Slot::Same => {
                        return Err(CoordinatorError::RedundantMessage {
                            signer,
                            kind: "partial signature",
                        });
                    }
                    Slot::New => {}
                }
            }
            Body::FinalSignature { signatures, .. } => {
                // A lying coordinator can stall the session, never end it with a bad result.
                let sigs = self.verified_finals(&signatures).ok_or(
                    CoordinatorError::UnexpectedMessage {
                        signer,
                        kind: "final signature that does not verify",
                    },
                )?;
                self.final_env = Some(Box::new(env.signed().clone()));
                self.finish(sigs, now_ms, out);
            }
            Body::Abort { reason, blamed } => {
                // Once a claim is about, an honest timeout names nobody (ADR 0008): one that
                // names someone comes from a signer that has not seen the claim. It is behind,
                // not a verdict on the attempt we are in: show it how that attempt came about.
                let stale_timeout = matches!(
                    reason,
                    AbortReason::Timeout | AbortReason::FailoverExhausted
                ) && blamed.is_some()
                    && self.claim_seen
                    && !self.attempt_start.is_empty();
                if stale_timeout {
                    self.catch_up(signer, out);
                    return Err(CoordinatorError::Superseded {
                        signer,
                        kind: "timeout abort of an earlier attempt",
                    });
                }
                // As for our own abort: what we signed under is evidence now (ADR 0026).
                self.adopt_unchecked_aggregate(now_ms, out);
                if self.phase.is_terminal() {
                    return Ok(());
                }
                self.phase = Phase::Aborted;
                self.phase_deadline_ms = None;
                self.secnonces.clear();
                let blamed: Vec<SignerIndex> = blamed.into_iter().collect();
                let origin = if signer == self.me {
                    AbortOrigin::Local
                } else {
                    AbortOrigin::Remote(signer)
                };
                self.aborted = Some((reason, blamed.clone(), origin));
                self.final_env = Some(Box::new(env.signed().clone()));
                self.record(Record::Outcome {
                    session: self.id,
                    outcome: Outcome::Aborted {
                        reason,
                        blamed: blamed.clone(),
                        origin,
                    },
                    at_ms: now_ms,
                });
                out.push(Output::Event(Event::Aborted {
                    session: self.id,
                    reason,
                    blamed,
                    origin,
                }));
            }
            Body::Restart { attempt } => {
                if attempt <= self.attempt {
                    // A copy, or a restart we already moved past: nothing to do.
                    return Err(CoordinatorError::WrongAttempt {
                        signer,
                        expected: self.attempt.get().saturating_add(1),
                        found: attempt.get(),
                    });
                }
                if attempt.get() >= self.max_attempts {
                    // Its author lost a nonce it had sent, and no attempt is left: the session
                    // ends, naming it for what happened (not equivocation: it never signed
                    // twice).
                    self.abort(now_ms, AbortReason::Restarted, vec![signer], out);
                    return Ok(());
                }
                tracing::info!(session = %self.id, %signer, attempt = attempt.get(), "a signer restarted: new attempt");
                // Everyone must move together, or a signer told of the restart would wait for
                // one that was not, and blame it: pass it on (copies are dropped unverified).
                let others: Vec<SignerIndex> = self.others().filter(|&k| k != signer).collect();
                self.send_to(out, others, vec![env.signed().clone()]);
                out.push(Output::Event(Event::AttemptStarted {
                    session: self.id,
                    attempt,
                    signer,
                }));
                self.earliest_claim_ms = env
                    .timestamp_ms()
                    .saturating_sub(self.max_skew_ms.saturating_mul(2))
                    .saturating_add(self.nonce_timeout_ms);
                self.adopt_unchecked_aggregate(now_ms, out);
                if self.phase.is_terminal() {
                    return Ok(());
                }
                self.new_attempt(attempt, now_ms);
                self.attempt_start.push(env.signed().clone());
                self.apply_waiting(now_ms, out);
            }
            Body::FailoverClaim { attempt, rank } => {
                return self.on_claim(env, attempt, rank, now_ms, out);
            }
            Body::BroadcastConfirmed { attempt, receipt } => {
                return self.on_broadcast_confirmed(signer, attempt, receipt, out);
            }
            Body::Request { attempt, set } => {
                check_attempt(attempt)?;
                if self.topology != Topology::Mesh {
                    return Err(CoordinatorError::UnexpectedMessage {
                        signer,
                        kind: "request",
                    });
                }
                // Once per signer, attempt and kind, whoever delivered it: to its author.
                self.send_set(signer, set, out);
            }
        }
        Ok(())
    }

    pub(super) fn place_nonce(
        &mut self,
        signer: SignerIndex,
        nonce: Vec<PubNonceBytes>,
        env: SignedEnvelope,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Slot {
        let slot = place(&mut self.nonces[signer.as_usize()], nonce, env);
        match slot {
            Slot::Conflict => self.abort(now_ms, AbortReason::Equivocation, vec![signer], out),
            Slot::New => self.check_commitment(signer, now_ms, out),
            Slot::Same => {}
        }
        slot
    }

    /// Whether exactly this envelope is already stored as its signer's contribution (a
    /// duplicate or relayed copy: no need to verify it again).
    pub(super) fn is_stored(&self, envelope: &SignedEnvelope) -> bool {
        let j = envelope.envelope().signer().as_usize();
        let stored = match envelope.envelope().body() {
            Body::NonceCommit { .. } => self.commits.get(j).and_then(|s| s.as_ref().map(|x| &x.1)),
            Body::Nonce { .. } => self.nonces.get(j).and_then(|s| s.as_ref().map(|x| &x.1)),
            Body::PartialSig { .. } => self.psigs.get(j).and_then(|s| s.as_ref().map(|x| &x.1)),
            Body::Join { .. } => self.joins.get(j).and_then(|s| s.as_ref().map(|x| &x.1)),
            Body::AggregateNonce { .. } => self
                .aggnonce_env
                .as_deref()
                .or(self.aggnonce_unchecked.as_deref().map(|held| &held.1)),
            Body::NonceSet { .. } => self.nonce_set_env.as_deref(),
            _ => None,
        };
        stored == Some(envelope)
    }

    /// Whether a verified contribution contradicts what its signer sent before.
    pub(super) fn contradicts(&self, env: &VerifiedEnvelope) -> bool {
        let j = env.signer().as_usize();
        match env.body() {
            Body::NonceCommit {
                attempt,
                commitment,
            } => {
                *attempt == self.attempt
                    && self.commits[j]
                        .as_deref()
                        .is_some_and(|(c, _)| c != commitment)
            }
            Body::Nonce {
                attempt,
                pub_nonces,
            } => {
                *attempt == self.attempt
                    && self.nonces[j]
                        .as_deref()
                        .is_some_and(|(n, _)| n != pub_nonces)
            }
            Body::PartialSig {
                attempt,
                partial_sigs,
                ..
            } => {
                *attempt == self.attempt
                    && self.psigs[j]
                        .as_deref()
                        .is_some_and(|(p, _)| p != partial_sigs)
            }
            _ => false,
        }
    }

    /// With both a commitment and a reveal from `signer`, checks one against the other.
    pub(super) fn check_commitment(
        &mut self,
        signer: SignerIndex,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let j = signer.as_usize();
        if let (Some((commitment, _)), Some((nonce, _))) =
            (self.commits[j].as_deref(), self.nonces[j].as_deref())
        {
            if commitment
                .check_reveal(&self.id, signer, self.attempt, nonce)
                .is_err()
            {
                self.abort(now_ms, AbortReason::CommitmentMismatch, vec![signer], out);
            }
        }
    }

    pub(super) fn replay_unbound(&mut self, peer: PeerId, now_ms: u64, out: &mut Vec<Output>) {
        let (ready, rest): (VecDeque<_>, VecDeque<_>) =
            self.unbound.drain(..).partition(|(p, _)| *p == peer);
        self.unbound = rest;
        for (from, env) in ready {
            if self.phase.is_terminal() {
                break;
            }
            if let Err(e) = self.accept(from, env, now_ms, out) {
                tracing::debug!(session = %self.id, %from, error = %e, "dropped buffered envelope");
            }
        }
    }
}
