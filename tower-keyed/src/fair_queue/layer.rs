use super::service::FairQueue;
use crate::{BoxError, ExtractKey, KeyFromRequest};
use std::{fmt, marker::PhantomData};
use tower::Service;
use tower_layer::Layer;

/// Wraps a service in a [`FairQueue`] of the given capacity (spawning its worker; needs a Tokio runtime).
///
/// `Req` is the request type; it is normally inferred from the inner service. `X` finds a request's key:
/// [`KeyFromRequest`] (the default) for [`Keyed`](crate::Keyed) requests, or any closure given to
/// [`with_key`](Self::with_key).
pub struct FairQueueLayer<Req, X = KeyFromRequest> {
    extract: X,
    capacity: usize,
    _request: PhantomData<fn(Req)>,
}

impl<Req> FairQueueLayer<Req> {
    /// A layer whose queues hold at most `capacity` requests waiting for dispatch, for requests that name their key
    /// through [`Keyed`](crate::Keyed).
    ///
    /// # Panics
    ///
    /// If `capacity` is 0.
    pub fn new(capacity: usize) -> Self {
        assert!(
            capacity > 0,
            "FairQueueLayer needs a capacity of at least 1"
        );
        Self {
            extract: KeyFromRequest,
            capacity,
            _request: PhantomData,
        }
    }
}

impl<Req, X> FairQueueLayer<Req, X> {
    /// The same queue, finding each request's key with `extract` instead, typically a closure `|req: &Req| key`
    /// (see [`ExtractKey`]).
    pub fn with_key<Y>(self, extract: Y) -> FairQueueLayer<Req, Y> {
        FairQueueLayer {
            extract,
            capacity: self.capacity,
            _request: PhantomData,
        }
    }
}

impl<Req, X: Clone> Clone for FairQueueLayer<Req, X> {
    fn clone(&self) -> Self {
        Self {
            extract: self.extract.clone(),
            capacity: self.capacity,
            _request: PhantomData,
        }
    }
}

impl<Req, X> fmt::Debug for FairQueueLayer<Req, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FairQueueLayer")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<S, Req, X> Layer<S> for FairQueueLayer<Req, X>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    X: ExtractKey<Req> + Clone + Send + 'static,
    Req: Send + 'static,
{
    type Service = FairQueue<Req, S::Future>;

    fn layer(&self, inner: S) -> Self::Service {
        FairQueue::with_key(inner, self.extract.clone(), self.capacity)
    }
}
