//! The fixed session the fuzz targets verify against: three signers with keys `[1; 32]`,
//! `[2; 32]`, `[3; 32]`, in star topology (so AggregateNonce and NonceSet bodies are reachable)
//! and in mesh (Request bodies, ADR 0023), and
//! a fixed salt and signature randomness, so every run and every crash reproduces against the
//! same bytes.

use std::sync::OnceLock;

use musig2_proto::{Announcement, Limits, Policy, SignerIndex, Topology, VerifiedAnnouncement};
use secp256k1::Keypair;

/// The fixture's clock, inside the announcement's validity window.
pub const NOW: u64 = 1_700_000_000_000;

/// The verified star announcement and the signers' keypairs, in signer-index order.
pub fn star_session() -> &'static (VerifiedAnnouncement, Vec<Keypair>) {
    static F: OnceLock<(VerifiedAnnouncement, Vec<Keypair>)> = OnceLock::new();
    F.get_or_init(|| session(Topology::Star))
}

/// The same session in mesh topology (partial signatures with or without an aggregate,
/// requests; ADR 0023).
pub fn mesh_session() -> &'static (VerifiedAnnouncement, Vec<Keypair>) {
    static F: OnceLock<(VerifiedAnnouncement, Vec<Keypair>)> = OnceLock::new();
    F.get_or_init(|| session(Topology::Mesh))
}

fn session(topology: Topology) -> (VerifiedAnnouncement, Vec<Keypair>) {
    let keys: Vec<Keypair> = (1u8..=3)
        .map(|i| Keypair::from_secret_bytes([i; 32]).expect("valid key"))
        .collect();
    let mut a = Announcement::new(
        keys.iter().map(|k| k.public_key()).collect(),
        b"fuzz".to_vec(),
        SignerIndex::new(0).expect("index"),
        NOW,
        NOW + 60_000,
    );
    a.policy = Policy {
        topology,
        ..Policy::default()
    };
    a.salt = [7; 32];
    let verified = a
        .sign_with_aux_rand(&keys[0], &Limits::default(), &[0; 32])
        .expect("sign")
        .verify(NOW, &Limits::default())
        .expect("verify");
    (verified, keys)
}
