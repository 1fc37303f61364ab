//! The adversary as the star coordinator: it collects the members' commitments and tells them
//! to reveal with its own, aggregates their nonces (committing to the set, ADR 0011) and partial
//! signatures, and deviates where its [`Behaviour`] says.

use musig2_core::PartialSignature;
use musig2_proto::{AbortReason, AggNonceBytes, SessionId, SignedNonce, VerifiedEnvelope};

use super::{
    Actor, AggNonce, Attempt, Behaviour, Body, Envelope, Frame, LateMessage, NonceCommitment,
    PeerId, PubNonce, PubNonceBytes, SessionContext, SignedEnvelope, SignerIndex, Twist,
};

/// What the adversarial star coordinator has collected.
pub(super) struct Hub {
    commits: Vec<Option<SignedEnvelope>>,
    nonces: Vec<Option<VerifiedEnvelope>>,
    psigs: Vec<Option<PartialSignature>>,
    /// The members' partial-signature envelopes (evidence, when it reveals).
    psig_envs: Vec<Option<SignedEnvelope>>,
    /// The nonce set its aggregate committed to.
    set: Option<Vec<SignedNonce>>,
    commits_relayed: bool,
    context: Option<SessionContext>,
    finished: bool,
}

impl Hub {
    pub(super) fn new(n: usize) -> Hub {
        Hub {
            commits: vec![None; n],
            nonces: vec![None; n],
            psigs: vec![None; n],
            psig_envs: vec![None; n],
            set: None,
            commits_relayed: false,
            context: None,
            finished: false,
        }
    }

    /// The signed nonce set its (honest) aggregate commits to, once it has one.
    pub(super) fn nonce_set(&self) -> Option<Vec<SignedNonce>> {
        self.set.clone()
    }
}

fn nonce_body(pub_nonce: PubNonceBytes) -> Body {
    Body::Nonce {
        attempt: Attempt::FIRST,
        pub_nonces: vec![pub_nonce],
    }
}

fn pub_nonce_of(env: &VerifiedEnvelope) -> Option<PubNonceBytes> {
    match env.body() {
        Body::Nonce { pub_nonces, .. } => pub_nonces.first().copied(),
        _ => None,
    }
}

