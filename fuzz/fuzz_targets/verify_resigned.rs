//! Reaches the checks that run after a valid signature: decodes an envelope from the input,
//! re-signs its content with the real key of its claimed signer in a fixed star-topology
//! announcement (so the signature is valid), and verifies it. Body rules (Join peer ids, Abort
//! blame, AggregateNonce contents) must then accept or reject with an error, never panic, and a
//! verified envelope must re-encode to a frame that decodes back to it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use musig2_proto::{
    Announcement, Envelope, Limits, Policy, SignedEnvelope, SignerIndex, Topology,
    VerifiedAnnouncement,
};
use secp256k1::Keypair;

const NOW: u64 = 1_700_000_000_000;

fn fixture() -> &'static (VerifiedAnnouncement, Vec<Keypair>) {
    static F: OnceLock<(VerifiedAnnouncement, Vec<Keypair>)> = OnceLock::new();
    F.get_or_init(|| {
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
        a.policy = Policy { topology: Topology::Star, ..Policy::default() };
        let v = a
            .sign(&keys[0], &Limits::default())
            .expect("sign")
            .verify(NOW, &Limits::default())
            .expect("verify");
        (v, keys)
    })
}

fuzz_target!(|data: &[u8]| {
    let (ann, keys) = fixture();
    let limits = Limits::default();
    let Ok(e) = SignedEnvelope::decode(data, &limits) else { return };
    let env = e.envelope();
    let signer = env.signer().as_usize() % keys.len();
    let signer_index = SignerIndex::new(u16::try_from(signer).expect("small")).expect("index");
    let resigned = Envelope::sign(
        ann,
        signer_index,
        env.seq(),
        env.timestamp_ms(),
        env.body().clone(),
        &keys[signer],
    );
    if let Ok(v) = resigned.verify(ann) {
        assert_eq!(v.signer(), signer_index);
        let bytes = v.signed().to_frame_bytes();
        let back = SignedEnvelope::decode(&bytes, &limits).expect("a verified envelope re-decodes");
        assert_eq!(&back, v.signed());
    }
});
