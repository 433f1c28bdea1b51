//! Provider clients. Each speaks one real API and turns its answer into a [`CallOutcome`]; base
//! URLs are settings so tests and staging can point them at stand-ins.

pub mod generic;
pub mod telegram;
pub mod whatsapp;

use std::sync::Arc;
use std::time::Duration;

use chatdesk_core::outbound::{OutboundPolicy, Refused};
use chatdesk_store::directory::{InboxKind, InboxRecord};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use crate::job::Job;
use crate::limits::{Bucket, BucketKind};

/// The longest pause a provider may ask for that we honour as is.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How much of an error body goes into a failure reason.
const REASON_BODY_CHARS: usize = 300;

/// What became of one provider call.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    Sent {
        provider_message_id: Option<String>,
    },
    /// The provider asked us to slow down: pause `bucket` (when known) and try again.
    Throttled {
        retry_after: Option<Duration>,
        bucket: Option<BucketKind>,
        reason: String,
    },
    /// Worth trying again (5xx, timeout, connection refused).
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Will never succeed as it is (4xx other than 429, missing credentials).
    Permanent {
        reason: String,
    },
}

/// One message to one recipient through one inbox.
pub struct Outbound<'a> {
    pub job: &'a Job,
    pub inbox: &'a InboxRecord,
    /// The contact's id at the provider (wa_id, chat id, the generic channel's id).
    pub to: &'a str,
}

/// Where the providers' APIs are.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub whatsapp: String,
    pub whatsapp_version: String,
    pub telegram: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            whatsapp: "https://graph.facebook.com".to_owned(),
            whatsapp_version: "v21.0".to_owned(),
            telegram: "https://api.telegram.org".to_owned(),
        }
    }
}

#[derive(Clone)]
pub struct Providers {
    /// For the providers' own APIs, whose addresses the operator configured.
    http: reqwest::Client,
    /// For addresses a tenant chose (a generic inbox's outbound URL): only what the outbound
    /// policy allows, checked on the addresses actually connected to.
    guarded: reqwest::Client,
    policy: Arc<OutboundPolicy>,
    endpoints: Endpoints,
}

/// The provider a kind of inbox sends through, for metric labels.
pub fn provider_name(kind: InboxKind) -> &'static str {
    kind.as_str()
}

impl Providers {
    pub fn new(endpoints: Endpoints, timeout: Duration, policy: OutboundPolicy) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        let guarded = chatdesk_outbound::guarded_client(policy.clone(), Some(timeout))?;
        Ok(Self { http: http_client(timeout)?, guarded, policy, endpoints })
    }

    /// The rate-limit buckets a message to `to` through `inbox` must fit into, broadest first.
    pub fn buckets(inbox: &InboxRecord, to: &str) -> Vec<Bucket> {
        let account = inbox.id.to_string();
        match inbox.kind {
            InboxKind::Whatsapp => vec![
                Bucket::new(BucketKind::WhatsappAccount, account.clone()),
                Bucket::new(BucketKind::WhatsappRecipient, format!("{account}:{to}")),
            ],
            InboxKind::Telegram => {
                vec![Bucket::new(BucketKind::TelegramBot, account.clone()), telegram::chat_bucket(inbox, to)]
            }
            InboxKind::Generic => vec![Bucket::new(BucketKind::GenericAccount, account)],
            InboxKind::Web => Vec::new(),
        }
    }

    pub async fn send(&self, outbound: &Outbound<'_>) -> CallOutcome {
        let outcome = match outbound.inbox.kind {
            InboxKind::Whatsapp => whatsapp::send(&self.http, &self.endpoints, outbound).await,
            InboxKind::Telegram => telegram::send(&self.http, &self.endpoints, outbound).await,
            InboxKind::Generic => generic::send(&self.guarded, &self.policy, outbound).await,
            // The web widget's visitor reads replies from the gateway: nothing to call.
            InboxKind::Web => CallOutcome::Sent { provider_message_id: None },
        };
        match outcome {
            CallOutcome::Sent { provider_message_id } => {
                CallOutcome::Sent { provider_message_id: provider_message_id.and_then(usable_provider_id) }
            }
            other => other,
        }
    }
}

pub use chatdesk_outbound::http_client;

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = OffsetDateTime::parse(value, &Rfc2822).ok()?;
            let seconds = (at - OffsetDateTime::now_utc()).as_seconds_f64().max(0.0);
            Duration::from_secs_f64(seconds)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// A provider's answer, read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

