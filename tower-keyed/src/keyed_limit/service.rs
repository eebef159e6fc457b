use super::{error::KeyQueueFull, future::ResponseFuture};
use crate::{BoxError, ExtractKey, KeyFromRequest};
use std::{
    collections::HashMap,
    fmt,
    hash::Hash,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
};
use tokio::sync::Semaphore;
use tower::Service;

/// Limits each key to `max_active` requests in flight and `max_waiting` more waiting; see the
/// [module docs](super).
///
/// `K` is the key type and `X` the [`ExtractKey`] that finds a request's key ([`KeyFromRequest`] by default, for
/// [`Keyed`](crate::Keyed) requests). Clones share one keyed state, so a limit holds across every clone of the
/// service.
pub struct KeyedLimit<S, K, X = KeyFromRequest> {
    inner: S,
    extract: X,
    keys: Keys<K>,
    max_active: usize,
    max_waiting: usize,
}

impl<S, K> KeyedLimit<S, K>
where
    K: Eq + Hash,
{
    /// Wraps `inner`, allowing `max_active` requests per key in flight and `max_waiting` more waiting; requests name
    /// their key through [`Keyed`](crate::Keyed).
    ///
    /// # Panics
    ///
    /// If `max_active` is 0: no request could ever run.
    pub fn new(inner: S, max_active: usize, max_waiting: usize) -> Self {
        Self::with_key(inner, KeyFromRequest, max_active, max_waiting)
    }
}

impl<S, K, X> KeyedLimit<S, K, X>
where
    K: Eq + Hash,
{
    /// Like [`new`](KeyedLimit::new), but finds each request's key with `extract`, typically a closure
    /// `|req: &Req| key`.
    ///
    /// # Panics
    ///
    /// If `max_active` is 0: no request could ever run.
    pub fn with_key(inner: S, extract: X, max_active: usize, max_waiting: usize) -> Self {
        assert!(max_active > 0, "KeyedLimit needs max_active of at least 1");
        Self {
            inner,
            extract,
            keys: Keys::default(),
            max_active,
            max_waiting,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes the limit, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// How many keys have a request waiting or in flight right now (the entries held in memory).
    pub fn active_keys(&self) -> usize {
        self.keys.lock().len()
    }
}

impl<S, K, X, Req> Service<Req> for KeyedLimit<S, K, X>
where
    X: ExtractKey<Req, Key = K>,
    K: Clone + Eq + Hash,
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future, Req, K>;

    /// Always ready: the key is only known in `call`, so the response future waits for the key's slot and then for
    /// the inner service's readiness.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let key = self.extract.extract_key(&request);
        let max_admitted = self.max_active.saturating_add(self.max_waiting);
        match self.keys.admit(key, self.max_active, max_admitted) {
            Some((semaphore, guard)) => {
                ResponseFuture::admitted(semaphore, guard, self.inner.clone(), request)
            }
            None => ResponseFuture::refused(KeyQueueFull::new(self.max_active, self.max_waiting)),
        }
    }
}

impl<S: Clone, K, X: Clone> Clone for KeyedLimit<S, K, X> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            extract: self.extract.clone(),
            keys: self.keys.clone(),
            max_active: self.max_active,
            max_waiting: self.max_waiting,
        }
    }
}

impl<S: fmt::Debug, K, X> fmt::Debug for KeyedLimit<S, K, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimit")
            .field("inner", &self.inner)
            .field("max_active", &self.max_active)
            .field("max_waiting", &self.max_waiting)
            .finish_non_exhaustive()
    }
}

/// What one key with requests waiting or in flight holds.
struct KeyState {
    /// `max_active` permits; a request in flight holds one.
    slots: Arc<Semaphore>,
    /// Requests admitted and not yet finished, waiting or in flight. One counter rather than two: a request moves from
    /// waiting to active inside the semaphore (a released permit is handed to the next waiter at once), so only the
    /// sum is exact at every instant.
    admitted: usize,
}

/// The keyed state shared by every clone of a [`KeyedLimit`].
pub(super) struct Keys<K>(Arc<Mutex<HashMap<K, KeyState>>>);

impl<K> Default for Keys<K> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<K> Clone for Keys<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K> Keys<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, KeyState>> {
        // The map is consistent between statements, so a panic elsewhere while it was locked leaves it usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Clone + Eq + Hash> Keys<K> {
    /// Counts a request for `key` if the key has fewer than `max_admitted`, returning the key's slots and a guard that
    /// uncounts it.
    fn admit(
        &self,
        key: K,
        max_active: usize,
        max_admitted: usize,
    ) -> Option<(Arc<Semaphore>, KeyGuard<K>)> {
        let mut keys = self.lock();
        let state = keys.entry(key.clone()).or_insert_with(|| KeyState {
            slots: Arc::new(Semaphore::new(max_active)),
            admitted: 0,
        });
        if state.admitted >= max_admitted {
            // Only possible for an existing entry (max_admitted >= max_active >= 1), so nothing to clean up.
            return None;
        }
        state.admitted += 1;
        let slots = state.slots.clone();
        Some((
            slots,
            KeyGuard {
                keys: self.clone(),
                key,
            },
        ))
    }
}

/// One admitted request's place in its key's count; dropping it frees the place and, when the key has nothing left
/// waiting or in flight, the key's entry.
pub(super) struct KeyGuard<K: Eq + Hash> {
    keys: Keys<K>,
    key: K,
}

impl<K: Eq + Hash> Drop for KeyGuard<K> {
    fn drop(&mut self) {
        let mut keys = self.keys.lock();
        let Some(state) = keys.get_mut(&self.key) else {
            return;
        };
        state.admitted -= 1;
        if state.admitted == 0 {
            keys.remove(&self.key);
            // A burst of many keys would otherwise leave the table at its peak size forever. Shrinking only below a
            // quarter of the capacity keeps the cost amortised.
            if keys.capacity() > 64 && keys.len() * 4 < keys.capacity() {
                let len = keys.len();
                keys.shrink_to(len * 2);
            }
        }
    }
}
