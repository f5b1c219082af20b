//! The client response assembler on arbitrary frames from a server: never
//! panics, and each request completes at most once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use wiremux_proto::client::ResponseAssembler;

fuzz_target!(|data: &[u8]| {
    let Ok(frames) = wiremux_proto::decode_all(data) else {
        return;
    };
    let mut assembler = ResponseAssembler::new().max_response(1 << 12);
    for id in (1..64).step_by(2) {
        assembler.expect(id);
    }
    let mut done = HashSet::new();
    for frame in frames {
        if let Ok(Some(response)) = assembler.on_frame(frame) {
            assert!(
                done.insert(response.request_id),
                "request {} completed twice",
                response.request_id
            );
        }
    }
    assert_eq!(assembler.pending() + done.len(), 32);
});
