//! The phases: nonce generation, commitments and reveals, the star coordinator's aggregate
//! nonce, signing, aggregation with blame, and the end of a session.

use super::*;

impl SessionMachine {
    /// Moves through as many phases as the collected contributions allow.
    pub(super) fn advance<R: rand::CryptoRng + ?Sized>(
        &mut self,
        now_ms: u64,
        rng: &mut R,
        out: &mut Vec<Output>,
    ) {
        loop {
            let before = self.phase;
            match self.phase {
                Phase::Joined if self.holdouts().is_empty() => self.start_round1(now_ms, rng, out),
                Phase::NonceCommit if self.may_reveal() => self.reveal(now_ms, out),
                Phase::Nonce if self.may_sign() => self.sign_round2(now_ms, out),
                // A star member holds every nonce only once the coordinator revealed the set.
                Phase::PartialSig if all_filled(&self.psigs) && all_filled(&self.nonces) => {
                    self.aggregate(now_ms, out)
                }
                _ => {}
            }
            if self.phase == before {
                break;
            }
        }
    }

    pub(super) fn is_star_member(&self) -> bool {
        self.topology == Topology::Star && self.me != self.coordinator
    }

    /// Round 0 is over: every commitment is in (mesh, star coordinator), or the star
    /// coordinator's own commitment came, which it sends once it holds all (ADR 0011).
    fn may_reveal(&self) -> bool {
        if self.is_star_member() {
            self.commits[self.me.as_usize()].is_some()
                && (self.commits[self.coordinator.as_usize()].is_some()
                    || self.reveal_signal.is_some())
        } else {
            all_filled(&self.commits)
        }
    }

    /// Round 1 is over: every nonce is in (mesh, star coordinator), or the star coordinator's
    /// aggregate came (a member never sees the others' nonces unless the session fails).
    fn may_sign(&self) -> bool {
        if self.is_star_member() {
            self.nonces[self.me.as_usize()].is_some() && self.star_aggregate.is_some()
        } else {
            all_filled(&self.nonces)
        }
    }

