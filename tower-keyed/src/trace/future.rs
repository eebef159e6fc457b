//! The [`Trace`](super::Trace) response future.

use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};
use tokio::time::Instant;

pin_project! {
    /// The response future of [`Trace`](super::Trace): polls the inner future inside the request's span and records
    /// the outcome when it completes. Its output is the inner future's, unchanged.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        span: tracing::Span,
        started: Instant,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(future: F, span: tracing::Span, started: Instant) -> Self {
        Self {
            future,
            span,
            started,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: fmt::Display,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let output = ready!(this.future.poll(cx));
        let elapsed_ms = u64::try_from(this.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &output {
            Ok(_) => tracing::debug!(outcome = "ok", elapsed_ms, "request finished"),
            Err(error) => {
                tracing::debug!(outcome = "error", elapsed_ms, %error, "request finished");
            }
        }
        Poll::Ready(output)
    }
}
