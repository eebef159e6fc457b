use super::{future::ResponseFuture, layer::MakeSpan};
use std::{
    fmt,
    task::{Context, Poll},
};
use tokio::time::Instant;
use tower::Service;

/// Runs each request of the inner service in its own span; see the [module docs](super).
///
/// Errors pass through unchanged: the service's error type is the inner service's.
#[derive(Debug, Clone)]
pub struct Trace<S, M> {
    inner: S,
    make_span: M,
}

impl<S, M> Trace<S, M> {
    /// Wraps `inner`, making each request's span with `make_span`.
    pub fn new(inner: S, make_span: M) -> Self {
        Self { inner, make_span }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes the layer, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, M, Req> Service<Req> for Trace<S, M>
where
    S: Service<Req>,
    S::Error: fmt::Display,
    M: MakeSpan<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let span = self.make_span.make_span(&request);
        let started = Instant::now();
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ResponseFuture::new(future, span, started)
    }
}