impl Actor {
    pub(super) fn is_hub(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.hub.is_some())
    }

    fn hub(&mut self) -> Option<&mut Hub> {
        self.session.as_mut().and_then(|s| s.hub.as_mut())
    }

    /// The members of the session (everyone but us) with their peer ids.
    fn members(&self) -> Vec<(usize, PeerId)> {
        let Some(s) = &self.session else {
            return Vec::new();
        };
        s.others()
            .into_iter()
            .filter_map(|k| Some((k.as_usize(), s.peers.get(k.as_usize()).copied()??)))
            .collect()
    }

    /// Our own commitment and nonce envelopes, kept for relaying: a star coordinator sends
    /// neither on its own.
    pub(super) async fn hub_round1(&mut self, nonce: PubNonceBytes) {
        let Some(s) = &self.session else { return };
        let (id, me) = (s.id, s.me.as_usize());
        if s.ann.announcement().policy.nonce_commitment {
            let commitment = NonceCommitment::compute(&id, s.me, Attempt::FIRST, &[nonce]);
            let commit = self.own(Body::NonceCommit {
                attempt: Attempt::FIRST,
                commitment,
            });
            if let Some(hub) = self.hub() {
                hub.commits[me] = commit;
            }
        }
        let own = self.own(nonce_body(nonce));
        let verified = self
            .session
            .as_ref()
            .and_then(|s| own.and_then(|e| e.verify(&s.ann).ok()));
        if let Some(hub) = self.hub() {
            hub.nonces[me] = verified;
        }
        self.hub_progress().await;
    }

    /// A verified envelope from a member.
    pub(super) async fn hub_on(&mut self, env: VerifiedEnvelope) {
        let j = env.signer().as_usize();
        let Some(hub) = self.hub() else { return };
        match env.body() {
            Body::NonceCommit { .. } => {
                hub.commits[j].get_or_insert_with(|| env.signed().clone());
            }
            Body::Nonce { .. } => {
                hub.nonces[j].get_or_insert(env);
            }
            Body::PartialSig { partial_sigs, .. } => {
                hub.psig_envs[j].get_or_insert_with(|| env.signed().clone());
                // The adversary signs one message: a k-message session sees it withhold.
                let first = partial_sigs
                    .first()
                    .map(|p| p.to_bytes())
                    .unwrap_or([0; 32]);
                if let Ok(p) = PartialSignature::from_bytes(&first) {
                    hub.psigs[j].get_or_insert(p);
                }
            }
            _ => {}
        }
        self.hub_progress().await;
    }

    async fn hub_progress(&mut self) {
        self.hub_relay_commitments().await;
        self.hub_aggregate_nonce().await;
        self.hub_final_signature().await;
    }

    /// With every commitment in, tells every member to reveal with its own commitment.
    async fn hub_relay_commitments(&mut self) {
        let members = self.members();
        let withhold = self.behaviour == Behaviour::WithholdCommitments;
        let Some(s) = &mut self.session else { return };
        let commit_round = s.ann.announcement().policy.nonce_commitment;
        let me = s.me.as_usize();
        let Some(hub) = &mut s.hub else { return };
        if !commit_round || hub.commits_relayed || hub.commits.iter().any(Option::is_none) {
            return;
        }
        hub.commits_relayed = true;
        if withhold {
            return;
        }
        let Some(own) = hub.commits[me].clone() else {
            return;
        };
        let peers: Vec<PeerId> = members.into_iter().map(|(_, p)| p).collect();
        self.send_all(&peers, &Frame::encode_batch(&[own])).await;
    }

    /// With every nonce in, fixes the session context, makes our partial signature and sends the
    /// aggregate nonce (or the behaviour's version of it).
    async fn hub_aggregate_nonce(&mut self) {
        let Some(s) = &mut self.session else { return };
        let commit_round = s.ann.announcement().policy.nonce_commitment;
        let Some(hub) = &mut s.hub else { return };
        let ready = !commit_round || hub.commits_relayed;
        if !ready || hub.context.is_some() {
            return;
        }
        let Some(envs) = hub.nonces.iter().cloned().collect::<Option<Vec<_>>>() else {
            return;
        };
        let pubnonces: Option<Vec<PubNonce>> = envs
            .iter()
            .map(|e| PubNonce::from_bytes(&pub_nonce_of(e)?.to_bytes()).ok())
            .collect();
        let Some(pubnonces) = pubnonces else { return };
        let context = SessionContext::new(
            &s.key_agg,
            &AggNonce::aggregate(&pubnonces),
            &s.ann.announcement().messages[0].message,
        );
        let own = s
            .secnonce
            .take()
            .and_then(|sec| context.sign(sec, &self.keypair).ok());
        hub.psigs[s.me.as_usize()] = own;
        hub.context = Some(context);
        let Ok((body, Body::NonceSet { nonces: set, .. })) =
            Body::aggregate_nonce(&s.ann, Attempt::FIRST, &envs)
        else {
            return;
        };
        let id = s.id;
        hub.set = Some(set.clone());
        let body = match self.behaviour {
            Behaviour::AggregateNoncePerMember => {
                self.hub_aggregate_per_member(&envs).await;
                return;
            }
            Behaviour::RelayedNoncesPerMember { victim, omit } => {
                self.hub_relayed_per_member(body, victim, omit).await;
                return;
            }
            Behaviour::WithholdAggregateNonce => return,
            Behaviour::BadAggregateNonce
            | Behaviour::BadlySignedAggregateNonce { valid: false } => tamper_sum(id, &set),
            Behaviour::ForgedRelayedNonce => {
                let victim = s.others().first().map(|v| v.as_usize());
                match (victim, self.make_nonce(false)) {
                    (Some(v), Some(fresh)) => {
                        // It commits to (and will reveal) the forged set.
                        let forged = forge_relayed(set, v, fresh);
                        let body = aggregate_of(id, &forged);
                        if let Some(hub) = self.hub() {
                            hub.set = Some(forged);
                        }
                        match body {
                            Some(body) => body,
                            None => return,
                        }
                    }
                    _ => return,
                }
            }
            Behaviour::NearDeadline {
                message: LateMessage::AggregateNonce,
                offset_ms,
                twist,
            } => {
                self.hub_late_aggregate(body, offset_ms, twist).await;
                return;
            }
            _ => body,
        };
        self.hub_send_aggregate(body).await;
    }

    /// [`Behaviour::NearDeadline`] with the aggregate nonce: sent to reach the members at their
    /// deadline plus `offset_ms`; with [`Twist::Equivocate`] half of them get an aggregate with
    /// a second nonce of ours instead (one sequence number for both).
    async fn hub_late_aggregate(&mut self, honest: Body, offset_ms: i32, twist: Twist) {
        self.wait_for_deadline(LateMessage::AggregateNonce, offset_ms)
            .await;
        if twist != Twist::Equivocate {
            self.hub_send_aggregate(honest).await;
            return;
        }
        let Some(fresh) = self.make_nonce(false) else {
            return;
        };
        let own = self.own(nonce_body(fresh));
        let Some(s) = &self.session else { return };
        let Some(own) = own.and_then(|e| e.verify(&s.ann).ok()) else {
            return;
        };
        let Some(mut envs) = s
            .hub
            .as_ref()
            .and_then(|h| h.nonces.iter().cloned().collect::<Option<Vec<_>>>())
        else {
            return;
        };
        envs[s.me.as_usize()] = own;
        let Ok((other, _)) = Body::aggregate_nonce(&s.ann, Attempt::FIRST, &envs) else {
            return;
        };
        let peers: Vec<PeerId> = self.members().into_iter().map(|(_, p)| p).collect();
        self.log.aggregate_nonces_sent += peers.len();
        self.send_split(&peers, honest, other).await;
    }

    /// Signs each `(member, body)` under one sequence number and sends it to that member only.
    async fn hub_send_per_member(&mut self, bodies: Vec<(PeerId, Body)>) {
        let now = self.clock.now_ms();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let (id, me, seq) = (s.id, s.me, s.take_seq());
        for (peer, body) in bodies {
            let env = Envelope::sign(id, me, seq, now, body, &self.keypair);
            self.log.aggregate_nonces_sent += 1;
            self.send_all(&[peer], &env.to_frame_bytes()).await;
        }
    }

    /// [`Behaviour::AggregateNoncePerMember`]: each member gets the aggregate with its own
    /// fresh coordinator nonce, every relayed nonce (ours too) correctly signed; our nonce
    /// envelopes all share one sequence number.
    async fn hub_aggregate_per_member(&mut self, envs: &[VerifiedEnvelope]) {
        let members = self.members();
        let now = self.clock.now_ms();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let (id, me, seq) = (s.id, s.me, s.take_seq());
        let mut bodies = Vec::new();
        for (_, peer) in members {
            let Some(fresh) = self.make_nonce(false) else {
                return;
            };
            let Some(s) = &self.session else { return };
            let own = Envelope::sign(id, me, seq, now, nonce_body(fresh), &self.keypair);
            let Ok(own) = own.verify(&s.ann) else { return };
            let mut for_member = envs.to_vec();
            for_member[me.as_usize()] = own;
            match Body::aggregate_nonce(&s.ann, Attempt::FIRST, &for_member) {
                Ok((body, _)) => bodies.push((peer, body)),
                Err(_) => return,
            }
        }
        self.hub_send_per_member(bodies).await;
    }

    /// [`Behaviour::RelayedNoncesPerMember`]: `victim` gets an aggregate of (and committing
    /// to) the set with another member's nonce swapped for a fresh one (its signature kept) or
    /// left out; the others get `honest`.
    async fn hub_relayed_per_member(&mut self, honest: Body, victim: SignerIndex, omit: bool) {
        let members = self.members();
        let Some(set) = self.hub().and_then(|h| h.set.clone()) else {
            return;
        };
        let Some(s) = &self.session else { return };
        let id = s.id;
        // The member whose nonce is tampered with: the first that is neither us nor the victim.
        let Some(other) = s
            .others()
            .into_iter()
            .find(|&k| k != victim)
            .map(|k| k.as_usize())
        else {
            return;
        };
        let tampered = if omit {
            omit_relayed(set, other)
        } else {
            match self.make_nonce(false) {
                Some(fresh) => forge_relayed(set, other, fresh),
                None => return,
            }
        };
        let Some(tampered) = aggregate_of(id, &tampered) else {
            return;
        };
        let bodies = members
            .into_iter()
            .map(|(k, peer)| {
                let body = if k == victim.as_usize() {
                    tampered.clone()
                } else {
                    honest.clone()
                };
                (peer, body)
            })
            .collect();
        self.hub_send_per_member(bodies).await;
    }

    async fn hub_send_aggregate(&mut self, body: Body) {
        let members = self.members();
        let env = if let Behaviour::BadlySignedAggregateNonce { .. } = self.behaviour {
            self.badly_signed(body)
        } else {
            self.own(body)
        };
        if let Some(env) = env {
            let peers: Vec<PeerId> = members.iter().map(|&(_, p)| p).collect();
            self.log.aggregate_nonces_sent += peers.len();
            self.send_all(&peers, &env.to_frame_bytes()).await;
        }
    }

    /// With every partial signature in, aggregates and sends the final signature (or the
    /// behaviour's version of it).
    async fn hub_final_signature(&mut self) {
        let Some(hub) = self.hub() else { return };
        if hub.finished {
            return;
        }
        let Some(context) = &hub.context else { return };
        let Some(psigs) = hub.psigs.iter().cloned().collect::<Option<Vec<_>>>() else {
            return;
        };
        hub.finished = true;
        let Ok(sig) = context.aggregate(&psigs) else {
            return;
        };
        let mut signature = sig.to_byte_array();
        if let Some((message, offset_ms, twist)) = self.near_deadline() {
            match (message, twist) {
                (LateMessage::AggregateNonce, Twist::WithholdRest) => return,
                (LateMessage::FinalSignature, _) => {
                    self.hub_late_final(signature, offset_ms, twist).await;
                    return;
                }
                _ => {}
            }
        }
        match self.behaviour {
            // The aggregate was a lie (or the set forged): the final signature cannot verify.
            // It reveals the set it committed to, as an honest aggregator would; the lie only
            // adds an abort blaming a member.
            Behaviour::BadAggregateNonce
            | Behaviour::BadlySignedAggregateNonce { valid: false } => {
                self.hub_reveal(true).await;
                return;
            }
            Behaviour::ForgedRelayedNonce => {
                self.hub_reveal(false).await;
                return;
            }
            Behaviour::WithholdFinalSig => return,
            Behaviour::InvalidFinalSig => signature[63] ^= 1,
            Behaviour::SecondAggregateNonce => {
                self.hub_second_aggregate().await;
                return;
            }
            _ => {}
        }
        let members = self.members();
        let body = Body::FinalSignature {
            attempt: Attempt::FIRST,
            signatures: vec![musig2_proto::Signature64(signature)],
        };
        if let Some(env) = self.own(body) {
            let peers: Vec<PeerId> = members.iter().map(|&(_, p)| p).collect();
            self.log.final_signatures_sent += peers.len();
            self.send_all(&peers, &env.to_frame_bytes()).await;
        }
    }

    /// [`Behaviour::NearDeadline`] with the final signature: sent to reach the members at their
    /// deadline plus `offset_ms`; with [`Twist::Equivocate`] half of them get it with a bit
    /// flipped (one sequence number for both).
    async fn hub_late_final(&mut self, signature: [u8; 64], offset_ms: i32, twist: Twist) {
        self.wait_for_deadline(LateMessage::FinalSignature, offset_ms)
            .await;
        let body = |signature| Body::FinalSignature {
            attempt: Attempt::FIRST,
            signatures: vec![musig2_proto::Signature64(signature)],
        };
        let peers: Vec<PeerId> = self.members().into_iter().map(|(_, p)| p).collect();
        self.log.final_signatures_sent += peers.len();
        if twist == Twist::Equivocate {
            let mut flipped = signature;
            flipped[63] ^= 1;
            self.send_split(&peers, body(signature), body(flipped))
                .await;
        } else if let Some(env) = self.own(body(signature)) {
            self.send_all(&peers, &env.to_frame_bytes()).await;
        }
    }

    /// Sends every member the nonce set it committed to and every partial signature (the
    /// evidence of a failed session, ADR 0011), then, with `accuse`, a signed abort blaming the
    /// first member for an invalid partial signature.
    async fn hub_reveal(&mut self, accuse: bool) {
        let members = self.members();
        let Some(hub) = self.hub() else { return };
        let Some(nonces) = hub.set.clone() else {
            return;
        };
        let psigs: Vec<SignedEnvelope> = hub.psig_envs.iter().flatten().cloned().collect();
        let mut evidence = Vec::new();
        evidence.extend(self.own(Body::NonceSet {
            attempt: Attempt::FIRST,
            nonces,
        }));
        evidence.extend(psigs);
        if accuse {
            let blamed = members
                .first()
                .and_then(|&(k, _)| SignerIndex::try_from(k).ok());
            evidence.extend(self.own(Body::Abort {
                reason: AbortReason::InvalidPartialSig,
                blamed,
            }));
        }
        let peers: Vec<PeerId> = members.iter().map(|&(_, p)| p).collect();
        self.log.nonce_sets_sent += peers.len();
        self.send_all(&peers, &Frame::encode_batch(&evidence)).await;
    }

    /// A second aggregate nonce for the same attempt, with a fresh nonce of ours.
    async fn hub_second_aggregate(&mut self) {
        let Some(fresh) = self.make_nonce(false) else {
            return;
        };
        let own = self.own(nonce_body(fresh));
        let Some(s) = &mut self.session else { return };
        let me = s.me.as_usize();
        let Some(own) = own.and_then(|e| e.verify(&s.ann).ok()) else {
            return;
        };
        let Some(hub) = &mut s.hub else { return };
        hub.nonces[me] = Some(own);
        let Some(envs) = hub.nonces.iter().cloned().collect::<Option<Vec<_>>>() else {
            return;
        };
        if let Ok((body, _)) = Body::aggregate_nonce(&s.ann, Attempt::FIRST, &envs) {
            self.hub_send_aggregate(body).await;
        }
    }
}

