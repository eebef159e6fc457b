//! The limit shared by every service of one layer, and the permit a request holds while in flight.

use super::{AimdConfig, Signal};
use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard},
    task::Waker,
};

pub(super) struct Shared {
    config: AimdConfig,
    state: Mutex<State>,
}

struct State {
    limit: f64,
    in_flight: usize,
    // Bumped by every decrease; a permit remembers the generation it was taken in.
    generation: u64,
    waiters: Vec<Waker>,
}

impl Shared {
    pub(super) fn new(config: AimdConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            state: Mutex::new(State {
                limit: config.initial as f64,
                in_flight: 0,
                generation: 0,
                waiters: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves numbers that are still consistent; keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A permit when fewer than `limit` requests are in flight; otherwise `waker` is woken when one leaves.
    pub(super) fn try_acquire(self: &Arc<Self>, waker: &Waker) -> Option<Permit> {
        let mut state = self.lock();
        if state.in_flight < state.limit.floor() as usize {
            state.in_flight += 1;
            return Some(Permit {
                shared: Arc::clone(self),
                generation: state.generation,
                signal: Signal::Ignore,
            });
        }
        if !state.waiters.iter().any(|w| w.will_wake(waker)) {
            state.waiters.push(waker.clone());
        }
        None
    }

    fn release(&self, generation: u64, signal: Signal) {
        let waiters = {
            let mut state = self.lock();
            state.in_flight -= 1;
            let before = state.limit;
            match signal {
                Signal::Success => {
                    let grown = state.limit + self.config.increase / state.limit;
                    state.limit = grown.min(self.config.max as f64);
                }
                Signal::Overload if generation == state.generation => {
                    let shrunk = state.limit * self.config.decrease;
                    state.limit = shrunk.max(self.config.min as f64);
                    state.generation += 1;
                }
                Signal::Overload | Signal::Ignore => {}
            }
            if before.floor() != state.limit.floor() {
                tracing::debug!(
                    from = before.floor() as usize,
                    to = state.limit.floor() as usize,
                    ?signal,
                    "adaptive concurrency limit changed"
                );
            }
            // Wake every waiter: the limit may have grown by more than one, and a woken service that finds no room
            // registers again. Waiters are few (one per service clone polling for readiness).
            if state.in_flight < state.limit.floor() as usize {
                std::mem::take(&mut state.waiters)
            } else {
                Vec::new()
            }
        };
        for waker in waiters {
            waker.wake();
        }
    }
}

/// A place among the requests in flight. Dropping it frees the place and applies the signal it carries.
pub(super) struct Permit {
    shared: Arc<Shared>,
    generation: u64,
    signal: Signal,
}

impl Permit {
    pub(super) fn set_signal(&mut self, signal: Signal) {
        self.signal = signal;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.release(self.generation, self.signal);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("generation", &self.generation)
            .finish()
    }
}

/// Reads the current limit of an [`AdaptiveLimitLayer`](super::AdaptiveLimitLayer) and how many requests are in
/// flight under it, for metrics and logs.
#[derive(Clone)]
pub struct LimitHandle(pub(super) Arc<Shared>);

impl LimitHandle {
    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.0.lock().limit.floor() as usize
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.0.lock().in_flight
    }
}

impl fmt::Debug for LimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitHandle")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}
