use super::{
    Classify, LimitHandle,
    future::ResponseFuture,
    state::{Permit, Shared},
};
use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll, ready},
};
use tower::Service;

/// Lets at most the current adaptive limit of requests be in flight; see the [module docs](super).
///
/// `poll_ready` reserves a place (waiting for one when the limit is reached), `call` hands it to the response future,
/// and the place is freed when that future completes or is dropped. Errors of the inner service pass through.
pub struct AdaptiveLimit<S, C> {
    inner: S,
    classify: C,
    shared: Arc<Shared>,
    permit: Option<Permit>,
}

impl<S, C> AdaptiveLimit<S, C> {
    pub(super) fn new(inner: S, shared: Arc<Shared>, classify: C) -> Self {
        Self {
            inner,
            classify,
            shared,
            permit: None,
        }
    }

    /// A handle that reads the shared limit.
    pub fn handle(&self) -> LimitHandle {
        LimitHandle(Arc::clone(&self.shared))
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the limit.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Req> Service<Req> for AdaptiveLimit<S, C>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.permit.is_none() {
            match self.shared.try_acquire(cx.waker()) {
                Some(permit) => self.permit = Some(permit),
                None => return Poll::Pending,
            }
        }
        // Keep the place while the inner service gets ready: it was reserved for this service's next call.
        ready!(self.inner.poll_ready(cx))?;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let permit = self
            .permit
            .take()
            .expect("AdaptiveLimit::call without poll_ready returning Ready first");
        ResponseFuture::new(self.inner.call(request), permit, self.classify.clone())
    }
}

impl<S: Clone, C: Clone> Clone for AdaptiveLimit<S, C> {
    /// A clone shares the limit but not a place reserved by `poll_ready`.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            classify: self.classify.clone(),
            shared: Arc::clone(&self.shared),
            permit: None,
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for AdaptiveLimit<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("inner", &self.inner)
            .field("limit", &self.handle())
            .field("holds_place", &self.permit.is_some())
            .finish()
    }
}
