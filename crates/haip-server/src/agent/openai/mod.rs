//! The OpenAI-compatible agent (contract section 12.1): each completed user message
//! becomes a streamed `POST {base}/chat/completions` to any server that speaks the OpenAI
//! chat API (OpenAI, vLLM, llama.cpp, Ollama, LM Studio, LiteLLM...). Its deltas become
//! one run of MESSAGE_PARTs; its tool calls run through the server's tool registry and
//! are fed back to the model; each conversation keeps its history.

mod memory;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use haip_protocol::payload::RunStatus;
use haip_protocol::ErrorCode;
use serde_json::{json, Map, Value};

use super::reply::{Reply, Run, Speaker};
use super::seam::{Agent, BoxFuture};
use crate::tools::{ToolOutcome, ToolSpec};
pub use memory::Conversations;
pub use stream::UpstreamError;
use stream::{clip, error_message, Round, SseEvents, ToolCallDraft};

/// The settings of contract section 12.1.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// Up to and including `/v1`: requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer`; never logged, never shown.
    pub api_key: Option<String>,
    pub model: String,
    pub system_prompt: Option<String>,
    /// Messages kept per conversation.
    pub history: usize,
    /// How long upstream may stay silent (no byte) before the run fails.
    pub timeout: Duration,
    /// Tool rounds one answer may take.
    pub max_tool_rounds: u32,
}

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

impl OpenAiConfig {
    /// The contract's defaults for `model`.
    pub fn new(model: impl Into<String>) -> OpenAiConfig {
        OpenAiConfig {
            base_url: DEFAULT_BASE_URL.into(),
            api_key: None,
            model: model.into(),
            system_prompt: None,
            history: 50,
            timeout: Duration::from_millis(60_000),
            max_tool_rounds: 8,
        }
    }
}

// Written by hand so that the key never reaches a log through `{:?}`.
impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field(
                "api_key",
                &self.api_key.as_ref().map(|_| "(set, not shown)"),
            )
            .field("model", &self.model)
            .field("system_prompt", &self.system_prompt)
            .field("history", &self.history)
            .field("timeout", &self.timeout)
            .field("max_tool_rounds", &self.max_tool_rounds)
            .finish()
    }
}

/// Answers through an OpenAI-compatible chat completions endpoint.
pub struct OpenAiAgent {
    inner: Arc<Inner>,
}

struct Inner {
    config: OpenAiConfig,
    endpoint: String,
    http: reqwest::Client,
    memory: Conversations,
}

impl OpenAiAgent {
    /// Fails when the base URL is not an http(s) URL.
    pub fn new(config: OpenAiConfig) -> Result<OpenAiAgent, String> {
        let base = config.base_url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(base)
            .map_err(|e| format!("invalid OPENAI_BASE_URL {base:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "invalid OPENAI_BASE_URL {base:?}: the scheme must be http or https"
            ));
        }
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(OpenAiAgent {
            inner: Arc::new(Inner {
                endpoint: format!("{base}/chat/completions"),
                memory: Conversations::new(config.history),
                config,
                http,
            }),
        })
    }

    /// The conversations kept in memory (for tests and metrics).
    pub fn conversations(&self) -> &Conversations {
        &self.inner.memory
    }
}

impl Agent for OpenAiAgent {
    fn on_text(&self, reply: Reply, text: String) -> BoxFuture {
        Box::pin(self.inner.clone().answer(reply, text))
    }

    fn describe(&self) -> String {
        format!(
            "openai (model {} at {}{})",
            self.inner.config.model,
            self.inner.config.base_url,
            if self.inner.config.api_key.is_some() {
                ", API key set"
            } else {
                ""
            }
        )
    }
}

/// The text one round showed the client.
#[derive(Default)]
struct Shown {
    message_id: Option<String>,
    text: String,
    parts: u64,
}

/// How one round with upstream ended.
enum RoundEnd {
    Answered(Round),
    Cancelled,
}

