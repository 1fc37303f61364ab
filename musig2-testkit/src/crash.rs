//! Crash and restart of an honest signer (see [`Scenario::crash_restart`](crate::Scenario)), and
//! the store-based nonce check every scenario makes.

use std::collections::{BTreeMap, BTreeSet};

use musig2_coordinator::StoredSession;
use musig2_proto::{Body, SignerIndex};

/// When a crashed signer dies: right after its store holds the named step of its own (its
/// frames of that step have left; nothing later has reached it).
///
/// With the peers listed in the announcement round 1 starts at the join, so `Joined` and
/// `CommitSent` (or `NonceSent` without commitments) fall in one store commit: the crash comes
/// after both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CrashPoint {
    /// Its join is stored.
    Joined,
    /// Its nonce commitment is stored (needs commitments on).
    CommitSent,
    /// Its public nonce is stored.
    NonceSent,
    /// Its partial signature is stored.
    PartialSigSent,
    /// Its outcome is stored.
    Finished,
}

impl CrashPoint {
    /// Every point, in session order.
    pub const ALL: [CrashPoint; 5] = [
        CrashPoint::Joined,
        CrashPoint::CommitSent,
        CrashPoint::NonceSent,
        CrashPoint::PartialSigSent,
        CrashPoint::Finished,
    ];

    /// Whether `stored` (the victim `signer`'s store) has reached this point.
    pub(crate) fn reached(self, signer: SignerIndex, stored: &StoredSession) -> bool {
        if self == CrashPoint::Finished {
            return stored.outcome.is_some();
        }
        stored.envelopes.iter().any(|e| {
            let env = e.envelope();
            env.signer() == signer
                && matches!(
                    (self, env.body()),
                    (CrashPoint::Joined, Body::Join { .. })
                        | (CrashPoint::CommitSent, Body::NonceCommit { .. })
                        | (CrashPoint::NonceSent, Body::Nonce { .. })
                        | (CrashPoint::PartialSigSent, Body::PartialSig { .. })
                )
        })
    }
}

/// What happened to the crashed signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashRecord {
    /// The signer that crashed and restarted.
    pub signer: SignerIndex,
    /// The point asked for.
    pub point: CrashPoint,
    /// Whether the crash happened (the session may have ended before the point was reached).
    pub crashed: bool,
    /// The kinds of the victim's own envelopes in its store at the crash (e.g. `"nonce"`).
    pub stored_at_crash: Vec<&'static str>,
    /// Whether its store held the outcome at the crash.
    pub finished_at_crash: bool,
}

/// Honest signers that, by the envelopes in the honest nodes' stores, signed two different
/// nonces or two different partial signatures in one attempt, or the same nonce in two
/// attempts: `(signer, attempt, what)`.
pub(crate) fn stored_nonce_reuse(
    stores: &[&StoredSession],
    honest: &[SignerIndex],
) -> Vec<(SignerIndex, u16, &'static str)> {
    type Seen<const N: usize> = BTreeMap<(SignerIndex, u16), BTreeSet<[u8; N]>>;
    let mut nonces: Seen<66> = BTreeMap::new();
    let mut psigs: Seen<32> = BTreeMap::new();
    for stored in stores {
        for e in &stored.envelopes {
            let env = e.envelope();
            if !honest.contains(&env.signer()) {
                continue;
            }
            match env.body() {
                Body::Nonce {
                    attempt,
                    pub_nonces,
                } => {
                    nonces
                        .entry((env.signer(), attempt.get()))
                        .or_default()
                        .extend(pub_nonces.iter().map(|n| n.to_bytes()));
                }
                Body::PartialSig {
                    attempt,
                    partial_sigs,
                    ..
                } => {
                    psigs
                        .entry((env.signer(), attempt.get()))
                        .or_default()
                        .extend(partial_sigs.iter().map(|p| p.to_bytes()));
                }
                _ => {}
            }
        }
    }
    let mut found = Vec::new();
    for ((signer, attempt), set) in &nonces {
        if set.len() > 1 {
            found.push((*signer, *attempt, "two nonces in one attempt"));
        }
    }
    for ((signer, attempt), set) in &psigs {
        if set.len() > 1 {
            found.push((*signer, *attempt, "two partial signatures in one attempt"));
        }
    }
    found.extend(repeated_across_attempts(&nonces));
    found
}

/// Signers whose one nonce shows up in two attempts.
fn repeated_across_attempts(
    nonces: &BTreeMap<(SignerIndex, u16), BTreeSet<[u8; 66]>>,
) -> Vec<(SignerIndex, u16, &'static str)> {
    let mut first: BTreeMap<(SignerIndex, [u8; 66]), u16> = BTreeMap::new();
    let mut found = Vec::new();
    for ((signer, attempt), set) in nonces {
        for nonce in set {
            if let Some(&earlier) = first.get(&(*signer, *nonce)) {
                if earlier != *attempt {
                    found.push((*signer, *attempt, "one nonce in two attempts"));
                }
            } else {
                first.insert((*signer, *nonce), *attempt);
            }
        }
    }
    found
}
