//! Coordinator election: the order in which signers take the coordinator role.

use musig2_proto::{ElectionMethod, SessionId, SignerIndex, tagged_hash};
use secp256k1::PublicKey;

/// Domain tag for hash-based election.
pub const TAG_ELECTION: &str = "musig2-p2p/election";

/// The election order for a signer list: position 0 is the coordinator, the rest are backups in
/// failover order. Every signer computes the same order from the announcement alone.
///
/// The hash-based method orders by `tagged_hash(TAG_ELECTION, session_id || key)`. No signer
/// but the creator has any influence on it; the creator, who picks the salt, can grind its own
/// position (about n tries to come first). That wins it only roles that carry no trust: the
/// star aggregator is untrusted (members check the aggregate nonce against the signed nonces,
/// and a wrong one names the aggregator, never a member) and the broadcast turn passes on when
/// withheld (ADR 0008). The creator could equally pick `FirstSigner` and list itself first.
pub fn election_order(
    method: ElectionMethod,
    session: &SessionId,
    keys: &[PublicKey],
) -> Vec<SignerIndex> {
    let index = |i: usize| SignerIndex::try_from(i).ok();
    match method {
        ElectionMethod::FirstSigner => (0..keys.len()).filter_map(index).collect(),
        ElectionMethod::LastSigner => (0..keys.len()).rev().filter_map(index).collect(),
        ElectionMethod::Lexicographic => sorted_by(keys, PublicKey::serialize),
        ElectionMethod::HashBased => sorted_by(keys, |key| {
            let mut msg = [0u8; 65];
            msg[..32].copy_from_slice(session.as_bytes());
            msg[32..].copy_from_slice(&key.serialize());
            tagged_hash(TAG_ELECTION, &msg)
        }),
    }
}

/// Signer indices in the order of `(rank(key), index)`, each rank computed once.
fn sorted_by<R: Ord>(keys: &[PublicKey], rank: impl Fn(&PublicKey) -> R) -> Vec<SignerIndex> {
    let mut ranked: Vec<(R, usize)> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| (rank(key), i))
        .collect();
    // Indices are distinct, so unstable sorting is deterministic.
    ranked.sort_unstable();
    ranked
        .into_iter()
        .filter_map(|(_, i)| SignerIndex::try_from(i).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secp256k1::Keypair;

    fn keys(n: usize) -> Vec<PublicKey> {
        (0..n)
            .map(|_| Keypair::new(&mut rand::rng()).public_key())
            .collect()
    }

    fn order_usize(v: Vec<SignerIndex>) -> Vec<usize> {
        v.into_iter().map(SignerIndex::as_usize).collect()
    }

    #[test]
    fn first_and_last_signer() {
        let k = keys(4);
        let id = SessionId::from_bytes([7; 32]);
        assert_eq!(
            order_usize(election_order(ElectionMethod::FirstSigner, &id, &k)),
            vec![0, 1, 2, 3]
        );
        assert_eq!(
            order_usize(election_order(ElectionMethod::LastSigner, &id, &k)),
            vec![3, 2, 1, 0]
        );
    }

    #[test]
    fn lexicographic_orders_by_key_bytes() {
        let k = keys(6);
        let id = SessionId::from_bytes([7; 32]);
        let order = order_usize(election_order(ElectionMethod::Lexicographic, &id, &k));
        for w in order.windows(2) {
            assert!(k[w[0]].serialize() < k[w[1]].serialize());
        }
    }

    #[test]
    fn hash_based_orders_by_the_tagged_hash_then_the_index() {
        // Duplicate keys tie on the hash: the lower index comes first.
        let mut k = keys(12);
        k.push(k[3]);
        k.push(k[0]);
        let session = SessionId::from_bytes([7; 32]);
        let hash = |i: usize| {
            let mut msg = session.as_bytes().to_vec();
            msg.extend_from_slice(&k[i].serialize());
            tagged_hash(TAG_ELECTION, &msg)
        };
        let order = order_usize(election_order(ElectionMethod::HashBased, &session, &k));
        assert_eq!(order.len(), k.len());
        for pair in order.windows(2) {
            assert!(
                (hash(pair[0]), pair[0]) < (hash(pair[1]), pair[1]),
                "{order:?}"
            );
        }
        assert!(order.iter().position(|&i| i == 3) < order.iter().position(|&i| i == 12));
        assert!(order.iter().position(|&i| i == 0) < order.iter().position(|&i| i == 13));
    }

    #[test]
    fn hash_based_is_a_permutation_that_depends_on_the_session() {
        let k = keys(16);
        let a = order_usize(election_order(
            ElectionMethod::HashBased,
            &SessionId::from_bytes([1; 32]),
            &k,
        ));
        let b = order_usize(election_order(
            ElectionMethod::HashBased,
            &SessionId::from_bytes([2; 32]),
            &k,
        ));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..16).collect::<Vec<_>>());
        // 16! orders: two ids giving the same one would be a 1-in-2^44 coincidence.
        assert_ne!(a, b);
    }
}
