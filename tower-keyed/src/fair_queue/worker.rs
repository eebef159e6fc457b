//! The task that owns the inner service and decides which key goes next.

use super::error::QueueClosed;
use crate::{BoxError, ExtractKey, KeyFromRequest};
use futures_util::task::AtomicWaker;
use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    error::Error,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};
use tokio::sync::{
    OwnedSemaphorePermit, Semaphore,
    mpsc::{self, error::TryRecvError},
    oneshot,
};
use tower::Service;

/// How many requests the worker dispatches in one poll before yielding to other tasks.
const DISPATCH_BUDGET: usize = 32;

/// State shared by the worker, the handles and the response futures.
pub(super) struct Shared {
    /// The queue's places; closed when the worker stops.
    pub(super) slots: Arc<Semaphore>,
    /// Why the inner service failed, once it has.
    error: Mutex<Option<Arc<dyn Error + Send + Sync>>>,
    /// Wakes the worker when a caller leaves while queued, so its place is freed without waiting for a dispatch.
    worker: AtomicWaker,
    caller_left: AtomicBool,
}

impl Shared {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(capacity)),
            error: Mutex::new(None),
            worker: AtomicWaker::new(),
            caller_left: AtomicBool::new(false),
        }
    }

    /// The error for a caller that finds the worker gone.
    pub(super) fn closed(&self) -> QueueClosed {
        QueueClosed::new(
            self.error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }

    /// Tells the worker that a queued caller dropped its response future.
    pub(super) fn caller_left(&self) {
        self.caller_left.store(true, Ordering::Release);
        self.worker.wake();
    }
}

/// A queued request.
pub(super) struct Message<Req, F> {
    pub(super) request: Req,
    pub(super) tx: oneshot::Sender<Result<F, QueueClosed>>,
    /// The caller's span, entered while calling the inner service so spans made there nest under it.
    pub(super) span: tracing::Span,
    /// The request's place in the queue, freed when the message is dispatched or dropped.
    pub(super) slot: OwnedSemaphorePermit,
}

/// The task behind a [`FairQueue`](super::FairQueue): it owns the inner service and, whenever that is ready, dispatches
/// the next request round-robin across keys.
///
/// Returned by [`FairQueue::pair`](super::FairQueue::pair) (and [`pair_with_key`](super::FairQueue::pair_with_key))
/// for callers that run it themselves, for example on an executor of their choice or under a supervisor;
/// [`FairQueue::new`](super::FairQueue::new) spawns it with `tokio::spawn`. It is a future that completes once every
/// handle is dropped and nothing is left queued, or when the inner service fails `poll_ready`. Dropping it closes the
/// queue: waiting callers get [`QueueClosed`].
pub struct FairQueueWorker<S, Req, X = KeyFromRequest>
where
    S: Service<Req>,
    X: ExtractKey<Req>,
{
    inner: S,
    extract: X,
    rx: mpsc::UnboundedReceiver<Message<Req, S::Future>>,
    /// Every handle is gone; nothing new can arrive.
    rx_closed: bool,
    /// Per key, its waiting requests in arrival order. A key is here exactly when it is in `rotation`.
    queues: HashMap<X::Key, VecDeque<Message<Req, S::Future>>>,
    /// Keys with waiting requests, next to be served first.
    rotation: VecDeque<X::Key>,
    shared: Arc<Shared>,
}