    pub(super) fn start_round1<R: rand::CryptoRng + ?Sized>(
        &mut self,
        now_ms: u64,
        rng: &mut R,
        out: &mut Vec<Output>,
    ) {
        let sk = self.keypair.secret_key();
        let k = self.key_aggs.len();
        let mut secnonces = Vec::with_capacity(k);
        let mut nonce_bytes = Vec::with_capacity(k);
        for (index, (message, key_agg)) in self
            .ann
            .announcement()
            .messages
            .iter()
            .zip(&self.key_aggs)
            .enumerate()
        {
            // Session, attempt and message index: no two nonces of ours share an input, even
            // for two equal messages (the RNG alone already makes them distinct).
            let mut extra = Vec::with_capacity(38);
            extra.extend_from_slice(self.id.as_bytes());
            extra.extend_from_slice(&self.attempt.get().to_be_bytes());
            extra.extend_from_slice(&u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes());
            let generated = NonceGen::new(self.keypair.public_key())
                .secret_key(&sk)
                .key_agg(key_agg)
                .message(&message.message)
                .extra_input(&extra)
                .generate(rng);
            let (secnonce, pubnonce) = match generated {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::error!(session = %self.id, error = %e, "nonce generation failed");
                    self.abort(now_ms, AbortReason::Internal, Vec::new(), out);
                    return;
                }
            };
            secnonces.push(secnonce);
            nonce_bytes.push(PubNonceBytes::from(&pubnonce));
        }
        self.secnonces = secnonces;
        // With announced peers round 1 can start before everyone joined; a signer's first
        // contribution is then its join, and it has the whole join window for it: the phase
        // counts as starting no earlier than `nonce_timeout` before the window ends.
        let a = self.ann.announcement();
        let join_end = a.created_at_ms.saturating_add(a.policy.timeouts.join_ms);
        let phase_start = now_ms.max(join_end.saturating_sub(self.nonce_timeout_ms));
        if self.commit_round {
            let commitment =
                NonceCommitment::compute(&self.id, self.me, self.attempt, &nonce_bytes);
            self.my_nonces = Some(nonce_bytes);
            let env = self.sign(
                now_ms,
                Body::NonceCommit {
                    attempt: self.attempt,
                    commitment,
                },
            );
            self.commits[self.me.as_usize()] = Some(Box::new((commitment, env.clone())));
            let targets = self.round_targets();
            self.send_to(out, targets, vec![env]);
            self.make_nonce_ahead(now_ms, out);
            self.enter(Phase::NonceCommit, phase_start, self.nonce_timeout_ms);
        } else {
            self.my_nonces = Some(nonce_bytes);
            self.publish_nonce(now_ms, out);
            self.enter(Phase::Nonce, phase_start, self.nonce_timeout_ms);
        }
    }

    /// All commitments are in: the star coordinator sends its own (one envelope, ADR 0011:
    /// "reveal now", and its nonce is fixed before any reveal); everyone reveals.
    pub(super) fn reveal(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        if self.is_star_coordinator() {
            if let Some((_, own)) = self.commits[self.me.as_usize()].as_deref().cloned() {
                let others: Vec<SignerIndex> = self.others().collect();
                self.send_to(out, others, vec![own]);
            }
        }
        self.publish_nonce(now_ms, out);
        self.enter(Phase::Nonce, now_ms, self.nonce_timeout_ms);
    }

    /// With commitments, our nonce envelope is made in the step that makes our commitment, so
    /// both share one batch signature: a receiver that verified it checks the reveal with
    /// hashes alone (ADR 0020). Held back until the reveal, it reveals nothing before then.
    fn make_nonce_ahead(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        if !self.batches_own_envelopes() {
            return;
        }
        let Some(nonces) = self.my_nonces.clone() else {
            return;
        };
        let env = self.sign_unrecorded(
            now_ms,
            Body::Nonce {
                attempt: self.attempt,
                pub_nonces: nonces,
            },
        );
        out.push(Output::Seal(vec![env.clone()]));
        self.nonce_ahead = Some(env);
    }

    /// Our nonce envelope made ahead, if it is of this attempt and young enough that its
    /// timestamp costs the receivers' clock-skew allowance no more than a network delay would.
    fn take_nonce_ahead(
        &mut self,
        nonces: &[PubNonceBytes],
        now_ms: u64,
    ) -> Option<SignedEnvelope> {
        let env = self.nonce_ahead.take()?;
        let age_ms = now_ms.saturating_sub(env.envelope().timestamp_ms());
        let same = matches!(
            env.envelope().body(),
            Body::Nonce { attempt, pub_nonces } if *attempt == self.attempt && pub_nonces == nonces
        );
        (same && age_ms <= NONCE_AHEAD_MAX_AGE_MS).then_some(env)
    }

    pub(super) fn publish_nonce(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let Some(nonces) = self.my_nonces.clone() else {
            return;
        };
        let env = match self.take_nonce_ahead(&nonces, now_ms) {
            Some(env) => {
                self.record(Record::Envelope(env.clone()));
                env
            }
            None => self.sign(
                now_ms,
                Body::Nonce {
                    attempt: self.attempt,
                    pub_nonces: nonces.clone(),
                },
            ),
        };
        if self.is_star_coordinator() {
            // The aggregate-nonce message carries our own signed nonce too (ours: its signature
            // is ours to make, not to check).
            self.verified_nonces[self.me.as_usize()] =
                env.verified_own(&self.ann).ok().map(Box::new);
        }
        self.nonces[self.me.as_usize()] = Some(Box::new((nonces, env.clone())));
        // A mesh reveal travels alone: a signer that still lacks a commitment asks us for ours
        // (ADR 0023); two commitments from one signer show as two nonces under two aggregates.
        if !self.is_star_coordinator() {
            let targets = self.round_targets();
            self.send_to(out, targets, vec![env]);
        }
    }

    /// All nonces are in: fix the session contexts, sign every message, and send the partial
    /// signatures.
    pub(super) fn sign_round2(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        if self.is_star_coordinator() {
            let Some((body, _)) = self.star_bodies() else {
                self.abort(now_ms, AbortReason::Internal, Vec::new(), out);
                return;
            };
            if let Body::AggregateNonce {
                agg_nonces,
                nonce_set,
                ..
            } = &body
            {
                self.star_aggregate = Some(StarAggregate {
                    reference: Body::aggregate_ref(&self.id, self.attempt, agg_nonces),
                    agg_nonces: agg_nonces.clone(),
                    nonce_set: *nonce_set,
                });
            }
            let env = self.sign(now_ms, body);
            let others: Vec<SignerIndex> = self.others().collect();
            self.send_to(out, others, vec![env.clone()]);
            self.aggnonce_sent = Some(Box::new(env));
        }
        let contexts = if self.topology == Topology::Mesh {
            self.mesh_contexts().map(|(contexts, reference)| {
                self.mesh_aggregate = Some(reference);
                contexts
            })
        } else {
            self.signing_contexts()
        };
        let Some(contexts) = contexts else {
            self.abort(now_ms, AbortReason::InvalidNonce, Vec::new(), out);
            return;
        };
        if !self.nonces_announced {
            self.nonces_announced = true;
            out.push(Output::Event(Event::NoncesComplete { session: self.id }));
        }
        // Taken out whole: each secret nonce is consumed by its signature, and none survives a
        // failure half-way.
        let secnonces = std::mem::take(&mut self.secnonces);
        if secnonces.len() != contexts.len() {
            self.abort(now_ms, AbortReason::Internal, Vec::new(), out);
            return;
        }
        let mut psig_bytes = Vec::with_capacity(contexts.len());
        for (context, secnonce) in contexts.iter().zip(secnonces) {
            let signed = context
                .sign(secnonce, &self.keypair)
                .map_err(|e| e.to_string())
                .and_then(|p| PartialSigBytes::from_bytes(p.to_bytes()).map_err(|e| e.to_string()));
            match signed {
                Ok(bytes) => psig_bytes.push(bytes),
                Err(error) => {
                    tracing::error!(session = %self.id, %error, "signing failed");
                    self.abort(now_ms, AbortReason::Internal, Vec::new(), out);
                    return;
                }
            }
        }
        self.contexts = Some(contexts);
        let env = self.sign(
            now_ms,
            Body::PartialSig {
                attempt: self.attempt,
                partial_sigs: psig_bytes.clone(),
                aggregate: self
                    .star_aggregate
                    .as_ref()
                    .map(|a| a.reference)
                    .or(self.mesh_aggregate),
            },
        );
        self.psigs[self.me.as_usize()] = Some(Box::new((psig_bytes, env.clone())));
        self.send_partial_sig(env, out);
        self.drop_psigs_under_other_aggregates(out);
        self.enter(Phase::PartialSig, now_ms, self.partial_sig_timeout_ms);
    }

    /// The star coordinator's AggregateNonce and NonceSet bodies of the current attempt, from
    /// every signer's verified nonce envelope (deterministic: the same set gives the same
    /// digest, e.g. after a restart).
    pub(super) fn star_bodies(&self) -> Option<(Body, Body)> {
        let envs: Option<Vec<VerifiedEnvelope>> = self
            .verified_nonces
            .iter()
            .map(|v| v.as_deref().cloned())
            .collect();
        envs.and_then(|envs| Body::aggregate_nonce(&self.ann, self.attempt, &envs).ok())
    }

    /// The signing contexts of the current attempt (one per message): in star under the
    /// aggregate nonces we were given (or computed, as the coordinator), in mesh from every
    /// signer's nonces.
    pub(super) fn signing_contexts(&self) -> Option<Vec<SessionContext>> {
        if self.topology == Topology::Mesh {
            return self.mesh_contexts().map(|(contexts, _)| contexts);
        }
        let aggregate = self.star_aggregate.as_ref()?;
        let messages = &self.ann.announcement().messages;
        (0..self.key_aggs.len())
            .map(|m| {
                let agg = aggregate.agg_nonces.get(m)?.to_core();
                Some(SessionContext::new(
                    &self.key_aggs[m],
                    &agg,
                    &messages.get(m)?.message,
                ))
            })
            .collect()
    }

    /// Every signer's public nonce for message `m`, once all are in.
    pub(super) fn pubnonces_of_message(&self, m: usize) -> Option<Vec<PubNonce>> {
        self.nonces
            .iter()
            .map(|s| s.as_deref().and_then(|(b, _)| b.get(m)).map(pubnonce_of))
            .collect()
    }

    /// Sends our partial signature where the topology wants it.
    pub(super) fn send_partial_sig(&self, env: SignedEnvelope, out: &mut Vec<Output>) {
        match self.topology {
            // It names the aggregate it was made under: a peer that holds other nonces never
            // judges it, and the two sides exchange their nonce sets instead (ADR 0023).
            Topology::Mesh => {
                let others: Vec<SignerIndex> = self.others().collect();
                self.send_to(out, others, vec![env]);
            }
            Topology::Star if !self.is_star_coordinator() => {
                self.send_to(out, [self.coordinator], vec![env]);
            }
            Topology::Star => {}
        }
    }

    /// All partial signatures are in: aggregate each message's with the core's fast path,
    /// blame on failure.
    pub(super) fn aggregate(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let Some(contexts) = &self.contexts else {
            return;
        };
        if !self.psigs_announced {
            self.psigs_announced = true;
            out.push(Output::Event(Event::PartialSignaturesComplete {
                session: self.id,
            }));
        }
        let result = aggregate_messages(contexts, &self.psigs, &self.nonces);
        match result {
            Ok(sigs) => {
                if self.is_star_coordinator() {
                    let env = self.sign(
                        now_ms,
                        Body::FinalSignature {
                            attempt: self.attempt,
                            signatures: sigs
                                .iter()
                                .map(|s| musig2_proto::Signature64(s.to_byte_array()))
                                .collect(),
                        },
                    );
                    // Members get the signatures alone: they verify on their own (ADR 0015).
                    let finals = FinalSignatures::new(
                        self.id,
                        self.attempt,
                        sigs.iter()
                            .map(|s| musig2_proto::Signature64(s.to_byte_array()))
                            .collect(),
                    );
                    for k in self.others() {
                        if let Some(to) = self.peer_of(k) {
                            out.push(Output::SendFinalSignatures {
                                to,
                                signatures: finals.clone(),
                            });
                        }
                    }
                    self.final_env = Some(Box::new(env));
                }
                self.finish(sigs, now_ms, out);
            }
            Err(culprits) => {
                // Blame and evidence rest on signed partial signatures only (ADR 0022): one
                // whose signature fails leaves its slot empty, and the session waits for it.
                if !self.check_unchecked_psigs() {
                    return;
                }
                if self.is_star_coordinator() {
                    // Hand every signer the evidence so each finds the same culprits itself:
                    // the nonce set our aggregate committed to, then every partial signature
                    // (ADR 0011).
                    let mut evidence: Vec<SignedEnvelope> = Vec::new();
                    if let Some((_, set)) = self.star_bodies() {
                        evidence.push(self.sign(now_ms, set));
                    }
                    evidence.extend(self.psigs.iter().flatten().map(|slot| slot.1.clone()));
                    let others: Vec<SignerIndex> = self.others().collect();
                    for k in others {
                        self.send_to(out, [k], evidence.clone());
                    }
                }
                self.abort(now_ms, AbortReason::InvalidPartialSig, culprits, out);
            }
        }
    }

    pub(super) fn finish(
        &mut self,
        sigs: Vec<schnorr::Signature>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        if self.phase.is_terminal() {
            return;
        }
        self.phase = Phase::Done;
        self.phase_deadline_ms = None;
        self.secnonces.clear();
        self.signatures = Some(sigs.clone());
        self.record(Record::Outcome {
            session: self.id,
            outcome: Outcome::Signed(sigs.clone()),
            at_ms: now_ms,
        });
        out.push(Output::Event(Event::SignatureReady {
            session: self.id,
            signatures: sigs,
        }));
        self.start_broadcast(now_ms, out);
    }

    pub(super) fn abort(
        &mut self,
        now_ms: u64,
        reason: AbortReason,
        blamed: Vec<SignerIndex>,
        out: &mut Vec<Output>,
    ) {
        // Leaving without a signature: the aggregate we signed under, if not checked yet, is
        // evidence now (ADR 0026). Its check may end the session itself (equivocation).
        self.adopt_unchecked_aggregate(now_ms, out);
        if self.phase.is_terminal() {
            return;
        }
        let joined = self.phase != Phase::Created;
        // Evidence found before we joined (e.g. an equivocation we saw early) is still told to
        // the others: silently leaving would make them time out blaming us.
        let evidence = !matches!(
            reason,
            AbortReason::Timeout | AbortReason::Expired | AbortReason::Cancelled
        );
        self.phase = Phase::Aborted;
        self.phase_deadline_ms = None;
        // Dropping the secret nonces erases them; they can never be used again.
        self.secnonces.clear();
        if joined || evidence {
            let env = self.sign(
                now_ms,
                Body::Abort {
                    reason,
                    blamed: blamed.first().copied(),
                },
            );
            let others: Vec<SignerIndex> = self.others().collect();
            self.send_to(out, others, vec![env.clone()]);
            self.final_env = Some(Box::new(env));
        }
        tracing::info!(session = %self.id, ?reason, ?blamed, "session aborted");
        self.record(Record::Outcome {
            session: self.id,
            outcome: Outcome::Aborted {
                reason,
                blamed: blamed.clone(),
                origin: AbortOrigin::Local,
            },
            at_ms: now_ms,
        });
        self.aborted = Some((reason, blamed.clone(), AbortOrigin::Local));
        out.push(Output::Event(Event::Aborted {
            session: self.id,
            reason,
            blamed,
            origin: AbortOrigin::Local,
        }));
    }
}

