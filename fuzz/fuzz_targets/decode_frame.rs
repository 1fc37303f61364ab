//! Any bytes through `decode_frame`: never panics; whatever decodes re-encodes to the same bytes
//! (the encoding is canonical) and can be run through verification without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use musig2_proto::{Frame, Limits, decode_frame};

#[path = "common.rs"]
mod common;
use common::NOW;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(frame) = decode_frame(data, &limits) {
        assert_eq!(
            frame.encode(),
            data,
            "decoded frame must re-encode to the same bytes"
        );
        match &frame {
            Frame::Announcement(a) => {
                let _ = a.verify(NOW, &limits);
            }
            Frame::Envelope(e) => {
                let _ = e.verify(&common::star_session().0);
                let _ = e.verify(&common::mesh_session().0);
            }
            Frame::Batch(entries) => {
                for e in entries {
                    let _ = e.verify(&common::star_session().0);
                    let _ = e.verify(&common::mesh_session().0);
                }
            }
            Frame::Signatures(finals) => {
                // What a member checks: one signature per message, each a BIP340 signature.
                assert!(!finals.signatures().is_empty());
                assert!(finals.signatures().len() <= limits.max_messages);
                for sig in finals.signatures() {
                    let _ = secp256k1::schnorr::Signature::from_byte_array(sig.to_bytes());
                }
            }
        }
    }
});