impl Inner {
    async fn answer(self: Arc<Self>, reply: Reply, text: String) {
        let Some(run) = reply.start_run() else { return };
        let key = conversation_key(&reply);
        // A client that keeps the conversation (the AI SDK) gives it with each message;
        // otherwise the conversation is what this agent remembers of it.
        let past = match reply.history() {
            Some(turns) => turns
                .iter()
                .map(|t| {
                    let role = match t.speaker {
                        Speaker::User => "user",
                        Speaker::Assistant => "assistant",
                    };
                    json!({"role": role, "content": t.text})
                })
                .collect(),
            None => self.memory.history(&key),
        };
        let tools = reply.tools();
        let mut turn = vec![json!({"role": "user", "content": text})];
        let mut rounds = 0;
        loop {
            let body = self.request_body(&past, &turn, &tools);
            let mut shown = Shown::default();
            let end = tokio::select! {
                end = self.round(&run, &body, &mut shown) => end,
                _ = run.cancelled() => Ok(RoundEnd::Cancelled),
            };
            let round = match end {
                Ok(RoundEnd::Answered(round)) => round,
                Ok(RoundEnd::Cancelled) => {
                    // What the client saw stays in the conversation.
                    if !shown.text.is_empty() {
                        turn.push(json!({"role": "assistant", "content": shown.text}));
                    }
                    self.memory.record(&key, turn);
                    return run.finish(RunStatus::Cancelled);
                }
                Err(e) => return self.fail(run, &reply, e),
            };
            if round.tool_calls.is_empty() {
                turn.push(json!({"role": "assistant", "content": shown.text}));
                self.memory.record(&key, turn);
                return run.finish(RunStatus::Ok);
            }
            if rounds >= self.config.max_tool_rounds {
                let e = UpstreamError::TooManyToolRounds(self.config.max_tool_rounds);
                return self.fail(run, &reply, e);
            }
            rounds += 1;
            let calls: Vec<ToolCallDraft> = round
                .tool_calls
                .into_values()
                .enumerate()
                .map(|(i, mut c)| {
                    if c.id.is_empty() {
                        c.id = format!("call_{i}_{}", uuid::Uuid::new_v4().simple());
                    }
                    c
                })
                .collect();
            turn.push(assistant_tool_calls(&shown.text, &calls));
            for call in &calls {
                let outcome = run
                    .call_tool(&call.id, &call.name, parse_arguments(&call.arguments))
                    .await;
                turn.push(json!({"role": "tool", "tool_call_id": call.id,
                    "content": tool_content(&outcome)}));
            }
            if run.is_cancelled() {
                self.memory.record(&key, turn);
                return run.finish(RunStatus::Cancelled);
            }
        }
    }

    /// Ends the run with RUN_ERROR AGENT_ERROR; the turn is not remembered.
    fn fail(&self, run: Run, reply: &Reply, error: UpstreamError) {
        let message = self.redact(error.to_string());
        tracing::warn!(
            session = %reply.session_id(),
            run = %run.id(),
            model = %self.config.model,
            "agent failed: {message}"
        );
        run.fail(ErrorCode::AgentError, message);
    }

    /// Takes the API key out of a text (some servers quote the key they refused).
    fn redact(&self, text: String) -> String {
        match &self.config.api_key {
            Some(key) if key.len() >= 4 && text.contains(key.as_str()) => {
                text.replace(key.as_str(), "[API key]")
            }
            _ => text,
        }
    }

    fn request_body(&self, past: &[Value], turn: &[Value], tools: &[ToolSpec]) -> Vec<u8> {
        let mut messages = Vec::with_capacity(past.len() + turn.len() + 1);
        if let Some(prompt) = &self.config.system_prompt {
            messages.push(json!({"role": "system", "content": prompt}));
        }
        messages.extend_from_slice(past);
        messages.extend_from_slice(turn);
        let mut body = json!({
            "model": self.config.model,
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": messages,
        });
        if !tools.is_empty() {
            body["tools"] = tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {"name": t.name,
                        "description": t.description, "parameters": t.input_schema}})
                })
                .collect();
        }
        body.to_string().into_bytes()
    }

    /// One streamed completion: its text goes to the client as it arrives.
    async fn round(
        &self,
        run: &Run,
        body: &[u8],
        shown: &mut Shown,
    ) -> Result<RoundEnd, UpstreamError> {
        let mut request = self
            .http
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(body.to_vec());
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let silent = || UpstreamError::Timeout(self.config.timeout.as_millis());
        let mut response = tokio::time::timeout(self.config.timeout, request.send())
            .await
            .map_err(|_| silent())?
            .map_err(|e| UpstreamError::Connect {
                url: self.endpoint.clone(),
                reason: error_chain(&e),
            })?;
        if !response.status().is_success() {
            return Err(self.status_error(response).await);
        }
        let mut events = SseEvents::default();
        let mut round = Round::default();
        let mut ready = Vec::new();
        while !round.done {
            let chunk = tokio::time::timeout(self.config.timeout, response.chunk())
                .await
                .map_err(|_| silent())?
                .map_err(|e| UpstreamError::Connect {
                    url: self.endpoint.clone(),
                    reason: error_chain(&e),
                })?;
            match chunk {
                Some(bytes) => events.push(&bytes, &mut ready)?,
                None => {
                    events.finish(&mut ready)?;
                    if ready.is_empty() {
                        break;
                    }
                }
            }
            for data in ready.drain(..) {
                if round.done {
                    break;
                }
                if let Some(text) = round.apply(&data)? {
                    let id = match &shown.message_id {
                        Some(id) => id.clone(),
                        None => {
                            let id = run.message_start(&self.config.model).await;
                            shown.message_id = Some(id.clone());
                            id
                        }
                    };
                    run.message_part(&id, &text).await;
                    shown.text.push_str(&text);
                    shown.parts += 1;
                }
            }
        }
        if !round.done && round.finish_reason.is_none() {
            return Err(UpstreamError::Cut);
        }
        let tokens = round.completion_tokens.unwrap_or(shown.parts);
        match &shown.message_id {
            Some(id) => run.message_end(id, tokens).await,
            // An answer with no text is still an answer; a round of tool calls is not.
            None if round.tool_calls.is_empty() => {
                let id = run.message_start(&self.config.model).await;
                run.message_end(&id, tokens).await;
            }
            None => {}
        }
        Ok(RoundEnd::Answered(round))
    }

    /// A non-2xx answer, as a message naming the status and upstream's own words.
    async fn status_error(&self, response: reqwest::Response) -> UpstreamError {
        let status = response.status();
        let status = match status.canonical_reason() {
            Some(reason) => format!("{} {reason}", status.as_u16()),
            None => status.as_u16().to_string(),
        };
        let body = read_some(response, 64 * 1024, self.config.timeout).await;
        let message = match serde_json::from_slice::<Value>(&body) {
            Ok(v) => match v.get("error").or_else(|| v.get("detail")) {
                Some(e) => error_message(e),
                None => clip(&v.to_string(), 300),
            },
            Err(_) => clip(String::from_utf8_lossy(&body).trim(), 300),
        };
        let message = if message.is_empty() {
            "(no message)".into()
        } else {
            message
        };
        UpstreamError::Status { status, message }
    }
}

