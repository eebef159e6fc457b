//! The innermost service: one chat completion over HTTP, with the answer classified into a [`ModelError`].

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::Service;

use super::{ChatReply, ChatRequest, ModelError, takes_reasoning_effort, takes_temperature};
use crate::config::Secret;

/// The OpenAI API.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// Most characters of an error body quoted in a [`ModelError`].
const MESSAGE_CHARS: usize = 500;

/// Sends [`ChatRequest`]s to `<base_url>/chat/completions` with bearer auth. Cheap to clone.
#[derive(Clone)]
pub struct HttpModel {
    client: reqwest::Client,
    url: String,
    auth: HeaderValue,
    // Kept only to scrub the key out of anything the API echoes back.
    key: std::sync::Arc<str>,
}

impl std::fmt::Debug for HttpModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpModel")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl HttpModel {
    /// A client of `base_url` (default [`DEFAULT_BASE_URL`]) whose requests give up after `timeout`.
    pub fn new(
        api_key: &Secret,
        base_url: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, ModelError> {
        let base = base_url.unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/');
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", api_key.expose())).map_err(|_| {
                ModelError::Auth {
                    message: "the API key holds characters an HTTP header cannot carry".into(),
                }
            })?;
        auth.set_sensitive(true);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(ModelError::Transport)?;
        Ok(Self {
            client,
            url: format!("{base}/chat/completions"),
            auth,
            key: api_key.expose().into(),
        })
    }

    async fn send(self, request: ChatRequest) -> Result<ChatReply, ModelError> {
        let response = self
            .client
            .post(&self.url)
            .header(AUTHORIZATION, self.auth.clone())
            .json(&body(&request))
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let text = response.text().await.map_err(transport)?;
        if status.is_success() {
            return parse_completion(&text);
        }
        Err(classify_failure(status, retry_after, &text, &self.key))
    }
}

impl Service<ChatRequest> for HttpModel {
    type Response = ChatReply;
    type Error = ModelError;
    type Future = Pin<Box<dyn Future<Output = Result<ChatReply, ModelError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ModelError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        Box::pin(self.clone().send(request))
    }
}

fn transport(e: reqwest::Error) -> ModelError {
    if e.is_timeout() {
        ModelError::Timeout
    } else {
        ModelError::Transport(e.without_url())
    }
}

