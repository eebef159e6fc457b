use super::service::PerUserLimit;
use std::{fmt, marker::PhantomData};
use tower_layer::Layer;

/// Applies [`PerUserLimit`] to a service: at most `max_active` requests per key in flight, `max_waiting` more waiting.
///
/// `K` is the key type ([`Keyed::Key`](crate::Keyed::Key)); it is normally inferred from the requests the
/// service is called with. Every service made by one layer value has its own keyed state; clone the *service* to
/// share a limit.
pub struct PerUserLimitLayer<K> {
    max_active: usize,
    max_waiting: usize,
    _key: PhantomData<fn(K)>,
}

impl<K> PerUserLimitLayer<K> {
    /// A layer allowing `max_active` requests per key in flight and `max_waiting` more waiting.
    ///
    /// # Panics
    ///
    /// If `max_active` is 0: no request could ever run.
    pub fn new(max_active: usize, max_waiting: usize) -> Self {
        assert!(
            max_active > 0,
            "PerUserLimitLayer needs max_active of at least 1"
        );
        Self {
            max_active,
            max_waiting,
            _key: PhantomData,
        }
    }
}

/// One request in flight and five waiting per key.
impl<K> Default for PerUserLimitLayer<K> {
    fn default() -> Self {
        Self::new(1, 5)
    }
}

impl<K> Clone for PerUserLimitLayer<K> {
    fn clone(&self) -> Self {
        Self {
            max_active: self.max_active,
            max_waiting: self.max_waiting,
            _key: PhantomData,
        }
    }
}

impl<K> fmt::Debug for PerUserLimitLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerUserLimitLayer")
            .field("max_active", &self.max_active)
            .field("max_waiting", &self.max_waiting)
            .finish()
    }
}

impl<S, K> Layer<S> for PerUserLimitLayer<K>
where
    K: Eq + std::hash::Hash,
{
    type Service = PerUserLimit<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        PerUserLimit::new(inner, self.max_active, self.max_waiting)
    }
}
