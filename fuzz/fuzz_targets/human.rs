//! The human-syntax parser on arbitrary text: never panics, and a parsed
//! frame formats to a line that parses to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wiremux_proto::human::{format_frame, parse_frame};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(frame) = parse_frame(line) {
        let again = parse_frame(&format_frame(&frame)).expect("formatted frames parse");
        assert_eq!(again, frame);
    }
});
