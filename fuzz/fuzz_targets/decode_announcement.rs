//! Any bytes through `SignedAnnouncement::decode` and `verify`: never panics; a decoded
//! announcement re-encodes to the input and its session id is stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use musig2_proto::{Limits, SignedAnnouncement};

fuzz_target!(|data: &[u8]| {
    // Small limits too, so the limit paths are exercised.
    for limits in [
        Limits::default(),
        Limits {
            max_signers: 2,
            max_message_bytes: 8,
            max_tweaks: 1,
            ..Limits::default()
        },
    ] {
        if let Ok(a) = SignedAnnouncement::decode(data, &limits) {
            assert_eq!(a.to_frame_bytes(), data);
            assert_eq!(a.session_id(), a.session_id());
            let _ = a.verify(a.announcement().created_at_ms, &limits);
        }
    }
});
