//! Provider clients. Each speaks one real API and turns its answer into a [`CallOutcome`]; base
//! URLs are settings so tests and staging can point them at stand-ins.

pub mod generic;
pub mod telegram;
pub mod whatsapp;

use std::time::Duration;

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
    http: reqwest::Client,
    endpoints: Endpoints,
}

/// The provider a kind of inbox sends through, for metric labels.
pub fn provider_name(kind: InboxKind) -> &'static str {
    kind.as_str()
}

impl Providers {
    pub fn new(endpoints: Endpoints, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self { http: http_client(timeout)?, endpoints })
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
        match outbound.inbox.kind {
            InboxKind::Whatsapp => whatsapp::send(&self.http, &self.endpoints, outbound).await,
            InboxKind::Telegram => telegram::send(&self.http, &self.endpoints, outbound).await,
            InboxKind::Generic => generic::send(&self.http, outbound).await,
            // The web widget's visitor reads replies from the gateway: nothing to call.
            InboxKind::Web => CallOutcome::Sent { provider_message_id: None },
        }
    }
}

/// An HTTP client for outside calls, with `timeout` per request.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    // reqwest is built without a bundled crypto provider: use ring, once per process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("chatdesk/", env!("CARGO_PKG_VERSION")))
        .build()
}

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

/// Sends `request` and reads the answer; a network failure is already a [`CallOutcome`].
pub async fn exchange(request: reqwest::RequestBuilder) -> Result<Reply, CallOutcome> {
    let response = request.send().await.map_err(|error| network_failure(&error))?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.map_err(|error| network_failure(&error))?;
    Ok(Reply { status, headers, text })
}

/// A network failure: always worth another try.
pub fn network_failure(error: &reqwest::Error) -> CallOutcome {
    let what = if error.is_timeout() {
        "the provider did not answer in time"
    } else if error.is_connect() {
        "cannot connect to the provider"
    } else {
        "the request to the provider failed"
    };
    CallOutcome::Transient { reason: format!("{what}: {error}"), retry_after: None }
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
