//! How a run ends, and the sentences that explain a failure to the platform.

use crate::attempt::ErrorType;
use crate::attempt::terminus::{ModelError, TerminalError};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopEnd {
    /// The model said the task is complete twice in a row.
    Completed,
    /// `max_turns` turns went by.
    TurnLimit,
    /// The deadline passed.
    TimedOut,
    /// The model API (after retries) or the terminal failed.
    Failed {
        /// How the platform classifies it.
        error_type: ErrorType,
        /// A sentence for the attempt's `metadata.error`; never holds the API key.
        message: String,
    },
}

pub(super) fn terminal_failed(e: &TerminalError) -> LoopEnd {
    LoopEnd::Failed {
        error_type: ErrorType::ExecutionError,
        message: e.to_string(),
    }
}

/// A model error that survived the retries, as the attempt's error.
pub(super) fn model_failed(e: &ModelError, model: &str) -> LoopEnd {
    let (error_type, message) = match e {
        ModelError::RateLimited { message, .. } => (
            ErrorType::RateLimitError,
            format!(
                "the model API kept rate limiting the agent (HTTP 429) after retries: {message}"
            ),
        ),
        ModelError::Timeout => (
            ErrorType::TimeoutError,
            "the model API did not answer in time, after retries".to_string(),
        ),
        ModelError::Auth { message } => (
            ErrorType::ExecutionError,
            format!(
                "the model API refused the credentials (HTTP 401/403); check OPENAI_API_KEY: {message}"
            ),
        ),
        ModelError::UnknownModel { message } => (
            ErrorType::ExecutionError,
            format!("the model `{model}` does not exist at this API: {message}"),
        ),
        ModelError::ContextLength { message } => (
            ErrorType::ExecutionError,
            format!(
                "the conversation does not fit the model's context window even after condensing: {message}"
            ),
        ),
        ModelError::Transport(source) => (
            ErrorType::ExecutionError,
            format!("could not reach the model API after retries: {source}"),
        ),
        other => (
            ErrorType::ExecutionError,
            format!("{other} (after retries)"),
        ),
    };
    LoopEnd::Failed {
        error_type,
        message,
    }
}
