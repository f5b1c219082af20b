//! What a call's handle and the driver share: where the call is, whether a
//! later call needs its body, and its result once it has one.

use super::{Error, Response};
use bytes::Bytes;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

/// One call's shared state.
#[derive(Debug)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
pub(crate) struct SlotState {
    /// The request ID, once the call has been written.
    pub id: Option<u16>,
    /// Written with `@keep`: the server keeps its body for `@use`.
    pub kept: bool,
    /// A later call uses this call's body: send it with `@keep` if it has
    /// not been written yet.
    pub keep: bool,
    /// Started calls that depend on this one and have no answer yet; while
    /// there are any, dropping this call's handle does not cancel it.
    pub dependents: u32,
    /// The handle went away without the result.
    pub abandoned: bool,
    /// The answer, once it has come (kept for dependents, cloned for the
    /// handle: the body is shared, not copied).
    pub result: Option<Result<Response, Error>>,
    pub waker: Option<Waker>,
}

impl Slot {
    pub fn new() -> Arc<Slot> {
        Arc::new(Slot {
            state: Mutex::new(SlotState::default()),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding the lock leaves plain data behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the result (the first one wins) and wakes the handle.
    pub fn finish(&self, result: Result<Response, Error>) {
        let waker = {
            let mut state = self.lock();
            if state.result.is_some() {
                return;
            }
            state.result = Some(result);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Identity, for maps keyed by call.
    pub fn key(self: &Arc<Slot>) -> usize {
        Arc::as_ptr(self) as usize
    }
}

/// A dependency of a call: the call it waits for, and the argument name
/// its body becomes, if it is used and not only waited for.
#[derive(Debug, Clone)]
pub(crate) struct Dep {
    pub slot: Arc<Slot>,
    pub name: Option<Bytes>,
}

/// What a call needs besides its command: dependencies, a timeout, `@keep`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Extras {
    pub deps: Vec<Dep>,
    pub timeout: Option<Duration>,
    pub keep: bool,
}

impl Extras {
    /// Adds a dependency; a used one asks its call to be kept.
    pub fn depend(&mut self, slot: Arc<Slot>, name: Option<Bytes>) {
        if name.is_some() {
            slot.lock().keep = true;
        }
        self.deps.push(Dep { slot, name });
    }

    /// The call is started: its dependencies count it.
    pub fn started(&self) {
        for dep in &self.deps {
            dep.slot.lock().dependents += 1;
        }
    }

    /// No dependency, no timeout, no keep.
    pub fn is_empty(&self) -> bool {
        self.deps.is_empty() && self.timeout.is_none() && !self.keep
    }

    /// The call has its answer: its dependencies stop counting it.
    pub fn ended(&self) {
        for dep in &self.deps {
            let mut state = dep.slot.lock();
            state.dependents = state.dependents.saturating_sub(1);
        }
    }
}