/// The JSON body; optional parameters only for models that take them.
fn body(request: &ChatRequest) -> Value {
    let mut body = json!({ "model": request.model, "messages": request.messages });
    if let Some(t) = request
        .temperature
        .filter(|_| takes_temperature(&request.model))
    {
        body["temperature"] = json!(t);
    }
    if let Some(effort) = request
        .reasoning_effort
        .as_ref()
        .filter(|_| takes_reasoning_effort(&request.model))
    {
        body["reasoning_effort"] = json!(effort);
    }
    if let Some(max) = request.max_tokens {
        // Reasoning models name it `max_completion_tokens`; the older name is refused by them.
        let name = if takes_reasoning_effort(&request.model) {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body[name] = json!(max);
    }
    body
}

/// `Retry-After` in seconds or as an HTTP date, or OpenAI's `retry-after-ms`.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    let value = text(RETRY_AFTER.as_str())?;
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: AnswerMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct AnswerMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

fn parse_completion(text: &str) -> Result<ChatReply, ModelError> {
    let completion: Completion = serde_json::from_str(text).map_err(|e| ModelError::Malformed {
        message: format!("{e} (body of {} bytes)", text.len()),
    })?;
    let Some(choice) = completion.choices.into_iter().next() else {
        return Err(ModelError::Malformed {
            message: "the answer has no choices".into(),
        });
    };
    let usage = completion.usage.unwrap_or(Usage {
        prompt_tokens: 0,
        completion_tokens: 0,
    });
    Ok(ChatReply {
        content: choice.message.content.unwrap_or_default(),
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        finish_reason: choice.finish_reason,
        retries: 0,
    })
}

/// A non-2xx answer as an error: by status, and by the OpenAI error `code` where the status is ambiguous.
fn classify_failure(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &str,
    key: &str,
) -> ModelError {
    let error = serde_json::from_str::<Value>(body)
        .ok()
        .map(|v| v.get("error").cloned().unwrap_or(v));
    let field = |name: &str| {
        error
            .as_ref()
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let code = field("code").or_else(|| field("type")).unwrap_or_default();
    let raw = field("message").unwrap_or_else(|| body.trim().to_string());
    let message = redact(
        &crate::attempt::outcome::truncate_chars(&raw, MESSAGE_CHARS),
        key,
    );
    let status_code = status.as_u16();
    match status_code {
        429 => ModelError::RateLimited {
            retry_after,
            message,
        },
        401 | 403 => ModelError::Auth { message },
        404 => ModelError::UnknownModel { message },
        408 => ModelError::Timeout,
        _ if code == "context_length_exceeded" => ModelError::ContextLength { message },
        _ if code == "model_not_found" => ModelError::UnknownModel { message },
        500..=599 => ModelError::Server {
            status: status_code,
            message,
        },
        _ => ModelError::BadRequest {
            status: status_code,
            message,
        },
    }
}

/// The text with the key, and any word that looks like part of one (OpenAI echoes a masked key such as
/// `sk-abc***xyz`), replaced by `[redacted]`.
fn redact(text: &str, key: &str) -> String {
    let text = if key.is_empty() {
        text.to_string()
    } else {
        text.replace(key, "[redacted]")
    };
    let prefix: String = key.chars().take(6).collect();
    text.split(' ')
        .map(|word| {
            let bare = word
                .trim_matches(|c: char| !c.is_alphanumeric() && c != '-' && c != '_' && c != '*');
            let key_like = bare.starts_with("sk-")
                || (prefix.len() >= 6 && bare.starts_with(&prefix))
                || (bare.contains('*') && bare.len() >= 8);
            if key_like { "[redacted]" } else { word }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(model: &str) -> ChatRequest {
        ChatRequest {
            model: model.into(),
            messages: vec![super::super::ChatMessage::user("hi")],
            temperature: Some(0.7),
            reasoning_effort: Some("high".into()),
            max_tokens: Some(100),
        }
    }

    #[test]
    fn an_https_client_builds_with_the_workspaces_one_crypto_provider() {
        // reqwest's rustls needs a crypto provider; with two in the tree this would panic.
        let model = HttpModel::new(&Secret::new("sk-x"), None, Duration::from_secs(1)).unwrap();
        assert_eq!(model.url, "https://api.openai.com/v1/chat/completions");
        assert!(!format!("{model:?}").contains("sk-x"));
        let model = HttpModel::new(
            &Secret::new("k"),
            Some("http://127.0.0.1:9/v1/"),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(model.url, "http://127.0.0.1:9/v1/chat/completions");
    }

    #[test]
    fn bodies_carry_only_what_the_model_takes() {
        let b = body(&request("gpt-4o"));
        assert_eq!(b["temperature"], json!(0.7f32));
        assert!(b.get("reasoning_effort").is_none());
        assert_eq!(b["max_tokens"], 100);
        let b = body(&request("o3-mini"));
        assert!(b.get("temperature").is_none());
        assert_eq!(b["reasoning_effort"], "high");
        assert_eq!(b["max_completion_tokens"], 100);
    }

    #[test]
    fn failures_are_classified_by_status_and_code() {
        let e = |status: u16, body: &str| {
            classify_failure(
                StatusCode::from_u16(status).unwrap(),
                None,
                body,
                "sk-secret-key-123",
            )
        };
        assert!(matches!(e(401, "{}"), ModelError::Auth { .. }));
        assert!(matches!(e(404, "{}"), ModelError::UnknownModel { .. }));
        assert!(matches!(
            e(
                400,
                r#"{"error":{"message":"too long","code":"context_length_exceeded"}}"#
            ),
            ModelError::ContextLength { .. }
        ));
        assert!(matches!(
            e(400, r#"{"error":{"code":"model_not_found"}}"#),
            ModelError::UnknownModel { .. }
        ));
        assert!(matches!(
            e(503, "busy"),
            ModelError::Server { status: 503, .. }
        ));
        assert!(matches!(
            e(422, "no"),
            ModelError::BadRequest { status: 422, .. }
        ));
        let auth = e(
            401,
            r#"{"error":{"message":"Incorrect API key provided: sk-secret-key-123. Or sk-sec***123."}}"#,
        );
        let text = auth.to_string();
        assert!(!text.contains("secret") && !text.contains("sk-"), "{text}");
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_milliseconds() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        let mut h = HeaderMap::new();
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn completions_parse_and_truncated_ones_are_malformed() {
        let ok = r#"{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let reply = parse_completion(ok).unwrap();
        assert_eq!(
            (
                reply.content.as_str(),
                reply.prompt_tokens,
                reply.completion_tokens
            ),
            ("hi", 3, 1)
        );
        assert!(matches!(
            parse_completion(&ok[..20]),
            Err(ModelError::Malformed { .. })
        ));
        assert!(matches!(
            parse_completion(r#"{"choices":[]}"#),
            Err(ModelError::Malformed { .. })
        ));
    }
}
