//! Chat completions against an OpenAI-compatible API, as one Tower stack per process.
//!
//! ```text
//! ModelClient ──► RetryPolicy ──► AdaptiveLimit (AIMD) ──► count tries ──► HTTP (reqwest)
//!                 429 → Retry-After   429 → shrink, ok → grow
//! ```
//! # Order
//! The retry sits outside the limit so that a request waiting out a `Retry-After` does not hold a place in the
//! limit, and every try (first or retry) takes its own place, so the limit sees each 429 the API sends.
//!
//! The requests are sent with our own `reqwest` client rather than async-openai's: its client retries 429s by
//! itself and hides the response headers, and this stack must honour `Retry-After` and feed 429s to the limit. The
//! wire types are the five fields we use, defined in its `http` file rather than pulled from async-openai.

mod http;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_keyed::{
    AdaptiveLimitLayer, AimdConfig, Backoff, Decision, LimitHandle, RetryPolicy, Signal,
};

use crate::config::Secret;

pub use http::{DEFAULT_BASE_URL, HttpModel};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: "assistant".into(),
            content: content.into(),
        }
    }
}

/// A chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// Model name.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature; dropped for models that reject it (see [`takes_temperature`]).
    pub temperature: Option<f32>,
    /// `low`, `medium`, `high`…; sent only to models that take it (see [`takes_reasoning_effort`]).
    pub reasoning_effort: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
}

/// The model's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatReply {
    /// The text of the first choice.
    pub content: String,
    /// Tokens of the prompt, as the API counted them (0 when it did not say).
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Why generation stopped (`stop`, `length`, …).
    pub finish_reason: Option<String>,
    /// Tries beyond the first this call took (filled in by [`ModelClient::complete`]).
    pub retries: u32,
}

/// Why a model call failed. No variant ever holds the API key.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// HTTP 429.
    #[error("the model API is rate limiting us: {message}")]
    RateLimited {
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
        /// The API's message.
        message: String,
    },
    /// HTTP 5xx.
    #[error("the model API failed with HTTP {status}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The API's message.
        message: String,
    },
    /// No answer within the request timeout (or HTTP 408).
    #[error("the model API did not answer in time")]
    Timeout,
    /// The connection failed.
    #[error("could not reach the model API")]
    Transport(#[source] reqwest::Error),
    /// HTTP 401 or 403.
    #[error("the model API refused the credentials: {message}")]
    Auth {
        /// The API's message, with anything key-like removed.
        message: String,
    },
    /// HTTP 404, or an error code saying the model does not exist.
    #[error("the model does not exist at this API: {message}")]
    UnknownModel {
        /// The API's message.
        message: String,
    },
    /// The conversation is longer than the model's context window.
    #[error("the conversation exceeds the model's context window: {message}")]
    ContextLength {
        /// The API's message.
        message: String,
    },
    /// Another 4xx: the request itself is wrong.
    #[error("the model API rejected the request with HTTP {status}: {message}")]
    BadRequest {
        /// HTTP status.
        status: u16,
        /// The API's message.
        message: String,
    },
    /// A 2xx body that is not a chat completion (truncated JSON, no choices).
    #[error("the model API's answer is not a chat completion: {message}")]
    Malformed {
        /// What was wrong.
        message: String,
    },
}

/// What the retry policy does with a result.
pub fn retry_decision(result: &Result<ChatReply, ModelError>) -> Decision {
    match result {
        Ok(_) => Decision::Stop,
        Err(ModelError::RateLimited {
            retry_after: Some(d),
            ..
        }) => Decision::RetryAfter(*d),
        Err(
            ModelError::RateLimited {
                retry_after: None, ..
            }
            | ModelError::Server { .. }
            | ModelError::Timeout
            | ModelError::Transport(_)
            | ModelError::Malformed { .. },
        ) => Decision::Retry,
        Err(
            ModelError::Auth { .. }
            | ModelError::UnknownModel { .. }
            | ModelError::ContextLength { .. }
            | ModelError::BadRequest { .. },
        ) => Decision::Stop,
    }
}

/// What the adaptive limit learns from a result: only a 429 says the API is overloaded.
pub fn load_signal(result: &Result<ChatReply, ModelError>) -> Signal {
    match result {
        Ok(_) => Signal::Success,
        Err(ModelError::RateLimited { .. }) => Signal::Overload,
        Err(_) => Signal::Ignore,
    }
}

/// Reasoning models (o1, o3, o4 and gpt-5 families, with or without a `provider/` prefix) take
/// `reasoning_effort`; others reject it.
pub fn takes_reasoning_effort(model: &str) -> bool {
    let name = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|family| name.starts_with(family))
}

/// The same reasoning families accept only the default temperature, so it is dropped for them and sent to all
/// others.
pub fn takes_temperature(model: &str) -> bool {
    !takes_reasoning_effort(model)
}

/// Bounds of the process-wide stack.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelLimits {
    /// Calls in flight at the start.
    pub initial: usize,
    /// Fewest calls in flight the limit shrinks to.
    pub min: usize,
    /// Most calls in flight the limit grows to.
    pub max: usize,
    /// Longest one HTTP request may take.
    pub request_timeout: Duration,
    /// Retries and back-off.
    pub backoff: Backoff,
}

