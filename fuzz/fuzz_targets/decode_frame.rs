//! Any bytes through `decode_frame`: never panics; whatever decodes re-encodes to the same bytes
//! (the encoding is canonical) and can be run through verification without panicking.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use musig2_proto::{Announcement, Frame, Limits, Policy, SignerIndex, Topology, VerifiedAnnouncement, decode_frame};
use secp256k1::Keypair;

const NOW: u64 = 1_700_000_000_000;

fn announcement() -> &'static VerifiedAnnouncement {
    static A: OnceLock<VerifiedAnnouncement> = OnceLock::new();
    A.get_or_init(|| {
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
        a.salt = [7; 32];
        a.sign_with_aux_rand(&keys[0], &Limits::default(), &[0; 32])
            .expect("sign")
            .verify(NOW, &Limits::default())
            .expect("verify")
    })
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(frame) = decode_frame(data, &limits) {
        assert_eq!(frame.encode(), data, "decoded frame must re-encode to the same bytes");
        match &frame {
            Frame::Announcement(a) => {
                let _ = a.verify(NOW, &limits);
            }
            Frame::Envelope(e) => {
                let _ = e.verify(announcement());
            }
            Frame::Batch(entries) => {
                for e in entries {
                    let _ = e.verify(announcement());
                }
            }
        }
    }
});
