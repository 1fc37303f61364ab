//! Scripted attacks from issue 9, each the deterministic core of a failure class the
//! randomized strategy finds (see [`Behaviour`]).

use std::time::Duration;

use super::{
    Actor, Attempt, Behaviour, Body, Envelope, NonceCommitment, PeerId, PubNonceBytes, SessionId,
    SignerIndex,
};

/// How far inside the skew bound [`Behaviour::SkewEdgeEquivocation`] dates
/// its nonces.
const INSIDE_EDGE_MS: u64 = 500;

/// How long it then waits before committing, so the honest relays come outside the bound.
const COMMIT_DELAY: Duration = Duration::from_secs(1);

fn nonce_body(pub_nonce: PubNonceBytes) -> Body {
    Body::Nonce {
        attempt: Attempt::FIRST,
        pub_nonces: vec![pub_nonce],
    }
}

/// Our commitment to `nonce` for the first attempt.
fn commit_body(id: &SessionId, me: SignerIndex, nonce: &PubNonceBytes) -> Body {
    Body::NonceCommit {
        attempt: Attempt::FIRST,
        commitment: NonceCommitment::compute(id, me, Attempt::FIRST, std::slice::from_ref(nonce)),
    }
}

impl Actor {
    /// Round 1 of a scripted attack (commitment and nonce, `nonce` being the one we sign
    /// with); false when the behaviour is not one of them.
    pub(super) async fn scripted_round1(&mut self, nonce: PubNonceBytes) -> bool {
        match self.behaviour {
            Behaviour::SkewEdgeEquivocation { victim } => {
                self.skew_edge_equivocation(victim, nonce).await;
            }
            Behaviour::ReuseSeqForCommitment { victim } => {
                self.reuse_seq_for_commitment(victim, nonce).await;
            }
            Behaviour::CommitmentToAllBut { skip } => {
                self.commitment_to_all_but(skip, nonce).await;
            }
            Behaviour::NonceToAllBut { skip } => {
                self.nonce_to_all_but(skip, nonce).await;
            }
            Behaviour::EquivocateBeforeJoin { victim } => {
                self.equivocate_before_join(victim, nonce).await;
            }
            Behaviour::NearDeadline { .. } => self.near_deadline_round1(nonce).await,
            _ => return false,
        }
        true
    }

    /// The victim's peer and everyone else's (but ours).
    fn split_off(&self, victim: SignerIndex) -> (Vec<PeerId>, Vec<PeerId>) {
        let Some(s) = &self.session else {
            return (Vec::new(), Vec::new());
        };
        let rest: Vec<SignerIndex> = s.others().into_iter().filter(|&i| i != victim).collect();
        (s.peers_of(&[victim]), s.peers_of(&rest))
    }

    /// [`Behaviour::SkewEdgeEquivocation`].
    pub(super) async fn skew_edge_equivocation(
        &mut self,
        victim: SignerIndex,
        nonce_a: PubNonceBytes,
    ) {
        let Some(nonce_b) = self.make_nonce(false) else {
            return;
        };
        let (victim_peer, rest) = self.split_off(victim);
        let dated = self
            .clock
            .now_ms()
            .saturating_sub(self.max_skew_ms.saturating_sub(INSIDE_EDGE_MS));
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let (id, me) = (s.id, s.me);
        let (seq_a, seq_b) = (s.take_seq(), s.take_seq());
        let env_a = Envelope::sign(id, me, seq_a, dated, nonce_body(nonce_a), &self.keypair);
        let env_b = Envelope::sign(id, me, seq_b, dated, nonce_body(nonce_b), &self.keypair);
        self.send_all(&victim_peer, &env_b.to_frame_bytes()).await;
        self.send_all(&rest, &env_a.to_frame_bytes()).await;
        tokio::time::sleep(COMMIT_DELAY).await;
        for (nonce, peers) in [(nonce_a, &rest), (nonce_b, &victim_peer)] {
            if let Some(env) = self.own(commit_body(&id, me, &nonce)) {
                self.send_all(peers, &env.to_frame_bytes()).await;
            }
        }
    }

    /// [`Behaviour::ReuseSeqForCommitment`].
    pub(super) async fn reuse_seq_for_commitment(
        &mut self,
        victim: SignerIndex,
        nonce: PubNonceBytes,
    ) {
        let (victim_peer, _) = self.split_off(victim);
        let Some(join) = self.join_body() else { return };
        let now = self.clock.now_ms();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let (id, me) = (s.id, s.me);
        let targets = s.round_targets();
        let seq = s.take_seq();
        let dup_join = Envelope::sign(id, me, seq, now, join, &self.keypair);
        let commit = Envelope::sign(
            id,
            me,
            seq,
            now,
            commit_body(&id, me, &nonce),
            &self.keypair,
        );
        self.send_all(&victim_peer, &dup_join.to_frame_bytes())
            .await;
        self.send_all(&targets, &commit.to_frame_bytes()).await;
        if let Some(env) = self.own(nonce_body(nonce)) {
            self.send_all(&targets, &env.to_frame_bytes()).await;
        }
    }
}

impl Actor {
    /// [`Behaviour::CommitmentToAllBut`].
    pub(super) async fn commitment_to_all_but(&mut self, skip: SignerIndex, nonce: PubNonceBytes) {
        let (_, rest) = self.split_off(skip);
        let Some(s) = &self.session else { return };
        let (id, me) = (s.id, s.me);
        let targets = s.round_targets();
        if let Some(env) = self.own(commit_body(&id, me, &nonce)) {
            self.send_all(&rest, &env.to_frame_bytes()).await;
        }
        if let Some(env) = self.own(nonce_body(nonce)) {
            self.send_all(&targets, &env.to_frame_bytes()).await;
        }
    }

    /// [`Behaviour::NonceToAllBut`].
    pub(super) async fn nonce_to_all_but(&mut self, skip: SignerIndex, nonce: PubNonceBytes) {
        let (_, rest) = self.split_off(skip);
        let Some(s) = &self.session else { return };
        let (id, me) = (s.id, s.me);
        let targets = s.round_targets();
        if s.ann.announcement().policy.nonce_commitment {
            if let Some(env) = self.own(commit_body(&id, me, &nonce)) {
                self.send_all(&targets, &env.to_frame_bytes()).await;
            }
        }
        if let Some(env) = self.own(nonce_body(nonce)) {
            self.send_all(&rest, &env.to_frame_bytes()).await;
        }
    }

    /// [`Behaviour::EquivocateBeforeJoin`].
    pub(super) async fn equivocate_before_join(
        &mut self,
        victim: SignerIndex,
        nonce_a: PubNonceBytes,
    ) {
        let Some(nonce_b) = self.make_nonce(false) else {
            return;
        };
        let (victim_peer, _) = self.split_off(victim);
        let now = self.clock.now_ms();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let (id, me) = (s.id, s.me);
        let commit_round = s.ann.announcement().policy.nonce_commitment;
        let targets = s.round_targets();
        if commit_round {
            let seq = s.take_seq();
            let body = commit_body(&id, me, &nonce_a);
            let env = Envelope::sign(id, me, seq, now, body, &self.keypair);
            self.send_all(&targets, &env.to_frame_bytes()).await;
        }
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let seq = s.take_seq();
        let env_a = Envelope::sign(id, me, seq, now, nonce_body(nonce_a), &self.keypair);
        let env_b = Envelope::sign(id, me, seq, now, nonce_body(nonce_b), &self.keypair);
        self.send_all(&targets, &env_a.to_frame_bytes()).await;
        self.send_all(&victim_peer, &env_b.to_frame_bytes()).await;
    }
}