/// 8 calls in flight, between 1 and 64; 10 minutes per request; [`Backoff::default`].
impl Default for ModelLimits {
    fn default() -> Self {
        Self {
            initial: 8,
            min: 1,
            max: 64,
            request_timeout: Duration::from_secs(600),
            backoff: Backoff::default(),
        }
    }
}

/// One call through the stack: the request and a counter of the tries it took (shared by the clones the retry
/// layer makes).
#[derive(Debug, Clone)]
pub struct Call {
    request: ChatRequest,
    tries: Arc<AtomicU32>,
}

/// A cloneable handle on the model stack; build it once per process and share it.
#[derive(Clone)]
pub struct ModelClient {
    service: BoxCloneSyncService<Call, ChatReply, ModelError>,
    limit: Option<LimitHandle>,
}

impl std::fmt::Debug for ModelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelClient")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl ModelClient {
    /// The full stack (retry, adaptive limit, HTTP) against `base_url` (default [`DEFAULT_BASE_URL`]).
    ///
    /// # Panics
    ///
    /// If `settings` has bounds that are not `1 <= min <= initial <= max`.
    pub fn new(
        api_key: &Secret,
        base_url: Option<&str>,
        settings: ModelLimits,
    ) -> Result<Self, ModelError> {
        let http = HttpModel::new(api_key, base_url, settings.request_timeout)?;
        Ok(Self::with_stack(http, settings))
    }

    /// The retry and limit layers of [`ModelClient::new`] around any service (a scripted model in tests).
    ///
    /// # Panics
    ///
    /// If `settings` has bounds that are not `1 <= min <= initial <= max`.
    pub fn with_stack<S>(service: S, settings: ModelLimits) -> Self
    where
        S: Service<ChatRequest, Response = ChatReply, Error = ModelError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        type Classify<R> = fn(&Result<ChatReply, ModelError>) -> R;
        let limit = AdaptiveLimitLayer::new(
            AimdConfig::new(settings.initial, settings.min, settings.max),
            load_signal as Classify<Signal>,
        );
        let handle = limit.handle();
        let stack = ServiceBuilder::new()
            .layer(RetryPolicy::new(settings.backoff, retry_decision as Classify<Decision>).layer())
            .layer(limit)
            .map_request(count_try)
            .service(service);
        Self {
            service: BoxCloneSyncService::new(stack),
            limit: Some(handle),
        }
    }

    /// Any service as it is, without retries or a limit (tests that script the model turn by turn).
    pub fn from_service<S>(service: S) -> Self
    where
        S: Service<ChatRequest, Response = ChatReply, Error = ModelError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let stack = ServiceBuilder::new()
            .map_request(count_try)
            .service(service);
        Self {
            service: BoxCloneSyncService::new(stack),
            limit: None,
        }
    }

    /// The adaptive limit, when this client has one.
    pub fn limit(&self) -> Option<&LimitHandle> {
        self.limit.as_ref()
    }

    /// Send one request (retried as the policy says); the reply says how many retries it took.
    pub async fn complete(&self, request: ChatRequest) -> Result<ChatReply, ModelError> {
        let tries = Arc::new(AtomicU32::new(0));
        let call = Call {
            request,
            tries: Arc::clone(&tries),
        };
        let result = self.service.clone().oneshot(call).await;
        let retries = tries.load(Ordering::Relaxed).saturating_sub(1);
        match result {
            Ok(mut reply) => {
                reply.retries = retries;
                Ok(reply)
            }
            Err(e) => {
                tracing::warn!(retries, error = %e, "model call failed");
                Err(e)
            }
        }
    }
}

fn count_try(call: Call) -> ChatRequest {
    let before = call.tries.fetch_add(1, Ordering::Relaxed);
    if before > 0 {
        tracing::info!(retry = before, model = %call.request.model, "retrying the model call");
    }
    call.request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_families_get_effort_and_no_temperature() {
        for model in [
            "o1-mini",
            "o3",
            "o4-mini",
            "gpt-5",
            "gpt-5-mini",
            "openai/gpt-5.1",
        ] {
            assert!(takes_reasoning_effort(model), "{model}");
            assert!(!takes_temperature(model), "{model}");
        }
        for model in ["gpt-4o", "gpt-4.1-mini", "claude-sonnet", "llama-3"] {
            assert!(!takes_reasoning_effort(model), "{model}");
            assert!(takes_temperature(model), "{model}");
        }
    }

    #[test]
    fn only_transient_errors_are_retried() {
        let rate = |after| {
            Err(ModelError::RateLimited {
                retry_after: after,
                message: String::new(),
            })
        };
        assert_eq!(
            retry_decision(&rate(Some(Duration::from_secs(2)))),
            Decision::RetryAfter(Duration::from_secs(2))
        );
        assert_eq!(retry_decision(&rate(None)), Decision::Retry);
        assert_eq!(retry_decision(&Err(ModelError::Timeout)), Decision::Retry);
        assert_eq!(
            retry_decision(&Err(ModelError::Auth {
                message: String::new()
            })),
            Decision::Stop
        );
        assert_eq!(
            retry_decision(&Err(ModelError::ContextLength {
                message: String::new()
            })),
            Decision::Stop
        );
        assert_eq!(load_signal(&rate(None)), Signal::Overload);
        assert_eq!(load_signal(&Err(ModelError::Timeout)), Signal::Ignore);
    }
}
