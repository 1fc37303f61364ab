//! Mesh: the commitment and nonce sets, sent only where they are needed (ADR 0023).
//!
//! In the happy path every envelope travels once, from its author. A reveal shows that its
//! author held every commitment, and a partial signature (which names its aggregate nonce)
//! that its author held every nonce: a signer that still lacks one asks that author for its
//! set. A partial signature under another aggregate than ours means that someone showed its
//! author other nonces than us: we send it ours, it sends us its own when ours reaches it,
//! and each side then holds the equivocator's two signed nonces (ADR 0003).

use super::*;
use musig2_proto::RequestedSet;

/// `set_flags` bits, each for the commitment set; the nonce set's is the next bit up
/// ([`flag`]). Our set was sent to the signer.
const SENT: u8 = 1;
/// We asked the signer for its set.
const ASKED: u8 = 4;
/// The signer showed that it holds the whole set (its reveal, or its partial signature, came
/// from its own peer).
const SHOWN: u8 = 16;

/// How long after the first sign that a set is complete elsewhere we wait for the envelope we
/// lack before asking (at most a tenth of the nonce phase): in a session that goes well it is
/// a moment behind on its author's link, and asking would cost an envelope, its check and an
/// answer per pair of signers.
const ASK_DELAY_MS: u64 = 50;

/// Where a mesh machine stands in asking for sets in the current phase (ADR 0023).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Asks {
    /// Nobody showed a set we lack.
    Idle,
    /// Someone did: at this time, we ask every signer that showed one.
    Armed(u64),
    /// The delay is over: a signer that shows a set we lack is asked at once.
    Open,
}

/// The `set_flags` bit of `what` (`SENT`, `ASKED` or `SHOWN`) for `set`.
fn flag(what: u8, set: RequestedSet) -> u8 {
    match set {
        RequestedSet::Commitments => what,
        RequestedSet::Nonces => what << 1,
    }
}

impl SessionMachine {
    /// Sends `to` every signed envelope of `set` we hold (its own left out), once per signer,
    /// attempt and kind: no peer can make us send more than what ADR 0003 relayed with every
    /// message.
    pub(super) fn send_set(&mut self, to: SignerIndex, set: RequestedSet, out: &mut Vec<Output>) {
        let bit = flag(SENT, set);
        let Some(flags) = self.set_flags.get_mut(to.as_usize()) else {
            return;
        };
        if *flags & bit != 0 || to == self.me {
            return;
        }
        *flags |= bit;
        let envelopes: Vec<&SignedEnvelope> = match set {
            RequestedSet::Commitments => {
                self.commits.iter().flatten().map(|slot| &slot.1).collect()
            }
            RequestedSet::Nonces => self.nonces.iter().flatten().map(|slot| &slot.1).collect(),
        };
        let held: Vec<SignedEnvelope> = envelopes
            .into_iter()
            .filter(|e| e.envelope().signer() != to)
            .cloned()
            .collect();
        if !held.is_empty() {
            self.send_to(out, [to], held);
        }
    }

    /// Mesh: `author` showed, by a reveal (`Commitments`) or a partial signature (`Nonces`)
    /// from its own peer, that it holds that whole set. If we are still collecting it and lack
    /// one, we ask `author` for its set, once per signer and attempt: not at once (the missing
    /// envelope is usually a moment behind, on its author's own link) but [`ASK_DELAY_MS`]
    /// after the first such sign, of every signer that showed it by then, and of each later
    /// one as it shows it.
    pub(super) fn ask_if_lacking(
        &mut self,
        author: SignerIndex,
        shown: RequestedSet,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        if self.topology != Topology::Mesh || author == self.me || !self.lacks(shown) {
            return;
        }
        let Some(flags) = self.set_flags.get_mut(author.as_usize()) else {
            return;
        };
        *flags |= flag(SHOWN, shown);
        match self.asks {
            Asks::Idle => {
                let delay = ASK_DELAY_MS.min(self.nonce_timeout_ms / 10);
                self.asks = Asks::Armed(now_ms.saturating_add(delay));
            }
            Asks::Armed(_) => {}
            Asks::Open => self.ask(author, shown, now_ms, out),
        }
    }

