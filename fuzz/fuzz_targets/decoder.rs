//! The frame decoder on arbitrary bytes: whole, and fed in two pieces at a
//! split point chosen by the input. Both must agree, and nothing may panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wiremux_proto::FrameCodec;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let whole = wiremux_proto::decode_all(input);

    let mut codec = FrameCodec::new();
    let cut = usize::from(split) * input.len() / 256;
    let mut buf = BytesMut::from(&input[..cut]);
    let mut frames = Vec::new();
    let mut failed = false;
    while let Ok(Some(frame)) = codec.decode_frame(&mut buf) {
        frames.push(frame);
    }
    buf.extend_from_slice(&input[cut..]);
    loop {
        match codec.decode_frame_eof(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    match whole {
        Ok(all) => {
            assert!(!failed);
            assert_eq!(all, frames);
            // Re-encoding what was decoded gives the input back.
            let mut again = Vec::new();
            for f in &all {
                f.encode(&mut again);
            }
            assert_eq!(again, input);
        }
        Err(_) => assert!(failed),
    }
});