/// Up to `max` bytes of a body, or what arrived before upstream went quiet.
async fn read_some(mut response: reqwest::Response, max: usize, quiet: Duration) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < max {
        match tokio::time::timeout(quiet, response.chunk()).await {
            Ok(Ok(Some(bytes))) => body.extend_from_slice(&bytes),
            _ => break,
        }
    }
    body.truncate(max);
    body
}

/// An error with its causes ("error sending request: connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A conversation is the thread when the message had one (threads belong to a subject),
/// else the session.
fn conversation_key(reply: &Reply) -> String {
    match reply.thread_id() {
        Some(thread) => {
            let subject = reply.subject();
            format!("thread:{}:{subject}:{thread}", subject.len())
        }
        None => format!("session:{}", reply.session_id()),
    }
}

/// The assistant message that asked for tools, as the model server expects it back.
fn assistant_tool_calls(text: &str, calls: &[ToolCallDraft]) -> Value {
    let calls: Vec<Value> = calls
        .iter()
        .map(|c| {
            json!({"id": c.id, "type": "function",
                "function": {"name": c.name, "arguments": c.arguments}})
        })
        .collect();
    let content = if text.is_empty() {
        Value::Null
    } else {
        Value::from(text)
    };
    json!({"role": "assistant", "content": content, "tool_calls": calls})
}

/// The model's arguments as tool params: a JSON object (empty text counts as `{}`).
fn parse_arguments(arguments: &str) -> Result<Map<String, Value>, String> {
    if arguments.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(params)) => Ok(params),
        Ok(_) => Err("the model's arguments are not a JSON object".into()),
        Err(e) => Err(format!("the model's arguments are not valid JSON: {e}")),
    }
}

/// What the model is told a call gave: the JSON of its result, or of its error.
fn tool_content(outcome: &ToolOutcome) -> String {
    match (&outcome.status, &outcome.result) {
        (RunStatus::Ok, Some(result)) => result.to_string(),
        (RunStatus::Cancelled, _) => json!({"error": "cancelled"}).to_string(),
        (_, Some(error)) => json!({"error": error}).to_string(),
        (_, None) => json!({"error": "no result"}).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_must_be_an_object() {
        assert_eq!(parse_arguments("").unwrap(), Map::new());
        assert_eq!(parse_arguments(r#"{"a":1}"#).unwrap()["a"], 1);
        assert!(parse_arguments("[1]").is_err());
        assert!(parse_arguments("{\"a\":").is_err());
    }

    #[test]
    fn the_key_never_shows_in_debug_output_or_errors() {
        let mut config = OpenAiConfig::new("m");
        config.api_key = Some("sk-secret-123".into());
        assert!(!format!("{config:?}").contains("sk-secret-123"));
        let agent = OpenAiAgent::new(config).unwrap();
        let text = agent
            .inner
            .redact("Incorrect API key provided: sk-secret-123.".into());
        assert_eq!(text, "Incorrect API key provided: [API key].");
        assert!(!agent.describe().contains("sk-secret"));
    }

    #[test]
    fn a_base_url_must_be_http() {
        assert!(OpenAiAgent::new(OpenAiConfig {
            base_url: "ftp://x".into(),
            ..OpenAiConfig::new("m")
        })
        .is_err());
        assert!(OpenAiAgent::new(OpenAiConfig {
            base_url: "not a url".into(),
            ..OpenAiConfig::new("m")
        })
        .is_err());
    }
}
