//! The raw-frame echo server, the floor every engine figure is compared
//! with, and the frame splitter its clients share. Included with
//! `#[path]` by benches/e2e.rs, examples/loadgen.rs and
//! examples/instructions.rs, so that all three measure the same server.

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wiremux::proto::{Flags, FrameType, Header, HEADER_LEN};

/// Reads what is there, answers every complete command in it, writes all
/// the answers at once. Only what the benchmarks send is understood: a
/// command's last data frame (or a name frame with `eos`) completes it
/// and is answered with one `eos` bytes-response holding its data; other
/// frames are skipped. Returns when the peer closes or on an error.
pub async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO) {
    let (mut rbuf, mut wbuf) = (
        BytesMut::with_capacity(64 << 10),
        BytesMut::with_capacity(64 << 10),
    );
    loop {
        rbuf.reserve(16 << 10);
        match io.read_buf(&mut rbuf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        for_each_frame(&mut rbuf, |header, payload| {
            let data: &[u8] = match header.frame_type {
                FrameType::COMMAND_DATA if header.flags.contains(Flags::DATA_EOS) => payload,
                FrameType::COMMAND_NAME if header.flags.contains(Flags::EOS) => &[],
                _ => return,
            };
            put_answer(&mut wbuf, header.request_id, data);
        });
        if !wbuf.is_empty() {
            if io.write_all(&wbuf).await.is_err() {
                return;
            }
            wbuf.clear();
        }
    }
}

/// Appends the answer to request `request_id` whose data is `data`: one
/// `eos` bytes-response holding it.
pub fn put_answer(out: &mut BytesMut, request_id: u16, data: &[u8]) {
    let response = Header {
        length: data.len(),
        request_id,
        frame_type: FrameType::BYTES_RESPONSE,
        flags: Flags::new(Flags::DATA_EOS),
    };
    out.put_slice(&response.to_bytes());
    out.put_slice(data);
}

/// Calls `f` with every complete frame at the front of `buf` and removes
/// them; a partial frame stays for the next read.
pub fn for_each_frame(buf: &mut BytesMut, mut f: impl FnMut(Header, &[u8])) {
    let mut at = 0;
    while buf.len() - at >= HEADER_LEN {
        let head: &[u8; HEADER_LEN] = buf[at..at + HEADER_LEN].try_into().expect("header");
        let header = Header::parse(head);
        let end = at + HEADER_LEN + header.length;
        if end > buf.len() {
            break;
        }
        f(header, &buf[at + HEADER_LEN..end]);
        at = end;
    }
    buf.advance(at);
}
