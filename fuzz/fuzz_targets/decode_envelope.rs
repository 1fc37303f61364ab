//! Any bytes through `SignedEnvelope::decode`: never panics; a decoded envelope re-encodes to
//! the input, and its signing hash is computable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use musig2_proto::{Limits, SignedEnvelope};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(e) = SignedEnvelope::decode(data, &limits) {
        assert_eq!(e.to_frame_bytes(), data);
        let _ = e.envelope().signing_hash();
    }
});
