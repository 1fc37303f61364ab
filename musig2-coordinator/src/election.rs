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
    let mut indices: Vec<usize> = (0..keys.len()).collect();
    match method {
        ElectionMethod::FirstSigner => {}
        ElectionMethod::LastSigner => indices.reverse(),
        ElectionMethod::Lexicographic => indices.sort_by_key(|&i| (keys[i].serialize(), i)),
        ElectionMethod::HashBased => indices.sort_by_cached_key(|&i| {
            let mut msg = [0u8; 65];
            msg[..32].copy_from_slice(session.as_bytes());
            msg[32..].copy_from_slice(&keys[i].serialize());
            (tagged_hash(TAG_ELECTION, &msg), i)
        }),
    }
    indices
        .into_iter()
        .filter_map(|i| SignerIndex::try_from(i).ok())
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
