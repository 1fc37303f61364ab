//! Messages timed to reach the honest nodes just before, at or just after a phase deadline
//! ([`Behaviour::NearDeadline`]; the star coordinator's part is in `star.rs`), and equivocated
//! partial signatures ([`Behaviour::EquivocatePartialSig`]).

use std::time::Duration;

use super::{
    Actor, Attempt, Behaviour, Body, Envelope, LateMessage, NonceCommitment, PartialSigBytes,
    PeerId, PubNonceBytes, Twist,
};

/// A partial signature that is well-formed and (overwhelmingly likely) not ours.
fn junk_partial_sig() -> Option<PartialSigBytes> {
    let mut one = [0u8; 32];
    one[31] = 1;
    PartialSigBytes::from_bytes(one).ok()
}

impl Actor {
    /// The held-back message and twist, when the behaviour is [`Behaviour::NearDeadline`].
    pub(super) fn near_deadline(&self) -> Option<(LateMessage, i32, Twist)> {
        match self.behaviour {
            Behaviour::NearDeadline {
                message,
                offset_ms,
                twist,
            } => Some((message, offset_ms, twist)),
            _ => None,
        }
    }

    /// Whether a [`Behaviour::NearDeadline`] adversary withholds its partial signature (it
    /// withholds what follows an earlier late message).
    pub(super) fn withholds_partial_sig(&self) -> bool {
        matches!(
            self.near_deadline(),
            Some((
                LateMessage::Commitment | LateMessage::Nonce,
                _,
                Twist::WithholdRest
            ))
        )
    }

    /// Waits until `message`, sent now, reaches the honest nodes `offset_ms` from their
    /// deadline for the phase it completes (see [`Behaviour::NearDeadline`]).
    pub(super) async fn wait_for_deadline(&self, message: LateMessage, offset_ms: i32) {
        let Some(s) = &self.session else { return };
        let a = s.ann.announcement();
        let commit_round = a.policy.nonce_commitment;
        let now = self.clock.now_ms();
        let deadline = match message {
            LateMessage::Commitment => a.created_at_ms.saturating_add(a.policy.timeouts.join_ms),
            LateMessage::Nonce if !commit_round => {
                a.created_at_ms.saturating_add(a.policy.timeouts.join_ms)
            }
            LateMessage::Nonce => now.saturating_add(a.policy.timeouts.nonce_ms),
            LateMessage::PartialSig => now.saturating_add(a.policy.timeouts.partial_sig_ms),
            // A star member waits for the coordinator half as long again as the phase timeout.
            LateMessage::AggregateNonce if !commit_round => {
                let nonce = a.policy.timeouts.nonce_ms;
                a.created_at_ms
                    .saturating_add(a.policy.timeouts.join_ms)
                    .saturating_add(nonce / 2)
            }
            LateMessage::AggregateNonce => {
                let nonce = a.policy.timeouts.nonce_ms;
                now.saturating_add(nonce).saturating_add(nonce / 2)
            }
            LateMessage::FinalSignature => {
                let psig = a.policy.timeouts.partial_sig_ms;
                now.saturating_add(psig).saturating_add(psig / 2)
            }
        };
        let at = deadline.saturating_add_signed(i64::from(offset_ms));
        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await;
    }

    /// Sends `honest` to the first half of `targets` and `other` to the rest, under one
    /// sequence number (both to a single target).
    pub(super) async fn send_split(&mut self, targets: &[PeerId], honest: Body, other: Body) {
        let now = self.clock.now_ms();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let (id, me, seq) = (s.id, s.me, s.take_seq());
        let a = Envelope::sign(id, me, seq, now, honest, &self.keypair);
        let b = Envelope::sign(id, me, seq, now, other, &self.keypair);
        let (first, second) = match targets.len() {
            1 => (targets, targets),
            len => targets.split_at(len / 2),
        };
        self.send_all(first, &a.to_frame_bytes()).await;
        self.send_all(second, &b.to_frame_bytes()).await;
    }

    /// Round 1 of a [`Behaviour::NearDeadline`] adversary (commitment and nonce, `nonce` being
    /// the one it signs with).
    pub(super) async fn near_deadline_round1(&mut self, nonce: PubNonceBytes) {
        let Some((message, offset_ms, twist)) = self.near_deadline() else {
            return;
        };
        let Some(s) = &self.session else { return };
        let (id, me, attempt) = (s.id, s.me, s.attempt);
        let targets = s.round_targets();
        let commit_body = |n: &PubNonceBytes| Body::NonceCommit {
            attempt,
            commitment: NonceCommitment::compute(&id, me, attempt, std::slice::from_ref(n)),
        };
        let nonce_body = |pub_nonce| Body::Nonce {
            attempt,
            pub_nonces: vec![pub_nonce],
        };
        if s.ann.announcement().policy.nonce_commitment {
            if message == LateMessage::Commitment {
                self.wait_for_deadline(message, offset_ms).await;
                if twist == Twist::Equivocate {
                    let Some(other) = self.make_nonce(false) else {
                        return;
                    };
                    self.send_split(&targets, commit_body(&nonce), commit_body(&other))
                        .await;
                } else {
                    self.send_own(&targets, commit_body(&nonce)).await;
                }
                if twist == Twist::WithholdRest {
                    return;
                }
            } else {
                self.send_own(&targets, commit_body(&nonce)).await;
            }
        }
        if message != LateMessage::Nonce {
            self.send_own(&targets, nonce_body(nonce)).await;
            return;
        }
        self.wait_for_deadline(message, offset_ms).await;
        if twist == Twist::Equivocate {
            let Some(other) = self.make_nonce(false) else {
                return;
            };
            self.send_split(&targets, nonce_body(nonce), nonce_body(other))
                .await;
        } else {
            self.send_own(&targets, nonce_body(nonce)).await;
        }
    }

    async fn send_own(&mut self, targets: &[PeerId], body: Body) {
        if let Some(env) = self.own(body) {
            self.send_all(targets, &env.to_frame_bytes()).await;
        }
    }

    /// Sends our partial signature the way [`Behaviour::NearDeadline`] or
    /// [`Behaviour::EquivocatePartialSig`] says; false when the behaviour is neither (the
    /// caller sends it plainly).
    pub(super) async fn bent_partial_sig(
        &mut self,
        partial_sig: PartialSigBytes,
        targets: &[PeerId],
        attempt: Attempt,
    ) -> bool {
        let aggregate = self.session.as_ref().and_then(|s| s.aggregate_ref());
        let body = |partial_sig| Body::PartialSig {
            attempt,
            partial_sigs: vec![partial_sig],
            aggregate,
        };
        let (late, twist) = match self.near_deadline() {
            Some((LateMessage::PartialSig, offset_ms, twist)) => ((true, offset_ms), twist),
            _ if self.behaviour == Behaviour::EquivocatePartialSig => {
                ((false, 0), Twist::Equivocate)
            }
            _ => return false,
        };
        if let (true, offset_ms) = late {
            self.wait_for_deadline(LateMessage::PartialSig, offset_ms)
                .await;
        }
        self.log.sent_partial_sig = true;
        match (twist, junk_partial_sig()) {
            (Twist::Equivocate, Some(junk)) => {
                self.send_split(targets, body(partial_sig), body(junk))
                    .await;
            }
            _ => self.send_own(targets, body(partial_sig)).await,
        }
        true
    }
}
