use super::service::FairQueue;
use crate::{BoxError, Keyed};
use std::{fmt, marker::PhantomData};
use tower::Service;
use tower_layer::Layer;

/// Wraps a service in a [`FairQueue`] of the given capacity (spawning its worker; needs a Tokio runtime).
///
/// `Req` is the request type; it is normally inferred from the inner service.
pub struct FairQueueLayer<Req> {
    capacity: usize,
    _request: PhantomData<fn(Req)>,
}

impl<Req> FairQueueLayer<Req> {
    /// A layer whose queues hold at most `capacity` requests waiting for dispatch.
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
            capacity,
            _request: PhantomData,
        }
    }
}

impl<Req> Clone for FairQueueLayer<Req> {
    fn clone(&self) -> Self {
        Self {
            capacity: self.capacity,
            _request: PhantomData,
        }
    }
}

impl<Req> fmt::Debug for FairQueueLayer<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FairQueueLayer")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<S, Req> Layer<S> for FairQueueLayer<Req>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    Req: Keyed + Send + 'static,
{
    type Service = FairQueue<Req, S::Future>;

    fn layer(&self, inner: S) -> Self::Service {
        FairQueue::new(inner, self.capacity)
    }
}