/// Aggregates and verifies every message's partial signatures, or names every signer with an
/// unparsable or invalid partial signature for any message (sorted, each once).
fn aggregate_messages(
    contexts: &[SessionContext],
    psigs: &[super::Held<Vec<PartialSigBytes>>],
    nonces: &[super::Held<Vec<PubNonceBytes>>],
) -> std::result::Result<Vec<schnorr::Signature>, Vec<SignerIndex>> {
    let mut culprits = std::collections::BTreeSet::new();
    let mut sigs = Vec::with_capacity(contexts.len());
    for (m, context) in contexts.iter().enumerate() {
        let mut parsed = Vec::with_capacity(psigs.len());
        for (i, slot) in psigs.iter().enumerate() {
            match slot
                .as_deref()
                .and_then(|(b, _)| b.get(m))
                .and_then(|b| PartialSignature::from_bytes(&b.to_bytes()).ok())
            {
                Some(p) => parsed.push(p),
                None => {
                    culprits.insert(i);
                }
            }
        }
        if parsed.len() != psigs.len() {
            continue;
        }
        let pubnonces: Vec<PubNonce> = nonces
            .iter()
            .filter_map(|s| s.as_deref().and_then(|(b, _)| b.get(m)).map(pubnonce_of))
            .collect();
        match context.aggregate_and_verify(&parsed, &pubnonces) {
            Ok(sig) => sigs.push(sig),
            Err(e) => culprits.extend(e.culprits()),
        }
    }
    if culprits.is_empty() && sigs.len() == contexts.len() {
        Ok(sigs)
    } else {
        Err(culprits
            .into_iter()
            .filter_map(|i| SignerIndex::try_from(i).ok())
            .collect())
    }
}
