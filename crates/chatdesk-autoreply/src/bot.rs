//! What the bot says next, given a conversation: the model's answer or the flow's next prompt,
//! within the tenant's budget, with failures turned into the inbox's fallback or a handoff.
//! Used alike by the `autoreply` role (live conversations) and the API's test chat.

use std::collections::BTreeMap;
use std::sync::Arc;

use chatdesk_core::autoreply::{LlmSettings, OnError};
use chatdesk_core::events::HandoffReason;
use uuid::Uuid;

use crate::budget::Budget;
use crate::flow::{self, Flows, Progress, Prompt};
use crate::llm::{Decision, Model, Turn};
use crate::metrics;

/// The bot's next move.
#[derive(Debug, Clone, PartialEq)]
pub enum Move {
    /// Say these messages.
    Say(Vec<Prompt>),
    /// Step aside for a human.
    Handoff { reason: HandoffReason, detail: Option<String> },
}

/// A flow's step over the pending messages.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowStep {
    pub say: Vec<Prompt>,
    pub progress: Progress,
    /// The flow finished: its fields and action, and the index of the message that finished it.
    pub completed: Option<(flow::Completed, usize)>,
}

#[derive(Clone)]
pub struct Bot {
    pub model: Model,
    pub flows: Arc<Flows>,
    pub budget: Budget,
}

impl Bot {
    /// The model's answer to `history` (oldest first; the customer's unanswered messages last).
    pub async fn llm_move(&self, tenant: Uuid, llm: &LlmSettings, history: &[Turn]) -> Move {
        match self.budget.take_call(tenant).await {
            Ok(true) => {}
            Ok(false) => {
                ::metrics::counter!(metrics::BUDGET_REFUSED_TOTAL).increment(1);
                return Move::Handoff {
                    reason: HandoffReason::Budget,
                    detail: Some("the daily model budget is spent".into()),
                };
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot read the model budget");
                return self.failed(llm, HandoffReason::Error, "the model budget cannot be read".into());
            }
        }
        let answer = self.model.complete(llm, history).await;
        match answer {
            Ok(answer) => {
                ::metrics::histogram!(metrics::MODEL_LATENCY_SECONDS).record(answer.latency.as_secs_f64());
                ::metrics::counter!(metrics::MODEL_CALLS_TOTAL, "outcome" => "ok").increment(1);
                if answer.attempts > 1 {
                    ::metrics::counter!(metrics::MODEL_RETRIES_TOTAL).increment(1);
                }
                ::metrics::counter!(metrics::TOKENS_TOTAL).increment(answer.usage.total_tokens);
                if let Err(error) = self.budget.spend_tokens(tenant, answer.usage.total_tokens).await {
                    tracing::warn!(error = %error, "cannot count the model's tokens");
                }
                match answer.decision {
                    Decision::Reply(text) => Move::Say(vec![Prompt { text, buttons: Vec::new() }]),
                    Decision::Handoff(reason) => Move::Handoff {
                        reason: HandoffReason::Model,
                        detail: Some(reason).filter(|reason| !reason.is_empty()),
                    },
                }
            }
            Err(error) => {
                let (reason, outcome) = if error.is_timeout() {
                    (HandoffReason::Timeout, "timeout")
                } else {
                    (HandoffReason::Error, "error")
                };
                ::metrics::counter!(metrics::MODEL_CALLS_TOTAL, "outcome" => outcome).increment(1);
                tracing::warn!(error = %error, model = %llm.model, "the model failed");
                self.failed(llm, reason, error.summary())
            }
        }
    }

    fn failed(&self, llm: &LlmSettings, reason: HandoffReason, detail: String) -> Move {
        match (&llm.on_error, &llm.fallback_text) {
            (OnError::Fallback, Some(text)) => Move::Say(vec![Prompt { text: text.clone(), buttons: Vec::new() }]),
            _ => Move::Handoff { reason, detail: Some(detail) },
        }
    }

    /// Advances `flow_name` by each message in turn; only the last message's prompts are said
    /// (earlier ones were already answered by the customer's next message), and a flow that
    /// finishes stops there.
    pub fn flow_step(
        &self,
        flow_name: &str,
        progress: Option<Progress>,
        messages: &[(String, Option<String>)],
    ) -> Option<FlowStep> {
        let flow = self.flows.get(flow_name)?;
        let mut progress = progress.unwrap_or_default();
        let mut say = Vec::new();
        for (index, (text, choice)) in messages.iter().enumerate() {
            let turn = flow.answer(&progress, flow::Answer { text, choice_id: choice.as_deref() });
            progress = turn.progress;
            say = turn.replies;
            if let Some(completed) = turn.completed {
                return Some(FlowStep { say, progress, completed: Some((completed, index)) });
            }
        }
        Some(FlowStep { say, progress, completed: None })
    }

    /// The text after a flow finished.
    pub fn finish_text(&self, flow_name: &str, fields: &BTreeMap<String, serde_json::Value>, order: &str) -> String {
        self.flows.get(flow_name).map(|flow| flow.finish_text(fields, order)).unwrap_or_default()
    }
}

/// Prompts as one message: texts joined by blank lines; the buttons of the last prompt, also
/// written out so a channel that cannot show buttons still tells the customer the choices.
pub fn one_message(prompts: &[Prompt]) -> Option<(String, Vec<flow::Button>)> {
    let text = prompts.iter().map(|prompt| prompt.text.trim()).filter(|text| !text.is_empty()).collect::<Vec<_>>();
    if text.is_empty() {
        return None;
    }
    let buttons = prompts.last().map(|prompt| prompt.buttons.clone()).unwrap_or_default();
    Some((text.join("\n\n"), buttons))
}