/// The AggregateNonce of (and committing to) `set`.
fn aggregate_of(id: SessionId, set: &[SignedNonce]) -> Option<Body> {
    Some(Body::AggregateNonce {
        attempt: Attempt::FIRST,
        agg_nonces: Body::sum_nonce_set(set, 1)?,
        nonce_set: Body::nonce_set_digest(&id, Attempt::FIRST, set),
    })
}

/// An AggregateNonce committing to `set` whose aggregate is the sum of all its nonces but the
/// first.
fn tamper_sum(id: SessionId, set: &[SignedNonce]) -> Body {
    let rest: Vec<PubNonceBytes> = set
        .iter()
        .skip(1)
        .filter_map(|n| n.pub_nonces.first().copied())
        .collect();
    Body::AggregateNonce {
        attempt: Attempt::FIRST,
        agg_nonces: AggNonceBytes::aggregate(&rest).into_iter().collect(),
        nonce_set: Body::nonce_set_digest(&id, Attempt::FIRST, set),
    }
}

/// `set` without signer `left_out`'s nonce.
fn omit_relayed(mut set: Vec<SignedNonce>, left_out: usize) -> Vec<SignedNonce> {
    set.retain(|n| n.signer.as_usize() != left_out);
    set
}

/// `set` with signer `victim`'s nonce replaced by `fresh` (its signature kept), so only the
/// relayed signature is wrong.
fn forge_relayed(
    mut set: Vec<SignedNonce>,
    victim: usize,
    fresh: PubNonceBytes,
) -> Vec<SignedNonce> {
    if let Some(n) = set.get_mut(victim) {
        n.pub_nonces = vec![fresh];
    }
    set
}
