//! Deterministic fixtures shared by the integration tests.
#![allow(dead_code)]

use musig2_proto::{
    AggNonceBytes, Announcement, Attempt, Body, Envelope, Limits, MessageToSign, PeerIdBytes,
    Policy, PubNonceBytes, SeqNo, SignedAnnouncement, SignedEnvelope, SignerIndex, SignerInfo,
    Timeouts, Topology, Tweak, VerifiedAnnouncement, VerifiedEnvelope,
};
use secp256k1::{Keypair, PublicKey, SecretKey};

/// Fixed "now" for every test.
pub const NOW: u64 = 1_700_000_000_000;

/// Signer `i`'s deterministic keypair (secret key = i+1 repeated).
pub fn keypair(i: usize) -> Keypair {
    let mut sk = [0u8; 32];
    sk[0] = 0x11;
    sk[31] = u8::try_from(i + 1).expect("small index");
    sk[30] = u8::try_from((i + 1) >> 8).expect("small index");
    Keypair::from_secret_bytes(sk).expect("valid secret key")
}

pub fn keypairs(n: usize) -> Vec<Keypair> {
    (0..n).map(keypair).collect()
}

/// A valid compressed point derived from `seed` (the public key of a fixed secret).
pub fn point(seed: u8) -> [u8; 33] {
    let mut sk = [0u8; 32];
    sk[0] = 0x22;
    sk[31] = seed.max(1);
    PublicKey::from_secret_key(&SecretKey::from_secret_bytes(sk).expect("valid")).serialize()
}

/// A deterministic valid public nonce.
pub fn pub_nonce(seed: u8) -> PubNonceBytes {
    let mut b = [0u8; 66];
    b[..33].copy_from_slice(&point(seed.wrapping_mul(2).max(1)));
    b[33..].copy_from_slice(&point(seed.wrapping_mul(2).wrapping_add(1).max(1)));
    PubNonceBytes::from_bytes(b).expect("valid nonce")
}

pub fn idx(i: u16) -> SignerIndex {
    SignerIndex::new(i).expect("valid index")
}

pub fn seq(s: u64) -> SeqNo {
    SeqNo::new(s).expect("valid seq")
}

pub fn attempt(a: u16) -> Attempt {
    Attempt::new(a).expect("valid attempt")
}

pub fn peer(i: u8) -> PeerIdBytes {
    // Shaped like an Ed25519 libp2p PeerId (identity multihash, 38 bytes).
    let mut v = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    v.extend_from_slice(&[i; 32]);
    PeerIdBytes::new(v).expect("valid peer id")
}

/// A deterministic announcement with `n` signers, creator 0, peer ids on every signer.
pub fn announcement(n: usize, topology: Topology) -> Announcement {
    let keys = keypairs(n);
    Announcement {
        signers: keys
            .iter()
            .enumerate()
            .map(|(i, k)| SignerInfo {
                key: k.public_key(),
                peer_id: Some(peer(u8::try_from(i % 256).expect("fits"))),
            })
            .collect(),
        messages: vec![MessageToSign {
            message: b"musig2-p2p test message".to_vec(),
            tweaks: vec![Tweak::new([0x01; 32], true).expect("valid tweak")],
        }],
        creator: idx(0),
        policy: Policy {
            nonce_commitment: true,
            election: musig2_proto::ElectionMethod::HashBased,
            topology,
            timeouts: Timeouts::default(),
            max_attempts: 3,
            max_failovers: 2,
        },
        salt: [0xAB; 32],
        created_at_ms: NOW,
        expires_at_ms: NOW + 600_000,
        document_digest: None,
    }
}

pub fn signed_announcement(n: usize, topology: Topology) -> SignedAnnouncement {
    announcement(n, topology)
        .sign_with_aux_rand(&keypair(0), &Limits::default(), &[0x5A; 32])
        .expect("sign announcement")
}

pub fn verified(n: usize, topology: Topology) -> VerifiedAnnouncement {
    signed_announcement(n, topology)
        .verify(NOW, &Limits::default())
        .expect("verify announcement")
}

/// Signer `i` signs `body` deterministically.
pub fn envelope(a: &VerifiedAnnouncement, i: u16, s: u64, body: Body) -> SignedEnvelope {
    Envelope::sign_with_aux_rand(
        a,
        idx(i),
        seq(s),
        NOW + 1_000 + s,
        body,
        &keypair(usize::from(i)),
        &[0x33; 32],
    )
}

/// Verified Nonce envelopes of every signer for attempt `att`.
pub fn nonce_envelopes(a: &VerifiedAnnouncement, att: u16) -> Vec<VerifiedEnvelope> {
    (0..a.signer_count())
        .map(|i| {
            let i16 = u16::try_from(i).expect("fits");
            envelope(
                a,
                i16,
                2,
                Body::Nonce {
                    attempt: attempt(att),
                    pub_nonces: vec![pub_nonce(u8::try_from(i + 1).expect("fits"))],
                },
            )
            .verify(a)
            .expect("verify nonce")
        })
        .collect()
}

/// An aggregate nonce built from the fixture nonces.
pub fn agg_nonce(a: &VerifiedAnnouncement, att: u16) -> AggNonceBytes {
    match Body::aggregate_nonce(a, attempt(att), &nonce_envelopes(a, att))
        .expect("aggregate")
        .0
    {
        Body::AggregateNonce { agg_nonces, .. } => agg_nonces[0],
        other => panic!("unexpected body {other:?}"),
    }
}
