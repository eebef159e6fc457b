use super::{AimdConfig, LimitHandle, service::AdaptiveLimit, state::Shared};
use std::{fmt, sync::Arc};
use tower_layer::Layer;

/// Applies an [`AdaptiveLimit`] to services. Every service this layer (or a clone of it) makes shares one limit.
pub struct AdaptiveLimitLayer<C> {
    shared: Arc<Shared>,
    classify: C,
}

impl<C> AdaptiveLimitLayer<C> {
    /// A layer whose limit follows `config`, moved by what `classify` says of each result.
    pub fn new(config: AimdConfig, classify: C) -> Self {
        Self {
            shared: Shared::new(config),
            classify,
        }
    }

    /// A handle that reads the shared limit.
    pub fn handle(&self) -> LimitHandle {
        LimitHandle(Arc::clone(&self.shared))
    }
}

impl<C: Clone> Clone for AdaptiveLimitLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            classify: self.classify.clone(),
        }
    }
}

impl<C> fmt::Debug for AdaptiveLimitLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimitLayer")
            .field("limit", &self.handle())
            .finish()
    }
}

impl<S, C: Clone> Layer<S> for AdaptiveLimitLayer<C> {
    type Service = AdaptiveLimit<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimit::new(inner, Arc::clone(&self.shared), self.classify.clone())
    }
}
