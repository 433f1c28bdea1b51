//! Every operator action is recorded — who, when, what, how many — in PostgreSQL's `ops_audit`
//! table, which `chatdesk audit list`, `GET /v1/ops/audit` and the `ops` channel show.

use chatdesk_store::ops_audit::{self, AuditRecord, NewAudit};
use serde::Serialize;

use crate::{Ops, Result};

/// Who acts: `cli` on the servers, or the user (or API key) behind a REST call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    pub fn cli() -> Self {
        Actor("cli".to_owned())
    }
}

/// One audit record as the API and the `ops` channel show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// RFC 3339.
    pub at: String,
    pub actor: String,
    /// `replay`, `dlq.redrive`, `dlq.purge`, `claim` or `prune`.
    pub action: String,
    #[schema(value_type = Object)]
    pub target: serde_json::Value,
    pub entries: i64,
    /// `started` (still running, or interrupted midway), `done`, `cancelled` or `failed`.
    pub outcome: String,
    pub detail: String,
}

impl From<AuditRecord> for AuditEntry {
    fn from(record: AuditRecord) -> Self {
        AuditEntry {
            id: record.id,
            at: record.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            actor: record.actor,
            action: record.action,
            target: record.target,
            entries: record.entries,
            outcome: record.outcome,
            detail: record.detail,
        }
    }
}

/// An action on record from its start: [`Ops::audit_start`] writes it as `started`,
/// [`Ops::audit_progress`] keeps its count current, [`Ops::audit_finish`] says how it ended. An
/// action interrupted midway (its process killed) stays `started` with what it had done.
#[derive(Debug, Clone, Default)]
pub struct OnRecord {
    id: Option<i64>,
}

impl Ops {
    pub async fn audit_start(&self, actor: &Actor, action: &str, target: &serde_json::Value) -> OnRecord {
        let id = self.audit(actor, action, target, 0, "started", "").await.map(|entry| entry.id);
        OnRecord { id }
    }

    pub async fn audit_progress(&self, record: &OnRecord, entries: u64, detail: &str) {
        self.audit_update(record, entries, "started", detail).await;
    }

    pub async fn audit_finish(&self, record: &OnRecord, entries: u64, outcome: &str, detail: &str) {
        tracing::info!(record = ?record.id, entries, outcome, detail, "operator action finished");
        self.audit_update(record, entries, outcome, detail).await;
    }

    async fn audit_update(&self, record: &OnRecord, entries: u64, outcome: &str, detail: &str) {
        let (Some(db), Some(id)) = (&self.db, record.id) else { return };
        let entries = i64::try_from(entries).unwrap_or(i64::MAX);
        if let Err(error) = ops_audit::update(db, id, entries, outcome, detail).await {
            tracing::error!(record = id, error = %error, "cannot update an operator action in the audit log");
        }
    }

    /// Records an action. A failure here is logged loudly but does not stop (or hide) the action.
    async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        target: &serde_json::Value,
        entries: u64,
        outcome: &str,
        detail: &str,
    ) -> Option<AuditEntry> {
        let audit = NewAudit {
            actor: &actor.0,
            action,
            target,
            entries: i64::try_from(entries).unwrap_or(i64::MAX),
            outcome,
            detail,
        };
        tracing::info!(actor = %actor.0, action, %target, "operator action");
        let Some(db) = &self.db else {
            tracing::error!(actor = %actor.0, action, "no database to record an operator action in");
            return None;
        };
        match ops_audit::insert(db, &audit).await {
            Ok(record) => Some(record.into()),
            Err(error) => {
                tracing::error!(actor = %actor.0, action, error = %error, "cannot record an operator action in the audit log");
                None
            }
        }
    }

    /// The newest records first.
    pub async fn audit_list(&self, limit: i64, before: Option<i64>) -> Result<Vec<AuditEntry>> {
        let db =
            self.db.as_ref().ok_or_else(|| crate::OpsError::Invalid("the audit log needs DATABASE_URL".to_owned()))?;
        Ok(ops_audit::list(db, limit.clamp(1, 1_000), before).await?.into_iter().map(Into::into).collect())
    }
}