/// The most of an answer that is read: answers are small JSON documents, and a receiver must
/// not be able to make a sender hold hundreds of megabytes.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Sends `request` and reads the answer (at most [`MAX_ANSWER_BYTES`] of it); a network failure
/// is already a [`CallOutcome`].
pub async fn exchange(request: reqwest::RequestBuilder) -> Result<Reply, CallOutcome> {
    let mut response = request.send().await.map_err(|error| network_failure(&error))?;
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| network_failure(&error))? {
        let room = MAX_ANSWER_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_ANSWER_BYTES {
            break;
        }
    }
    Ok(Reply { status, headers, text: String::from_utf8_lossy(&body).into_owned() })
}

/// A network failure: always worth another try. The reason never carries the URL (a Telegram
/// URL holds the bot's token), only what went wrong.
pub fn network_failure(error: &reqwest::Error) -> CallOutcome {
    let what = if chatdesk_outbound::refused_by_policy(error) {
        return CallOutcome::Permanent { reason: Refused::NotPublic.to_string() };
    } else if error.is_timeout() {
        "the provider did not answer in time"
    } else if error.is_connect() {
        "cannot connect to the provider"
    } else {
        "the request to the provider failed"
    };
    // The error's own text starts with the URL; its causes do not.
    let causes: Vec<String> = std::iter::successors(std::error::Error::source(error), |cause| cause.source())
        .map(ToString::to_string)
        .collect();
    tracing::debug!(causes = ?causes, "provider call failed");
    CallOutcome::Transient { reason: what.to_owned(), retry_after: None }
}

/// The usual reading of an HTTP status no provider-specific rule covered.
pub fn by_status(status: StatusCode, headers: &HeaderMap, body: &str) -> CallOutcome {
    let reason = format!("HTTP {}: {}", status.as_u16(), excerpt(body));
    if status == StatusCode::TOO_MANY_REQUESTS {
        CallOutcome::Throttled { retry_after: retry_after(headers), bucket: None, reason }
    } else if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        CallOutcome::Transient { reason, retry_after: retry_after(headers) }
    } else {
        CallOutcome::Permanent { reason }
    }
}

pub fn excerpt(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(REASON_BODY_CHARS) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.to_owned(),
    }
}

/// A credential from the inbox's provider settings.
pub fn credential<'a>(inbox: &'a InboxRecord, name: &str) -> Result<&'a str, CallOutcome> {
    inbox.provider_config.get(name).and_then(|value| value.as_str()).filter(|value| !value.is_empty()).ok_or_else(
        || CallOutcome::Permanent { reason: format!("the {} inbox has no {name} configured", inbox.kind.as_str()) },
    )
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&headers), Some(Duration::ZERO), "a date in the past means now");
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn statuses_classify() {
        let headers = HeaderMap::new();
        assert!(matches!(by_status(StatusCode::INTERNAL_SERVER_ERROR, &headers, ""), CallOutcome::Transient { .. }));
        assert!(matches!(by_status(StatusCode::BAD_GATEWAY, &headers, ""), CallOutcome::Transient { .. }));
        assert!(matches!(by_status(StatusCode::TOO_MANY_REQUESTS, &headers, ""), CallOutcome::Throttled { .. }));
        let CallOutcome::Permanent { reason } = by_status(StatusCode::BAD_REQUEST, &headers, "no such user") else {
            panic!("400 is permanent")
        };
        assert_eq!(reason, "HTTP 400: no such user");
        assert_eq!(excerpt(&"x".repeat(400)).chars().count(), REASON_BODY_CHARS + 1);
    }
}

/// Longest provider message id kept (the same bound as every other id a provider gives us).
const MAX_PROVIDER_ID_BYTES: usize = 256;

/// The provider's id of a sent message, when it is one we can store and match receipts by: the
/// answer is the receiver's choice, and an id PostgreSQL cannot index (too long) or store (NUL)
/// would make the sent status undeliverable. Such an id is dropped (the message is still sent);
/// control characters never reach agents.
fn usable_provider_id(id: String) -> Option<String> {
    let usable = !id.is_empty() && id.len() <= MAX_PROVIDER_ID_BYTES && !id.chars().any(char::is_control);
    if !usable {
        tracing::info!(bytes = id.len(), "a provider's message id was not usable; kept none");
    }
    usable.then_some(id)
}

#[cfg(test)]
mod id_tests {
    use super::usable_provider_id;

    #[test]
    fn only_storable_ids_are_kept() {
        assert_eq!(usable_provider_id("wamid.HBgL".into()).as_deref(), Some("wamid.HBgL"));
        assert_eq!(usable_provider_id("x".repeat(6000)), None);
        assert_eq!(usable_provider_id("x\u{0}y".into()), None);
        assert_eq!(usable_provider_id(String::new()), None);
    }
}
