//! Reaches the checks that run after a valid signature: decodes an envelope from the input,
//! re-signs its content with the real key of its claimed signer in a fixed star-topology
//! announcement and in the same one in mesh (so the signature is valid), and verifies it. Body
//! rules (Join peer ids, Abort blame, star partial signatures naming an aggregate, NonceSet
//! contents, requests only in mesh) must then accept or
//! reject with an error, never panic, and a verified envelope must re-encode to a frame that
//! decodes back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use musig2_proto::{Envelope, Limits, SignedEnvelope, SignerIndex};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(e) = SignedEnvelope::decode(data, &limits) else {
        return;
    };
    for (ann, keys) in [common::star_session(), common::mesh_session()] {
        check(&e, ann, keys, &limits);
    }
});

fn check(
    e: &SignedEnvelope,
    ann: &musig2_proto::VerifiedAnnouncement,
    keys: &[secp256k1::Keypair],
    limits: &Limits,
) {
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
        let back = SignedEnvelope::decode(&bytes, limits).expect("a verified envelope re-decodes");
        assert_eq!(&back, v.signed());
    }
}