impl<S, Req, X> FairQueueWorker<S, Req, X>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    X: ExtractKey<Req>,
{
    pub(super) fn new(
        inner: S,
        extract: X,
        rx: mpsc::UnboundedReceiver<Message<Req, S::Future>>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            inner,
            extract,
            rx,
            rx_closed: false,
            queues: HashMap::new(),
            rotation: VecDeque::new(),
            shared,
        }
    }

    /// Runs until every handle is gone and the queue is empty, or the inner service fails.
    fn poll_work(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.worker.register(cx.waker());
        let mut budget = DISPATCH_BUDGET;
        loop {
            self.drain();
            if self.shared.caller_left.swap(false, Ordering::AcqRel) {
                self.prune();
            }
            if self.rotation.is_empty() {
                if self.rx_closed {
                    tracing::trace!(
                        "fair queue: every handle dropped and nothing queued; worker ends"
                    );
                    return Poll::Ready(());
                }
                match self.rx.poll_recv(cx) {
                    Poll::Ready(Some(message)) => self.enqueue(message),
                    Poll::Ready(None) => self.rx_closed = true,
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match self.inner.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => {
                    self.fail(error.into());
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => {
                    // Requests that arrived while we waited for readiness take part in this choice.
                    self.drain();
                    if let Some(message) = self.next_message() {
                        self.dispatch(message);
                        budget -= 1;
                    }
                    // Otherwise every waiting caller left meanwhile; the inner service stays reserved for the next.
                }
            }
        }
    }

    /// Moves everything already sent into the per-key queues, without waiting.
    fn drain(&mut self) {
        while !self.rx_closed {
            match self.rx.try_recv() {
                Ok(message) => self.enqueue(message),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.rx_closed = true,
            }
        }
    }

    fn enqueue(&mut self, message: Message<Req, S::Future>) {
        if message.tx.is_closed() {
            return; // The caller already left; dropping the message frees its place.
        }
        match self
            .queues
            .entry(self.extract.extract_key(&message.request))
        {
            Entry::Occupied(mut queue) => queue.get_mut().push_back(message),
            Entry::Vacant(slot) => {
                self.rotation.push_back(slot.key().clone());
                slot.insert(VecDeque::from([message]));
            }
        }
    }

    /// Drops the requests whose callers left, freeing their places, and the keys left with none.
    fn prune(&mut self) {
        self.queues.retain(|_, queue| {
            queue.retain(|message| !message.tx.is_closed());
            !queue.is_empty()
        });
        let queues = &self.queues;
        self.rotation.retain(|key| queues.contains_key(key));
    }

    /// The next request to serve: the oldest of the key at the front of the rotation, skipping callers that left.
    fn next_message(&mut self) -> Option<Message<Req, S::Future>> {
        while let Some(key) = self.rotation.pop_front() {
            let Entry::Occupied(mut queue) = self.queues.entry(key) else {
                unreachable!("a key in the rotation has a queue");
            };
            let mut next = None;
            while let Some(message) = queue.get_mut().pop_front() {
                if !message.tx.is_closed() {
                    next = Some(message);
                    break;
                }
            }
            if queue.get().is_empty() {
                queue.remove();
            } else {
                self.rotation.push_back(queue.key().clone());
            }
            if next.is_some() {
                return next;
            }
        }
        None
    }

    fn dispatch(&mut self, message: Message<Req, S::Future>) {
        let Message {
            request,
            tx,
            span,
            slot,
        } = message;
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        drop(slot);
        // If the caller left since, the inner future is dropped here and frees whatever it holds.
        let _ = tx.send(Ok(future));
    }

    /// The inner service failed: close the queue and tell every waiting caller why.
    fn fail(&mut self, error: BoxError) {
        tracing::debug!(%error, "fair queue: inner service failed; closing");
        let error: Arc<dyn Error + Send + Sync> = Arc::from(error);
        *self
            .shared
            .error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error.clone());
        self.shared.slots.close();
        // Closing first means every request sent before is in the channel now, and none can be sent after.
        self.rx.close();
        self.drain();
        let closed = QueueClosed::new(Some(error));
        self.rotation.clear();
        for (_, queue) in self.queues.drain() {
            for message in queue {
                let _ = message.tx.send(Err(closed.clone()));
            }
        }
    }
}

impl<S, Req, X> Future for FairQueueWorker<S, Req, X>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    X: ExtractKey<Req>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().poll_work(cx)
    }
}

// The worker never pins any of its fields (the inner service is only used through `&mut`), so it can be moved freely
// whatever the inner service is.
impl<S, Req, X> Unpin for FairQueueWorker<S, Req, X>
where
    S: Service<Req>,
    X: ExtractKey<Req>,
{
}

impl<S, Req, X> fmt::Debug for FairQueueWorker<S, Req, X>
where
    S: Service<Req>,
    X: ExtractKey<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FairQueueWorker")
            .field("keys_waiting", &self.rotation.len())
            .field("handles_gone", &self.rx_closed)
            .finish_non_exhaustive()
    }
}

impl<S, Req, X> Drop for FairQueueWorker<S, Req, X>
where
    S: Service<Req>,
    X: ExtractKey<Req>,
{
    fn drop(&mut self) {
        // Callers waiting for a place learn at once that none will come. Queued callers learn it from their dropped
        // senders.
        self.shared.slots.close();
    }
}
