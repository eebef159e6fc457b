//! An adaptive concurrency limit: additive increase, multiplicative decrease (AIMD).
//!
//! [`AdaptiveLimit`] lets at most *limit* requests be in flight, where the limit moves with what the inner service
//! says about load: every response that a [`Classify`] calls a [`Signal::Success`] raises it by `increase / limit`
//! (about `increase` per round of `limit` successes), and a [`Signal::Overload`] (for example an HTTP 429 from a rate
//! limited API) multiplies it by `decrease`. Overloads of requests that were already in flight when the limit last
//! shrank do not shrink it again: a burst of refusals from one round of requests counts once, as in TCP congestion
//! control. The limit stays within `[min, max]`.
//!
//! All services made by one [`AdaptiveLimitLayer`] (and their clones) share one limit, so a process-wide limit is one
//! layer value used everywhere. [`AdaptiveLimitLayer::handle`] observes it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tower_keyed::adaptive_limit::{AdaptiveLimitLayer, AimdConfig, Signal};
//!
//! // A model API that answers with an HTTP-like status code.
//! let api = service_fn(|prompt: &'static str| async move { Ok::<u16, std::convert::Infallible>(if prompt.is_empty() { 429 } else { 200 }) });
//! let layer = AdaptiveLimitLayer::new(AimdConfig::new(4, 1, 16), |result: &Result<u16, _>| match result {
//!     Ok(429) => Signal::Overload,
//!     Ok(_) => Signal::Success,
//!     Err(_) => Signal::Ignore,
//! });
//! let limit = layer.handle();
//! let mut api = ServiceBuilder::new().layer(layer).service(api);
//!
//! assert_eq!(api.ready().await.unwrap().call("").await.unwrap(), 429);
//! assert_eq!(limit.limit(), 2); // halved by the refusal
//! # }
//! ```

mod future;
mod layer;
mod service;
mod state;

pub use future::ResponseFuture;
pub use layer::AdaptiveLimitLayer;
pub use service::AdaptiveLimit;
pub use state::LimitHandle;

/// What a response says about the load on the service behind the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The service coped: the limit may grow.
    Success,
    /// The service is overloaded (a rate limit, a "too busy" answer): the limit shrinks.
    Overload,
    /// The response says nothing about load (a client error, a cancelled call): the limit stays.
    Ignore,
}

/// Decides which [`Signal`] a service's result gives. Any `Fn(&Result<T, E>) -> Signal` is one.
pub trait Classify<T, E> {
    /// The signal of one result.
    fn classify(&self, result: &Result<T, E>) -> Signal;
}

impl<F, T, E> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Signal,
{
    fn classify(&self, result: &Result<T, E>) -> Signal {
        self(result)
    }
}

/// The bounds and steps of an [`AdaptiveLimit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AimdConfig {
    /// The limit to start from.
    pub initial: usize,
    /// The floor: the limit never goes below it (at least 1).
    pub min: usize,
    /// The ceiling.
    pub max: usize,
    /// Added to the limit over one round of `limit` successes (each success adds `increase / limit`).
    pub increase: f64,
    /// The factor an overload multiplies the limit by, in `(0, 1)`.
    pub decrease: f64,
}

impl AimdConfig {
    /// Start at `initial`, stay within `[min, max]`, grow by 1 per round of successes and halve on overload.
    ///
    /// # Panics
    ///
    /// If `min` is 0 or the bounds are not `min <= initial <= max`.
    pub fn new(initial: usize, min: usize, max: usize) -> Self {
        let config = Self {
            initial,
            min,
            max,
            increase: 1.0,
            decrease: 0.5,
        };
        config.check();
        config
    }

    /// The same bounds with another additive step.
    pub fn increase(mut self, increase: f64) -> Self {
        self.increase = increase;
        self.check();
        self
    }

    /// The same bounds with another multiplicative factor.
    pub fn decrease(mut self, decrease: f64) -> Self {
        self.decrease = decrease;
        self.check();
        self
    }

    fn check(&self) {
        assert!(self.min >= 1, "AimdConfig needs min of at least 1");
        assert!(
            self.min <= self.initial && self.initial <= self.max,
            "AimdConfig needs min <= initial <= max, got {} <= {} <= {}",
            self.min,
            self.initial,
            self.max
        );
        assert!(
            self.increase.is_finite() && self.increase > 0.0,
            "AimdConfig needs a positive increase"
        );
        assert!(
            self.decrease > 0.0 && self.decrease < 1.0,
            "AimdConfig needs a decrease factor between 0 and 1"
        );
    }
}

#[cfg(test)]
mod tests;