    /// The delay is over: asks every signer that showed a set we still lack.
    pub(super) fn ask_shown(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        for set in [RequestedSet::Commitments, RequestedSet::Nonces] {
            if !self.lacks(set) {
                continue;
            }
            let showed: Vec<SignerIndex> = self
                .others()
                .filter(|k| {
                    self.set_flags
                        .get(k.as_usize())
                        .is_some_and(|f| f & flag(SHOWN, set) != 0)
                })
                .collect();
            for author in showed {
                self.ask(author, set, now_ms, out);
            }
        }
    }

    /// Whether we are collecting `set` and lack one of it.
    fn lacks(&self, set: RequestedSet) -> bool {
        match set {
            RequestedSet::Commitments => {
                self.commit_round && self.phase == Phase::NonceCommit && !all_filled(&self.commits)
            }
            RequestedSet::Nonces => {
                matches!(self.phase, Phase::NonceCommit | Phase::Nonce) && !all_filled(&self.nonces)
            }
        }
    }

    /// Sends `author` a request for its `set`, unless we asked it before in this attempt.
    fn ask(&mut self, author: SignerIndex, set: RequestedSet, now_ms: u64, out: &mut Vec<Output>) {
        let bit = flag(ASKED, set);
        let Some(flags) = self.set_flags.get_mut(author.as_usize()) else {
            return;
        };
        if *flags & bit != 0 {
            return;
        }
        *flags |= bit;
        // Not stored: a request asks for nothing a restart would need.
        let request = self.sign_unrecorded(
            now_ms,
            Body::Request {
                attempt: self.attempt,
                set,
            },
        );
        self.send_to(out, [author], vec![request]);
    }

    /// Mesh, once our aggregate is fixed: a partial signature placed before (it came while
    /// we still collected nonces) under another aggregate is taken out of its slot, never
    /// judged, and its author gets our nonce set if its signature verifies.
    pub(super) fn drop_psigs_under_other_aggregates(&mut self, out: &mut Vec<Output>) {
        let Some(ours) = self.mesh_aggregate else {
            return;
        };
        for signer in self.others().collect::<Vec<_>>() {
            let j = signer.as_usize();
            let named = self.psigs.get(j).and_then(|s| s.as_deref()).map(|s| {
                matches!(s.1.envelope().body(), Body::PartialSig { aggregate, .. } if *aggregate == Some(ours))
            });
            if named != Some(false) {
                continue;
            }
            // One placed unchecked is checked first: only its author's word earns our set.
            let authentic = self.check_unchecked_psig(signer) && self.psigs[j].is_some();
            self.psigs[j] = None;
            self.psig_unchecked[j] = DeferredCheck::None;
            if authentic {
                self.send_set(signer, RequestedSet::Nonces, out);
            }
        }
    }

    /// Mesh: the signing contexts of the current attempt (one per message) from every
    /// signer's nonces, and the reference to their aggregate nonces our partial signatures
    /// name.
    pub(super) fn mesh_contexts(&self) -> Option<(Vec<SessionContext>, AggregateRef)> {
        let messages = &self.ann.announcement().messages;
        let mut aggregates = Vec::with_capacity(self.key_aggs.len());
        let contexts = (0..self.key_aggs.len())
            .map(|m| {
                let pubnonces = self.pubnonces_of_message(m)?;
                let aggregate = AggNonce::aggregate(&pubnonces);
                aggregates.push(AggNonceBytes::from(aggregate));
                Some(SessionContext::new(
                    &self.key_aggs[m],
                    &aggregate,
                    &messages.get(m)?.message,
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some((
            contexts,
            Body::aggregate_ref(&self.id, self.attempt, &aggregates),
        ))
    }
}
