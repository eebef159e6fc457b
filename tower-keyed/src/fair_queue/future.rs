//! The [`FairQueue`](super::FairQueue) response future.

use super::{error::QueueClosed, worker::Shared};
use crate::BoxError;
use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};
use tokio::sync::oneshot;

pin_project! {
    /// The response future of [`FairQueue`](super::FairQueue): waits to be dispatched, then drives the inner
    /// service's response future. Dropping it while queued frees the request's place; dropping it later drops the
    /// inner future and whatever that holds.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Failed { error: Option<QueueClosed> },
        // The receiver drops before `left` tells the worker, so the worker sees the caller gone when it looks.
        Queued { rx: oneshot::Receiver<Result<F, QueueClosed>>, left: CallerLeft },
        Running { #[pin] future: F },
        Done,
    }
}

/// Tells the worker when a queued caller goes away, unless disarmed on dispatch.
struct CallerLeft(Option<Arc<Shared>>);

impl CallerLeft {
    fn disarm(&mut self) -> Option<Arc<Shared>> {
        self.0.take()
    }
}

impl Drop for CallerLeft {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.caller_left();
        }
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn queued(
        rx: oneshot::Receiver<Result<F, QueueClosed>>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            state: State::Queued {
                rx,
                left: CallerLeft(Some(shared)),
            },
        }
    }

    pub(super) fn failed(error: QueueClosed) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    let error = error
                        .take()
                        .expect("ResponseFuture polled after completion");
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error.into()));
                }
                StateProj::Queued { rx, left } => {
                    let received = ready!(Pin::new(rx).poll(cx));
                    let shared = left.disarm();
                    match received {
                        Ok(Ok(future)) => this.state.set(State::Running { future }),
                        Ok(Err(closed)) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(closed.into()));
                        }
                        Err(_worker_gone) => {
                            let closed = shared
                                .map_or_else(|| QueueClosed::new(None), |shared| shared.closed());
                            this.state.set(State::Done);
                            return Poll::Ready(Err(closed.into()));
                        }
                    }
                }
                StateProj::Running { future } => {
                    let output = ready!(future.poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(output.map_err(Into::into));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Failed { .. } => "Failed",
            State::Queued { .. } => "Queued",
            State::Running { .. } => "Running",
            State::Done => "Done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
