use super::service::KeyedLimit;
use crate::KeyFromRequest;
use std::{fmt, hash::Hash, marker::PhantomData};
use tower_layer::Layer;

/// Applies [`KeyedLimit`] to a service: at most `max_active` requests per key in flight, `max_waiting` more waiting.
///
/// `K` is the key type; it is normally inferred from the requests the service is called with. `X` finds a request's
/// key: [`KeyFromRequest`] (the default) for [`Keyed`](crate::Keyed) requests, or any closure given to
/// [`with_key`](Self::with_key). Every service made by one layer value has its own keyed state; clone the *service*
/// to share a limit.
pub struct KeyedLimitLayer<K, X = KeyFromRequest> {
    extract: X,
    max_active: usize,
    max_waiting: usize,
    _key: PhantomData<fn(K)>,
}

impl<K> KeyedLimitLayer<K> {
    /// A layer allowing `max_active` requests per key in flight and `max_waiting` more waiting, for requests that
    /// name their key through [`Keyed`](crate::Keyed).
    ///
    /// # Panics
    ///
    /// If `max_active` is 0: no request could ever run.
    pub fn new(max_active: usize, max_waiting: usize) -> Self {
        assert!(
            max_active > 0,
            "KeyedLimitLayer needs max_active of at least 1"
        );
        Self {
            extract: KeyFromRequest,
            max_active,
            max_waiting,
            _key: PhantomData,
        }
    }
}

impl<K, X> KeyedLimitLayer<K, X> {
    /// The same limits, finding each request's key with `extract` instead, typically a closure `|req: &Req| key`
    /// (see [`ExtractKey`](crate::ExtractKey)).
    pub fn with_key<Y>(self, extract: Y) -> KeyedLimitLayer<K, Y> {
        KeyedLimitLayer {
            extract,
            max_active: self.max_active,
            max_waiting: self.max_waiting,
            _key: PhantomData,
        }
    }
}

/// One request in flight and five waiting per key.
impl<K> Default for KeyedLimitLayer<K> {
    fn default() -> Self {
        Self::new(1, 5)
    }
}

impl<K, X: Clone> Clone for KeyedLimitLayer<K, X> {
    fn clone(&self) -> Self {
        Self {
            extract: self.extract.clone(),
            max_active: self.max_active,
            max_waiting: self.max_waiting,
            _key: PhantomData,
        }
    }
}

impl<K, X> fmt::Debug for KeyedLimitLayer<K, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimitLayer")
            .field("max_active", &self.max_active)
            .field("max_waiting", &self.max_waiting)
            .finish_non_exhaustive()
    }
}

impl<S, K, X> Layer<S> for KeyedLimitLayer<K, X>
where
    K: Eq + Hash,
    X: Clone,
{
    type Service = KeyedLimit<S, K, X>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedLimit::with_key(
            inner,
            self.extract.clone(),
            self.max_active,
            self.max_waiting,
        )
    }
}
