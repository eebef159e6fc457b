//! The [`KeyedLimit`](super::KeyedLimit) response future.

use super::{error::KeyQueueFull, service::KeyGuard};
use crate::BoxError;
use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    hash::Hash,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker, ready},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower::Service;

pin_project! {
    /// The response future of [`KeyedLimit`](super::KeyedLimit): waits for the key's slot, then for the inner
    /// service, then for its response. Dropping it at any stage frees the request's place.
    //
    // `F` is `S::Future`, named as a parameter rather than projected: the future then stays `Send` inside async blocks
    // even when the inner error is `BoxError` (projections there run into rustc's higher-ranked lifetime errors).
    pub struct ResponseFuture<S, F, Req, K>
    where
        K: Eq,
        K: Hash,
    {
        // Fields drop in order: the inner future before the slot it runs under, the slot before the key's count.
        #[pin]
        state: State<F>,
        permit: Option<OwnedSemaphorePermit>,
        inner: Option<S>,
        request: Option<Req>,
        guard: Option<KeyGuard<K>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // The key had too many requests; resolves at once.
        Refused { error: Option<KeyQueueFull> },
        // Waiting in the key's line for a slot.
        Acquiring { slots: PollSemaphore },
        // Holding a slot, waiting for the inner service to be ready.
        Readying,
        // Holding a slot, driving the inner response.
        Calling { #[pin] future: F },
        Done,
    }
}

impl<S, Req, K> ResponseFuture<S, S::Future, Req, K>
where
    S: Service<Req>,
    K: Eq + Hash,
{
    pub(super) fn refused(error: KeyQueueFull) -> Self {
        Self {
            state: State::Refused { error: Some(error) },
            permit: None,
            inner: None,
            request: None,
            guard: None,
        }
    }

    pub(super) fn admitted(
        slots: Arc<Semaphore>,
        guard: KeyGuard<K>,
        inner: S,
        request: Req,
    ) -> Self {
        let mut slots = PollSemaphore::new(slots);
        // Join the key's line now rather than at the first poll, so requests of one key run in the order they were
        // called even when their futures are first polled in another order. The real waker replaces the no-op one
        // when the future is polled.
        let state = match slots.poll_acquire(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Some(permit)) => {
                return Self::with(State::Readying, Some(permit), inner, request, guard);
            }
            Poll::Ready(None) | Poll::Pending => State::Acquiring { slots },
        };
        Self::with(state, None, inner, request, guard)
    }

    fn with(
        state: State<S::Future>,
        permit: Option<OwnedSemaphorePermit>,
        inner: S,
        request: Req,
        guard: KeyGuard<K>,
    ) -> Self {
        Self {
            state,
            permit,
            inner: Some(inner),
            request: Some(request),
            guard: Some(guard),
        }
    }
}

impl<S, F, Req, K> Future for ResponseFuture<S, F, Req, K>
where
    S: Service<Req, Future = F>,
    F: Future<Output = Result<S::Response, S::Error>>,
    S::Error: Into<BoxError>,
    K: Eq + Hash,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Refused { error } => {
                    let error = error
                        .take()
                        .expect("ResponseFuture polled after completion");
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error.into()));
                }
                StateProj::Acquiring { slots } => match ready!(slots.poll_acquire(cx)) {
                    Some(permit) => {
                        *this.permit = Some(permit);
                        this.state.set(State::Readying);
                    }
                    None => unreachable!("per-key semaphores are never closed"),
                },
                StateProj::Readying => {
                    let inner = this
                        .inner
                        .as_mut()
                        .expect("inner service is present until called");
                    if let Err(error) = ready!(inner.poll_ready(cx)) {
                        finish(this.state, this.permit, this.guard);
                        return Poll::Ready(Err(error.into()));
                    }
                    let request = this
                        .request
                        .take()
                        .expect("request is present until called");
                    let future = inner.call(request);
                    // The clone was only needed to call; a clone may hold resources (e.g. a reserved slot).
                    *this.inner = None;
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let output = ready!(future.poll(cx));
                    // Free the slot as soon as the response is there, even if the caller keeps the future around.
                    finish(this.state, this.permit, this.guard);
                    return Poll::Ready(output.map_err(Into::into));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

fn finish<F, K: Eq + Hash>(
    mut state: Pin<&mut State<F>>,
    permit: &mut Option<OwnedSemaphorePermit>,
    guard: &mut Option<KeyGuard<K>>,
) {
    state.set(State::Done);
    *permit = None;
    *guard = None;
}

impl<S, F, Req, K> fmt::Debug for ResponseFuture<S, F, Req, K>
where
    K: Eq + Hash,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Refused { .. } => "Refused",
            State::Acquiring { .. } => "Acquiring",
            State::Readying => "Readying",
            State::Calling { .. } => "Calling",
            State::Done => "Done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
