//! The server reactor fed arbitrary frame sequences, with small limits so
//! the limits are reached, and responses finishing at points the input
//! chooses. Checks the reactor's own accounting after every step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wiremux_proto::flood::FloodLimits;
use wiremux_proto::server::{Action, Limits, Scope, ServerReactor, State};

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, input)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_receiving: 1 + usize::from(knobs & 0x7),
        max_args: 1 + usize::from(knobs >> 3 & 0x7),
        max_request_bytes: 64,
        max_connection_bytes: 256,
        max_send_payload: 16,
        max_discard_bytes: 96,
        flood: FloodLimits {
            window: 16,
            max_errors: u32::from(knobs >> 6 & 0x1) * 3,
            max_cancelled: 0,
            cancel_burst: 0,
        },
    };
    let mut reactor = ServerReactor::with_limits(limits.clone()).defer_output(knobs & 0x80 != 0);
    let frames = match wiremux_proto::decode_all(input) {
        Ok(frames) => frames,
        Err(_) => return,
    };
    let mut running = Vec::new();
    for frame in frames {
        // The payload's first byte, when odd, finishes the oldest running command first.
        if frame.payload.first().is_some_and(|b| b % 2 == 1) && !running.is_empty() {
            let id: u16 = running.remove(0);
            let _ = reactor.on_bytes_response(id, bytes::Bytes::from_static(b"done"));
        }
        match reactor.on_frame(frame) {
            Action::RunCommand(cmd) => {
                assert!(cmd.request_id % 2 == 1);
                assert!(cmd.args.len() <= limits.max_args);
                running.push(cmd.request_id);
            }
            Action::Error(err) if err.scope() == Scope::Connection => {
                assert_eq!(reactor.state(), State::Errored);
            }
            _ => {}
        }
        assert!(reactor.receiving() <= limits.max_receiving);
        assert!(reactor.buffered_bytes() <= limits.max_connection_bytes);
        assert_eq!(reactor.active(), running.len());
    }
    let _ = reactor.on_input_eof();
    assert_eq!(reactor.receiving(), 0);
});
