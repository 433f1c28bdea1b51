//! A delivery job: one outbound message on its way to a provider.

use serde::{Deserialize, Serialize};

use uuid::Uuid;

pub use chatdesk_core::envelope::{SendRequest, Template};

/// How a job ended, recorded beside the job before its status event is appended, so a job that
/// comes back after a crash finishes without calling the provider again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Ending {
    Sent {
        provider_message_id: Option<String>,
    },
    Failed {
        reason: String,
        dead_letter: bool,
        /// A stable code for why (`expired`, `campaign_cancelled`, a provider's error code).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
}

/// What the queue keeps per job (JSON in the partition's job hash; a recorded ending is kept
/// beside it and set here when the job is leased, see [`crate::queue`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub tenant: Uuid,
    /// The send-stream entry the job came from.
    pub entry: String,
    pub request: SendRequest,
    /// Provider calls made.
    #[serde(default)]
    pub attempts: u32,
    /// Calls that failed in a way worth retrying (5xx, timeout, connection error).
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ending: Option<Ending>,
}

impl Job {
    pub fn new(tenant: Uuid, entry: String, request: SendRequest) -> Self {
        Self { tenant, entry, request, attempts: 0, failures: 0, last_error: None, ending: None }
    }

    pub fn id(&self) -> Uuid {
        self.request.message_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_strict_and_jobs_round_trip() {
        let id = Uuid::now_v7();
        let text = format!(
            r#"{{"message_id":"{id}","conversation_id":"{id}","inbox_id":"{id}","contact_id":"{id}","text":"hi"}}"#
        );
        let request: SendRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(request.text, "hi");
        let mut job = Job::new(id, "1-0".into(), request);
        job.ending = Some(Ending::Sent { provider_message_id: Some("wamid.1".into()) });
        let json = serde_json::to_string(&job).unwrap();
        assert!(json.contains(r#""result":"sent""#), "{json}");
        assert_eq!(serde_json::from_str::<Job>(&json).unwrap(), job);
    }
}
