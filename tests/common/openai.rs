//! A scripted OpenAI-compatible API on loopback: answers `POST /v1/chat/completions` (any path, in fact) from a
//! queue of scripted responses, then from a responder function, and records every request it received.
//!
//! ```ignore
//! let server = OpenAiServer::start().await;
//! server.push(Scripted::rate_limited(Some(2)));
//! server.push(Scripted::completion("{\"commands\": []}"));
//! let client = ModelClient::new(&Secret::new("sk-test"), Some(&server.base_url()), ModelLimits::default())?;
//! // … call it …
//! assert_eq!(server.requests().len(), 2);
//! assert_eq!(server.requests()[0].header("authorization"), Some("Bearer sk-test"));
//! ```
//!
//! A deliberately small HTTP/1.1 server (keep-alive, `Content-Length` bodies), so tests control exactly what goes
//! over the wire: status, headers such as `Retry-After`, a body cut short, a slow answer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Waited before answering.
    pub delay: Duration,
}

impl Scripted {
    /// A 200 chat completion whose message is `content`, with usage 100 prompt / 10 completion tokens.
    pub fn completion(content: &str) -> Self {
        Self::json(
            200,
            json!({
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": content }, "finish_reason": "stop" }],
                "usage": { "prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110 },
            }),
        )
    }

    /// Any status with a JSON body.
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// An OpenAI-style error: `{"error": {"message", "type", "code"}}`.
    pub fn error(status: u16, code: &str, message: &str) -> Self {
        Self::json(
            status,
            json!({ "error": { "message": message, "type": "invalid_request_error", "code": code } }),
        )
    }

    /// A 429, with `Retry-After: secs` when given.
    pub fn rate_limited(retry_after_secs: Option<u64>) -> Self {
        let r = Self::error(429, "rate_limit_exceeded", "Rate limit reached, slow down");
        match retry_after_secs {
            Some(secs) => r.header("Retry-After", &secs.to_string()),
            None => r,
        }
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Answer after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Keep only the first `bytes` of the body (a JSON document cut short; `Content-Length` matches what is sent).
    pub fn truncated(mut self, bytes: usize) -> Self {
        self.body.truncate(bytes);
        self
    }
}

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    /// The first header of this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Answers requests the queue has no answer for; gets the request and its 0-based number.
pub type Responder = Arc<dyn Fn(&Recorded, usize) -> Scripted + Send + Sync>;

#[derive(Default)]
struct State {
    queue: VecDeque<Scripted>,
    responder: Option<Responder>,
    requests: Vec<Recorded>,
}

/// The server; stops when dropped.
pub struct OpenAiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl OpenAiServer {
    /// Listen on 127.0.0.1 on a free port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let task = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, Arc::clone(&state)));
                }
            }
        });
        Self { addr, state, task }
    }

    /// The base URL to give a client (`http://127.0.0.1:<port>/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queue an answer (answers are used in order, one per request).
    pub fn push(&self, answer: Scripted) {
        self.state.lock().unwrap().queue.push_back(answer);
    }

    /// Answer what the queue does not with `responder`.
    pub fn respond_with(
        &self,
        responder: impl Fn(&Recorded, usize) -> Scripted + Send + Sync + 'static,
    ) {
        self.state.lock().unwrap().responder = Some(Arc::new(responder));
    }

    /// Every request so far, in order of arrival.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for OpenAiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: TcpStream, state: Arc<Mutex<State>>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    while let Some(request) = read_request(&mut read).await {
        let answer = {
            let mut state = state.lock().unwrap();
            let number = state.requests.len();
            state.requests.push(request.clone());
            match state.queue.pop_front() {
                Some(answer) => answer,
                None => match &state.responder {
                    Some(responder) => responder(&request, number),
                    None => Scripted::error(
                        500,
                        "script_exhausted",
                        "the scripted server has no answer left",
                    ),
                },
            }
        };
        tokio::time::sleep(answer.delay).await;
        let mut head = format!(
            "HTTP/1.1 {} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            answer.status,
            answer.body.len()
        );
        for (name, value) in &answer.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        if write.write_all(head.as_bytes()).await.is_err()
            || write.write_all(answer.body.as_bytes()).await.is_err()
        {
            return;
        }
    }
}

/// One request, or `None` when the connection closed or sent something this server does not understand.
async fn read_request(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Recorded> {
    let mut line = String::new();
    if read.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    read.read_exact(&mut body).await.ok()?;
    Some(Recorded {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
