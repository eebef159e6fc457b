use super::{Classify, state::Permit};
use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

pin_project! {
    /// The response future of [`AdaptiveLimit`](super::AdaptiveLimit): the inner response, holding the request's place
    /// until it completes. Its result is classified then; a future dropped before completing frees its place without
    /// moving the limit.
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: F,
        permit: Option<Permit>,
        classify: C,
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(super) fn new(inner: F, permit: Permit, classify: C) -> Self {
        Self {
            inner,
            permit: Some(permit),
            classify,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(mut permit) = this.permit.take() {
            permit.set_signal(this.classify.classify(&result));
        }
        Poll::Ready(result)
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("holds_place", &self.permit.is_some())
            .finish()
    }
}
