//! BIP340-style tagged hashes with the tag prefix precomputed once per tag.

use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// A SHA-256 state that has already absorbed `SHA256(tag) || SHA256(tag)`.
pub(crate) fn tagged(tag: &'static str, cell: &'static OnceLock<Sha256>) -> Sha256 {
    cell.get_or_init(|| {
        let tag_hash = Sha256::digest(tag.as_bytes());
        let mut engine = Sha256::new();
        engine.update(tag_hash);
        engine.update(tag_hash);
        engine
    })
    .clone()
}

macro_rules! tagged_hash_fn {
    ($name:ident, $tag:literal) => {
        pub(crate) fn $name() -> ::sha2::Sha256 {
            static CELL: ::std::sync::OnceLock<::sha2::Sha256> = ::std::sync::OnceLock::new();
            $crate::hash::tagged($tag, &CELL)
        }
    };
}

tagged_hash_fn!(keyagg_list, "KeyAgg list");
tagged_hash_fn!(keyagg_coef, "KeyAgg coefficient");
tagged_hash_fn!(musig_aux, "MuSig/aux");
tagged_hash_fn!(musig_nonce, "MuSig/nonce");
tagged_hash_fn!(musig_noncecoef, "MuSig/noncecoef");
tagged_hash_fn!(musig_deterministic_nonce, "MuSig/deterministic/nonce");
tagged_hash_fn!(bip340_challenge, "BIP0340/challenge");

/// Finishes a hash into 32 bytes.
pub(crate) fn finish(engine: Sha256) -> [u8; 32] {
    engine.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precomputed_prefix_equals_naive_tagged_hash() {
        let tag_hash = Sha256::digest(b"KeyAgg list");
        let mut naive = Sha256::new();
        naive.update(tag_hash);
        naive.update(tag_hash);
        naive.update(b"abc");
        let mut fast = keyagg_list();
        fast.update(b"abc");
        assert_eq!(finish(naive), finish(fast));
    }
}
