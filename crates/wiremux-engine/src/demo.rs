//! The demo commands that `wiremux serve` and `wiremux load` use, and that
//! the tests rely on: `echo`, `sleep`, `spin`, `blob`, `put`, `get`, `fail`,
//! and `add` (PROTOCOL.md §8.7), whose chains show result pipelining.

use crate::handler::{CommandError, Permission, Registry, Request, Response, SyncHandler};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Size of the chunks `blob` streams.
pub const BLOB_CHUNK: usize = 64 << 10;

/// The byte at offset `i` of a `blob` response.
pub fn blob_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// The pattern, long enough that any chunk is one slice of it.
fn pattern() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| {
        (0..BLOB_CHUNK + 251)
            .map(blob_byte)
            .collect::<Vec<u8>>()
            .into()
    })
}

/// `add a=A b=B`: the sum of two signed 64-bit decimal integers, in
/// decimal; `overflow` if it does not fit.
///
/// ```
/// use wiremux_engine::{demo::add, Body, Request};
/// let sum = |a: &str, b: &str| match add(Request::new("add").with_arg("a", a.to_string()).with_arg("b", b.to_string())) {
///     Ok(response) => match response.body { Body::Bytes(b) => String::from_utf8(b.to_vec()).unwrap(), _ => unreachable!() },
///     Err(err) => err.to_string(),
/// };
/// assert_eq!(sum("1", "2"), "3");
/// assert_eq!(sum("-5", "3"), "-2");
/// assert_eq!(sum("9223372036854775807", "1"), "overflow");
/// assert_eq!(sum("x", "1"), "malformed argument a: `x` is not a valid value");
/// assert_eq!(add(Request::new("add").with_arg("a", "1")).unwrap_err().to_string(), "missing argument: b");
/// ```
pub fn add(req: Request) -> Result<Response, CommandError> {
    let a: i64 = req.arg_parse("a")?;
    let b: i64 = req.arg_parse("b")?;
    let sum = a
        .checked_add(b)
        .ok_or_else(|| CommandError::new("overflow"))?;
    Ok(Response::bytes(sum.to_string()))
}

/// A registry with every demo command.
///
/// ```
/// let registry = wiremux_engine::demo::registry();
/// assert_eq!(registry.permission(b"put"), Some(wiremux_engine::Permission::Write));
/// assert_eq!(registry.permission(b"nope"), None);
/// ```
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    let store: Arc<Mutex<HashMap<Bytes, Bytes>>> = Arc::default();
    // Commands that answer from memory are synchronous: they run the moment
    // their request is complete, with no future to allocate. The echoed
    // data moves into the response: no reference-count traffic.
    registry.insert(
        "echo",
        Permission::Read,
        SyncHandler(|req: Request| Ok(Response::bytes(req.data.unwrap_or_default()))),
    );
    registry.insert("sleep", Permission::Read, sleep);
    registry.insert("add", Permission::Read, SyncHandler(add));
    registry.insert("spin", Permission::Read, spin);
    registry.insert("blob", Permission::Read, blob);
    registry.insert(
        "fail",
        Permission::Read,
        SyncHandler(|req: Request| Err(CommandError::new(req.arg_str("message")?.to_string()))),
    );
    let put_store = store.clone();
    registry.insert(
        "put",
        Permission::Write,
        SyncHandler(move |req: Request| {
            let key = req
                .arg("key")
                .ok_or_else(|| CommandError::new("missing argument: key"))?
                .clone();
            put_store
                .lock()
                .expect("store lock")
                .insert(key, req.data());
            Ok(Response::bytes("ok"))
        }),
    );
    registry.insert(
        "get",
        Permission::Read,
        SyncHandler(move |req: Request| {
            let key = req
                .arg("key")
                .ok_or_else(|| CommandError::new("missing argument: key"))?;
            let value = store.lock().expect("store lock").get(key).cloned();
            value.map(Response::bytes).ok_or_else(|| {
                CommandError::new(format!("no such key: {}", String::from_utf8_lossy(key)))
            })
        }),
    );
    registry
}

/// `sleep ms=N`: waits N milliseconds without holding a thread.
async fn sleep(req: Request) -> Result<Response, CommandError> {
    let ms: u64 = req.arg_parse("ms")?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(Response::bytes(ms.to_string()))
}

/// `spin us=N`: burns N microseconds of CPU on the blocking pool.
async fn spin(req: Request) -> Result<Response, CommandError> {
    let us: u64 = req.arg_parse("us")?;
    tokio::task::spawn_blocking(move || {
        let until = Instant::now() + Duration::from_micros(us);
        let mut x = 0u64;
        while Instant::now() < until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    })
    .await
    .map_err(|_| CommandError::new("spin was cancelled"))?;
    Ok(Response::bytes(us.to_string()))
}

/// `blob size=N`: N bytes where byte i is `i % 251`, streamed in chunks.
async fn blob(req: Request) -> Result<Response, CommandError> {
    let size: usize = req.arg_parse("size")?;
    let chunks = futures::stream::iter((0..size).step_by(BLOB_CHUNK).map(move |start| {
        let len = BLOB_CHUNK.min(size - start);
        let at = start % 251;
        Ok(pattern().slice(at..at + len))
    }));
    Ok(Response::stream(chunks))
}
