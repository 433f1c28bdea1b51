//! One call to an OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, a gateway).
//!
//! The request and answer are the API's documented shapes (`POST {base_url}/chat/completions`
//! with `model`, `messages`, `tools`; an answer's `choices[0].message` with `content` or
//! `tool_calls`, and `usage`). The call is written here rather than through a general client
//! library because the endpoint is tenant input and the bot's promises depend on the transport:
//!
//! - the connection goes only where the outbound policy allows, checked on the resolved address
//!   (a base URL must not reach the deployment's own Redis);
//! - the answer is read up to [`MAX_ANSWER_BYTES`], so a hostile endpoint cannot exhaust memory;
//! - exactly one retry, and only for an error that may pass (a 5xx or 429, a dropped
//!   connection), never for a timeout: client libraries retry rate-limited calls with backoff on
//!   their own, which turns a struggling model into a retry storm and an unbounded bill.
//!
//! The model hands a conversation over by calling the `handoff` tool: the signal is structured,
//! never parsed out of its text.

use std::time::{Duration, Instant};

use chatdesk_core::autoreply::LlmSettings;
use serde::Deserialize;
use serde_json::{Value, json};

/// The most of an answer that is read.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// The most tokens one call is counted for, whatever the endpoint claims.
pub const MAX_TOKENS_PER_CALL: u64 = 10_000_000;
/// The tool the model calls to hand the conversation to a human.
pub const HANDOFF_TOOL: &str = "handoff";

/// Who said a message, as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The customer.
    User,
    /// The bot or an agent: the business's side.
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub role: Role,
    pub text: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// What the model decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Reply(String),
    /// The model called `handoff`, with its reason.
    Handoff(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub decision: Decision,
    pub usage: Usage,
    pub latency: Duration,
    /// 1, or 2 when the first attempt failed and was retried.
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("the model did not answer within {0} ms")]
    Timeout(u64),
    #[error("the model endpoint answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot reach the model endpoint: {0}")]
    Network(String),
    #[error("the model's answer is unusable: {0}")]
    Invalid(String),
    #[error("the model endpoint {0}")]
    Refused(String),
}

impl ModelError {
    fn may_pass(&self) -> bool {
        match self {
            ModelError::Status { status, .. } => *status >= 500 || *status == 429,
            ModelError::Network(_) => true,
            ModelError::Timeout(_) | ModelError::Invalid(_) | ModelError::Refused(_) => false,
        }
    }

    /// What agents and the test chat are told: the kind of failure and the status, never the
    /// endpoint's answer or address (an answer from wherever a base URL points is not for
    /// display; the full error goes to the logs).
    pub fn summary(&self) -> String {
        match self {
            ModelError::Timeout(ms) => format!("the model did not answer within {ms} ms"),
            ModelError::Status { status, .. } => format!("the model endpoint answered HTTP {status}"),
            ModelError::Network(_) => "the model endpoint cannot be reached".to_owned(),
            ModelError::Invalid(_) => "the model's answer is not a usable chat completion".to_owned(),
            ModelError::Refused(reason) => format!("the model endpoint {reason}"),
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, ModelError::Timeout(_))
    }
}

/// Calls models through the guarded client, each URL checked against the outbound policy first.
#[derive(Clone)]
pub struct Model {
    http: reqwest::Client,
    policy: std::sync::Arc<chatdesk_core::outbound::OutboundPolicy>,
}

impl Model {
    pub fn new(http: reqwest::Client, policy: std::sync::Arc<chatdesk_core::outbound::OutboundPolicy>) -> Self {
        Self { http, policy }
    }

    /// Asks the model for the next message of a conversation. The whole call, retry included,
    /// ends within the settings' timeout.
    pub async fn complete(&self, settings: &LlmSettings, history: &[Turn]) -> Result<Answer, ModelError> {
        let started = Instant::now();
        let budget = Duration::from_millis(settings.timeout_ms.max(1) as u64);
        let body = request_body(settings, history);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let left = budget.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(ModelError::Timeout(budget.as_millis() as u64));
            }
            let outcome = match tokio::time::timeout(left, self.call(settings, &body)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(ModelError::Timeout(budget.as_millis() as u64)),
            };
            match outcome {
                Ok((decision, usage)) => {
                    return Ok(Answer { decision, usage, latency: started.elapsed(), attempts });
                }
                Err(error) if attempts == 1 && error.may_pass() => {
                    tracing::warn!(error = %error, "model call failed; retrying once");
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn call(&self, settings: &LlmSettings, body: &Value) -> Result<(Decision, Usage), ModelError> {
        let raw = format!("{}/chat/completions", chatdesk_core::spaces::trim(&settings.base_url).trim_end_matches('/'));
        // Checked on every call, parsed as the client parses it: a stored URL is held to the
        // policy the process runs with now, and no spelling of an address slips past.
        let url = chatdesk_outbound::checked_url(&self.policy, &raw)
            .map_err(|error| ModelError::Refused(format!("is refused: {error}")))?;
        let mut request = self.http.post(url).json(body);
        if let Some(key) = settings.api_key.as_deref().filter(|key| !key.is_empty()) {
            request = request.bearer_auth(key);
        }
        let mut response = request.send().await.map_err(|error| ModelError::Network(describe(&error)))?;
        let status = response.status();
        let mut raw = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| ModelError::Network(describe(&error)))? {
            if raw.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(ModelError::Invalid(format!("the answer is larger than {MAX_ANSWER_BYTES} bytes")));
            }
            raw.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&raw);
            let body: String = text.chars().take(300).collect();
            return Err(ModelError::Status { status: status.as_u16(), body });
        }
        parse_answer(&raw)
    }
}

fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The chat-completions request: the system prompt, the conversation, and the handoff tool.
pub fn request_body(settings: &LlmSettings, history: &[Turn]) -> Value {
    let mut messages = Vec::with_capacity(history.len() + 1);
    let system = if settings.system_prompt.trim().is_empty() {
        "You are a helpful customer-service assistant."
    } else {
        settings.system_prompt.as_str()
    };
    messages.push(json!({"role": "system", "content": system}));
    for turn in history {
        let role = match turn.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        messages.push(json!({"role": role, "content": turn.text}));
    }
    let mut body = json!({
        "model": settings.model,
        "messages": messages,
        "tools": [{
            "type": "function",
            "function": {
                "name": HANDOFF_TOOL,
                "description": "Hand the conversation to a human agent: when the customer asks for a person, \
                                when you cannot help, or when the matter needs a human decision.",
                "parameters": {
                    "type": "object",
                    "properties": {"reason": {"type": "string", "description": "Why a human should take over."}},
                    "required": ["reason"]
                }
            }
        }],
        "tool_choice": "auto",
    });
    if let Some(temperature) = settings.temperature {
        body["temperature"] = json!(temperature);
    }
    body
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<UsageBody>,
}

#[derive(Deserialize)]
struct Choice {
    message: MessageBody,
}

#[derive(Deserialize)]
struct MessageBody {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCall>,
}

#[derive(Deserialize)]
struct ToolCall {
    function: FunctionCall,
}

#[derive(Deserialize)]
struct FunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize)]
struct UsageBody {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
}

/// Reads an answer: a `handoff` tool call wins over text; no text and no call is unusable.
pub fn parse_answer(raw: &[u8]) -> Result<(Decision, Usage), ModelError> {
    let completion: Completion =
        serde_json::from_slice(raw).map_err(|error| ModelError::Invalid(format!("not a chat completion: {error}")))?;
    let usage = completion
        .usage
        .map(|usage| {
            // The endpoint's figures are not trusted: bounded, and added without overflow.
            let bounded = |tokens: u64| tokens.min(MAX_TOKENS_PER_CALL);
            let (prompt, completion) = (bounded(usage.prompt_tokens), bounded(usage.completion_tokens));
            Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: bounded(usage.total_tokens.max(prompt.saturating_add(completion))),
            }
        })
        .unwrap_or_default();
    let message = completion
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| ModelError::Invalid("the answer has no choices".into()))?
        .message;
    if let Some(call) = message.tool_calls.iter().find(|call| call.function.name == HANDOFF_TOOL) {
        let reason = serde_json::from_str::<Value>(&call.function.arguments)
            .ok()
            .and_then(|arguments| arguments.get("reason").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        return Ok((Decision::Handoff(clip(&reason, 500)), usage));
    }
    let text = message.content.unwrap_or_default().replace('\0', "");
    if text.trim().is_empty() {
        return Err(ModelError::Invalid("the answer has neither text nor a handoff".into()));
    }
    Ok((Decision::Reply(clip(text.trim(), 4_096)), usage))
}

fn clip(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_call_is_a_handoff_and_text_is_a_reply() {
        let call = br#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"handoff","arguments":"{\"reason\":\"refund\"}"}}]}}],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}"#;
        let (decision, usage) = parse_answer(call).unwrap();
        assert_eq!(decision, Decision::Handoff("refund".into()));
        assert_eq!(usage.total_tokens, 12);
        let text = br#"{"choices":[{"message":{"role":"assistant","content":" Hello\u0000! "}}]}"#;
        assert_eq!(parse_answer(text).unwrap().0, Decision::Reply("Hello!".into()));
        assert!(parse_answer(br#"{"choices":[]}"#).is_err());
        assert!(parse_answer(br#"{"choices":[{"message":{"content":"  "}}]}"#).is_err());
        assert!(parse_answer(b"<html>").is_err());
        let huge = br#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":5,"total_tokens":1}}"#;
        assert_eq!(parse_answer(huge).unwrap().1.total_tokens, MAX_TOKENS_PER_CALL);
    }

    #[test]
    fn the_request_carries_the_prompt_history_and_tool() {
        let settings: LlmSettings = serde_json::from_value(json!({
            "base_url": "https://x/v1", "model": "m", "system_prompt": "Be brief.", "temperature": 0.2
        }))
        .unwrap();
        let body = request_body(
            &settings,
            &[Turn { role: Role::User, text: "hi".into() }, Turn { role: Role::Assistant, text: "hello".into() }],
        );
        assert_eq!(body["messages"][0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(body["messages"][1]["role"], "user");
        assert_eq!(body["messages"][2]["role"], "assistant");
        assert_eq!(body["tools"][0]["function"]["name"], "handoff");
        assert!((body["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    }
}
