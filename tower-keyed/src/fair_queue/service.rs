use super::{
    future::ResponseFuture,
    worker::{FairQueueWorker, Message, Shared},
};
use crate::{BoxError, ExtractKey, KeyFromRequest, Keyed};
use std::{
    fmt,
    future::Future,
    sync::Arc,
    task::{Context, Poll, ready},
};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::PollSemaphore;
use tower::Service;

/// A handle to a bounded queue in front of a service, dispatching round-robin across keys; see the
/// [module docs](super).
///
/// `F` is the inner service's response future. The inner service itself belongs to the worker task, so unlike most
/// layers there is no `get_ref`/`into_inner`.
pub struct FairQueue<Req, F> {
    tx: mpsc::UnboundedSender<Message<Req, F>>,
    slots: PollSemaphore,
    /// The place reserved by `poll_ready` for the next `call`.
    slot: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
}

impl<Req, F> FairQueue<Req, F> {
    /// Puts `inner` behind a fair queue holding at most `capacity` waiting requests, spawning its worker with
    /// [`tokio::spawn`]. Requests name their key through [`Keyed`].
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime, or if `capacity` is 0.
    pub fn new<S>(inner: S, capacity: usize) -> Self
    where
        S: Service<Req, Future = F> + Send + 'static,
        S::Error: Into<BoxError>,
        F: Send + 'static,
        Req: Keyed + Send + 'static,
    {
        Self::with_key(inner, KeyFromRequest, capacity)
    }

    /// Like [`new`](Self::new), but finds each request's key with `extract`, typically a closure `|req: &Req| key`.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime, or if `capacity` is 0.
    pub fn with_key<S, X>(inner: S, extract: X, capacity: usize) -> Self
    where
        S: Service<Req, Future = F> + Send + 'static,
        S::Error: Into<BoxError>,
        F: Send + 'static,
        X: ExtractKey<Req> + Send + 'static,
        Req: Send + 'static,
    {
        let (queue, worker) = Self::pair_with_key(inner, extract, capacity);
        tokio::spawn(worker);
        queue
    }

    /// Like [`new`](Self::new), but returns the [worker](FairQueueWorker) instead of spawning it, for callers that
    /// run it themselves (as `tower::buffer::Buffer::pair` does). The worker ends once every handle is dropped and
    /// nothing is queued, or when the inner service fails.
    ///
    /// # Panics
    ///
    /// If `capacity` is 0.
    pub fn pair<S>(inner: S, capacity: usize) -> (Self, FairQueueWorker<S, Req>)
    where
        S: Service<Req, Future = F>,
        S::Error: Into<BoxError>,
        Req: Keyed,
    {
        Self::pair_with_key(inner, KeyFromRequest, capacity)
    }

    /// Like [`pair`](Self::pair), but finds each request's key with `extract`.
    ///
    /// # Panics
    ///
    /// If `capacity` is 0.
    pub fn pair_with_key<S, X>(
        inner: S,
        extract: X,
        capacity: usize,
    ) -> (Self, FairQueueWorker<S, Req, X>)
    where
        S: Service<Req, Future = F>,
        S::Error: Into<BoxError>,
        X: ExtractKey<Req>,
    {
        assert!(capacity > 0, "FairQueue needs a capacity of at least 1");
        let shared = Arc::new(Shared::new(capacity));
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = FairQueueWorker::new(inner, extract, rx, shared.clone());
        let queue = Self {
            tx,
            slots: PollSemaphore::new(shared.slots.clone()),
            slot: None,
            shared,
        };
        (queue, worker)
    }
}

impl<Req, F, Rsp, E> Service<Req> for FairQueue<Req, F>
where
    F: Future<Output = Result<Rsp, E>>,
    E: Into<BoxError>,
{
    type Response = Rsp;
    type Error = BoxError;
    type Future = ResponseFuture<F>;

    /// Reserves a place in the queue; `Pending` while the queue is full, [`QueueClosed`](super::QueueClosed) once
    /// the worker is gone.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.slot.is_none() {
            match ready!(self.slots.poll_acquire(cx)) {
                Some(slot) => self.slot = Some(slot),
                None => return Poll::Ready(Err(self.shared.closed().into())),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// # Panics
    ///
    /// If `poll_ready` did not return `Ready(Ok(()))` first.
    fn call(&mut self, request: Req) -> Self::Future {
        let slot = self
            .slot
            .take()
            .expect("FairQueue::call without a place; poll_ready must be called first");
        let (tx, rx) = oneshot::channel();
        let message = Message {
            request,
            tx,
            span: tracing::Span::current(),
            slot,
        };
        match self.tx.send(message) {
            Ok(()) => ResponseFuture::queued(rx, self.shared.clone()),
            Err(_) => ResponseFuture::failed(self.shared.closed()),
        }
    }
}

impl<Req, F> Clone for FairQueue<Req, F> {
    /// A new handle to the same queue, without a reserved place.
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            slots: self.slots.clone(),
            slot: None,
            shared: self.shared.clone(),
        }
    }
}

impl<Req, F> fmt::Debug for FairQueue<Req, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FairQueue")
            .field("free_places", &self.slots.available_permits())
            .field("reserved", &self.slot.is_some())
            .finish_non_exhaustive()
    }
}
