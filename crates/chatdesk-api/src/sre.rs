//! The operators' routes under `/v1/ops`, for the `sre` role only: stream status and history,
//! replay (plan, then execute), dead letters (list, show, redrive, purge), claims, pruning, tasks
//! and the audit log. They do what `chatdesk streams …` does, through the same library, and every
//! action is recorded under the caller's e-mail.
//!
//! Streams are shared by every tenant (a partition holds many tenants' entries), so these figures
//! and actions are deployment-wide: the `sre` role is granted by the operator's CLI
//! (`chatdesk admin agent create --role sre`), never through the API, and tenant owners and
//! admins see none of it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chatdesk_core::auth::Role;
use chatdesk_ops::dlq::{DeadLetterItem, DlqFilter, DlqPage};
use chatdesk_ops::maintenance::{Claimed, Pruned};
use chatdesk_ops::replay::{ReplayPlan, ReplayRequest};
use chatdesk_ops::report::PartitionReport;
use chatdesk_ops::sampler::HistoryPoint;
use chatdesk_ops::task::Task;
use chatdesk_ops::{Actor, OpsError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::openapi::ErrorBody;

impl From<OpsError> for ApiError {
    fn from(error: OpsError) -> Self {
        match error {
            OpsError::Invalid(message) => ApiError::Unprocessable { code: "invalid_operation", message, details: None },
            OpsError::NotFound(message) => ApiError::NotFound { message },
            OpsError::Busy(message) => ApiError::Conflict { message },
            OpsError::Redis(error) => {
                tracing::warn!(error = %error, "Redis failed during an operator action");
                ApiError::Unavailable { dependency: "Redis" }
            }
            OpsError::Store(error) => ApiError::store(error),
        }
    }
}

/// The caller as the audit log names them.
async fn actor(state: &AppState, principal: &Principal) -> Actor {
    match principal.user {
        Some(user) => match chatdesk_store::directory::user_email(&state.db, user).await {
            Ok(Some(email)) => Actor(email),
            _ => Actor(format!("user {user}")),
        },
        None => Actor(match principal.key {
            Some(key) => format!("api key {key}"),
            None => format!("api key of tenant {}", principal.tenant),
        }),
    }
}

/// `403` unless the caller is one of the deployment's operators (the `sre` role of the
/// operators' tenant).
async fn sre(state: &AppState, principal: &Principal, action: &str) -> Result<(), ApiError> {
    principal.require(&[Role::Sre], action)?;
    if chatdesk_ops::is_operator(&state.db, state.ops_tenant, principal.tenant, principal.role).await? {
        return Ok(());
    }
    Err(ApiError::Forbidden { message: format!("only the operators' tenant may {action}") })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FamilyQuery {
    /// One stream family (`events`, `send`, `broadcast`); all when absent.
    #[param(pattern = r"^(events|send|broadcast)$")]
    pub family: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StreamsStatus {
    pub partitions: Vec<PartitionReport>,
}

#[utoipa::path(
    get,
    path = "/v1/ops/streams",
    tag = "ops",
    params(FamilyQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every partition and group: length, lag (marked when estimated), pending and its age, consumers, dead letters, what holds retention back", body = StreamsStatus),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only the sre role sees the streams", body = ErrorBody),
        (status = 422, description = "An unknown stream family", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    )
)]
pub async fn streams_status(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<FamilyQuery>,
) -> Result<Json<StreamsStatus>, ApiError> {
    sre(&state, &principal, "see the streams").await?;
    Ok(Json(StreamsStatus { partitions: state.ops.report(query.family.as_deref()).await? }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StreamsHistory {
    /// One point every 15 seconds over the last hour, oldest first.
    pub points: Vec<HistoryPoint>,
}

#[utoipa::path(
    get,
    path = "/v1/ops/streams/history",
    tag = "ops",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Each group's lag, pending entries, oldest pending age and dead letters over the last hour", body = StreamsHistory),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only the sre role sees the streams", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    )
)]
pub async fn streams_history(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<StreamsHistory>, ApiError> {
    sre(&state, &principal, "see the streams").await?;
    Ok(Json(StreamsHistory { points: state.ops.history().await? }))
}

/// A replay: the plan by default, carried out with `execute: true`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// The stream family; needed only when the group's name is in several.
    #[schema(pattern = r"^(events|send|broadcast)$")]
    pub family: Option<String>,
    /// writer, sender, broadcaster or autoreply.
    #[schema(pattern = r"^(writer|sender|broadcaster|autoreply)$")]
    pub group: String,
    /// An entry id (`1733490000000-0`), an RFC 3339 time or a time before now (`-2h`).
    #[schema(min_length = 1, max_length = 64)]
    pub from: String,
    /// Same forms, inclusive; now when absent.
    #[schema(min_length = 1, max_length = 64)]
    pub to: Option<String>,
    /// Below the family's partition count.
    #[schema(minimum = 0, maximum = 65535)]
    pub partition: Option<u16>,
    /// Carry it out; without it only the plan is returned and nothing changes.
    #[serde(default)]
    pub execute: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayAnswer {
    pub plan: ReplayPlan,
    /// The running replay (`execute: true`); follow it at `/v1/ops/tasks/{id}`.
    pub task: Option<Task>,
}

#[utoipa::path(
    post,
    path = "/v1/ops/replay",
    tag = "ops",
    request_body = ReplayBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The plan (nothing done): entries per partition, first and last id, trimmed parts", body = ReplayAnswer),
        (status = 202, description = "The replay started: entries are handed to the group while it keeps running", body = ReplayAnswer),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only the sre role replays", body = ErrorBody),
        (status = 409, description = "A replay into this group is already running", body = ErrorBody),
        (status = 422, description = "An unknown group or family, a bad time or range, a partition out of range, a live-only group, or a range partly trimmed", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<ReplayBody>,
) -> Result<(StatusCode, Json<ReplayAnswer>), ApiError> {
    sre(&state, &principal, "replay streams").await?;
    let request = ReplayRequest {
        family: body.family,
        group: body.group,
        from: body.from,
        to: body.to,
        partition: body.partition,
    };
    if !body.execute {
        let plan = state.ops.replay_plan(&request).await?;
        return Ok((StatusCode::OK, Json(ReplayAnswer { plan, task: None })));
    }
    let actor = actor(&state, &principal).await;
    let (plan, running) = state.ops.replay_start(&request, &actor).await?;
    let task = running.task.clone();
    let (ops, run_plan) = (state.ops.clone(), plan.clone());
    tokio::spawn(async move {
        if let Err(error) = ops.replay_run(&run_plan, running).await {
            tracing::warn!(error = %error, "replay failed");
        }
    });
    Ok((StatusCode::ACCEPTED, Json(ReplayAnswer { plan, task: Some(task) })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DlqQuery {
    #[param(pattern = r"^(events|send|broadcast)$")]
    pub family: Option<String>,
    pub group: Option<String>,
    /// Text the error contains (case-insensitive).
    pub error: Option<String>,
    /// Dead-lettered at or after: an entry id, an RFC 3339 time or `-2h`.
    pub since: Option<String>,
    pub until: Option<String>,
    /// References (`<family>/<partition>/<id>`), comma-separated.
    #[param(
        pattern = r"^[a-z][a-z0-9_-]*/[0-9]{1,5}/[0-9]{1,20}-[0-9]{1,20}(,[a-z][a-z0-9_-]*/[0-9]{1,5}/[0-9]{1,20}-[0-9]{1,20})*$"
    )]
    pub ids: Option<String>,
    /// 1 to 1,000 (default 50): the newest this many.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/ops/dlq",
    tag = "ops",
    params(DlqQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "How many dead letters match, and the newest of them", body = DlqPage),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only the sre role sees dead letters", body = ErrorBody),
        (status = 422, description = "An unknown family or group, a bad time or reference", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    )
)]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<DlqQuery>,
) -> Result<Json<DlqPage>, ApiError> {
    sre(&state, &principal, "see dead letters").await?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "must be 1 to 1000"));
    }
    let filter = DlqFilter {
        family: query.family,
        group: query.group,
        error: query.error,
        since: query.since,
        until: query.until,
        ids: query
            .ids
            .map(|ids| ids.split(',').map(str::trim).filter(|id| !id.is_empty()).map(str::to_owned).collect()),
    };
    Ok(Json(state.ops.dlq_list(&filter, limit).await?))
}

#[utoipa::path(
    get,
    path = "/v1/ops/dlq/{family}/{partition}/{id}",
    tag = "ops",
    params(
        ("family" = String, Path, description = "The stream family"),
        ("partition" = u16, Path, minimum = 0, maximum = 65535, description = "The partition"),
        ("id" = String, Path, pattern = r"^[0-9]+-[0-9]+$", description = "The dead letter's entry id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The dead letter, its error and its original entry's fields", body = DeadLetterItem),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only the sre role sees dead letters", body = ErrorBody),
        (status = 404, description = "No such dead letter", body = ErrorBody),
        (status = 422, description = "An unknown family, a partition out of range or a malformed id", body = ErrorBody),
    )
)]
pub async fn show_dead_letter(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((family, partition, id)): ApiPath<(String, u16, String)>,
) -> Result<Json<DeadLetterItem>, ApiError> {
    sre(&state, &principal, "see dead letters").await?;
    Ok(Json(state.ops.dlq_show(&format!("{family}/{partition}/{id}")).await?))
}

/// A dead letter's reference, `<family>/<partition>/<id>`, as listed.
#[derive(ToSchema)]
#[schema(pattern = r"^[a-z][a-z0-9_-]*/[0-9]{1,5}/[0-9]{1,20}-[0-9]{1,20}$")]
#[allow(dead_code)]
pub struct DlqReference(String);

/// Which dead letters to redrive, and how fast.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveBody {
    #[schema(pattern = r"^(events|send|broadcast)$")]
    pub family: Option<String>,
    pub group: Option<String>,
    pub error: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    /// References (`<family>/<partition>/<id>`).
    #[schema(value_type = Option<Vec<DlqReference>>)]
    pub ids: Option<Vec<String>>,
    /// Letters per second (default 100; 0.1 to 10,000).
    #[schema(minimum = 0.1, maximum = 10000)]
    pub rate: Option<f64>,
    /// Every dead letter (of `family`, when given): needed when no other filter is.
    #[serde(default)]
    pub all: bool,
}

#[utoipa::path(
    post,
    path = "/v1/ops/dlq/redrive",
    tag = "ops",
    request_body = RedriveBody,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The redrive started: each letter goes back to its group with a fresh delivery count, at the rate; follow and cancel it at /v1/ops/tasks/{id}", body = Task),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only the sre role redrives", body = ErrorBody),
        (status = 409, description = "A redrive of the same stream family is already running", body = ErrorBody),
        (status = 422, description = "A bad filter or rate, no filter without `all: true`, or nothing matching", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    )
)]
pub async fn redrive(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<RedriveBody>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    sre(&state, &principal, "redrive dead letters").await?;
    let filter = DlqFilter {
        family: body.family,
        group: body.group,
        error: body.error,
        since: body.since,
        until: body.until,
        ids: body.ids,
    };
    if !body.all && filter.is_everything() {
        return Err(ApiError::Unprocessable {
            code: "invalid_operation",
            message: "name what to redrive (family, group, error, since, until, ids), or send \"all\": true".into(),
            details: None,
        });
    }
    let actor = actor(&state, &principal).await;
    let (letters, running) = state.ops.redrive_start(&filter, body.rate, &actor).await?;
    let task = running.task.clone();
    let ops = state.ops.clone();
    tokio::spawn(async move {
        if let Err(error) = ops.redrive_run(letters, running).await {
            tracing::warn!(error = %error, "redrive failed");
        }
    });
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// Which dead letters to delete; nothing is deleted without `execute: true`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeBody {
    #[schema(pattern = r"^(events|send|broadcast)$")]
    pub family: Option<String>,
    pub group: Option<String>,
    pub error: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    /// References (`<family>/<partition>/<id>`).
    #[schema(value_type = Option<Vec<DlqReference>>)]
    pub ids: Option<Vec<String>>,
    #[serde(default)]
    pub execute: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Purged {
    /// Letters matching (without `execute`) or deleted (with it).
    pub count: u64,
    pub executed: bool,
    /// More letters may match than one run takes (100,000): run it again for the rest.
    pub more: bool,
}

#[utoipa::path(
    post,
    path = "/v1/ops/dlq/purge",
    tag = "ops",
    request_body = PurgeBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "How many match (nothing done), or how many were deleted with `execute: true`", body = Purged),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only the sre role purges", body = ErrorBody),
        (status = 422, description = "A bad filter", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    )
)]
pub async fn purge(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<PurgeBody>,
) -> Result<Json<Purged>, ApiError> {
    sre(&state, &principal, "purge dead letters").await?;
    let filter = DlqFilter {
        family: body.family,
        group: body.group,
        error: body.error,
        since: body.since,
        until: body.until,
        ids: body.ids,
    };
    let actor = actor(&state, &principal).await;
    let (count, more) = state.ops.dlq_purge(&filter, body.execute, &actor).await?;
    Ok(Json(Purged { count, executed: body.execute, more }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    #[schema(pattern = r"^(events|send|broadcast)$")]
    pub family: Option<String>,
    /// A group of the family (a gateway node's: `gateway.<node>`).
    #[schema(min_length = 1, max_length = 200)]
    pub group: String,
    /// How long an entry must have been idle (`5m`): at least the group's `claim_idle`, at
    /// most 365 days.
    #[schema(
        pattern = r"^([1-9][0-9]{0,4}s|[1-9][0-9]{0,4}m|[1-9][0-9]{0,2}h|([1-9]|[1-9][0-9]|[12][0-9]{2}|3[0-5][0-9]|36[0-5])d)$"
    )]
    pub idle: String,
}

fn duration(field: &str, raw: &str) -> Result<std::time::Duration, ApiError> {
    chatdesk_core::duration::parse_duration(raw).map_err(|error| ApiError::invalid_field(field, error.to_string()))
}

#[utoipa::path(
    post,
    path = "/v1/ops/claim",
    tag = "ops",
    request_body = ClaimBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Entries idle past `idle` handed to the group's live consumers; dead consumers removed", body = Claimed),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only the sre role claims", body = ErrorBody),
        (status = 422, description = "An unknown group or family, or a bad duration", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    )
)]
pub async fn claim(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<ClaimBody>,
) -> Result<Json<Claimed>, ApiError> {
    sre(&state, &principal, "claim entries").await?;
    let idle = duration("idle", &body.idle)?;
    let actor = actor(&state, &principal).await;
    Ok(Json(state.ops.claim(body.family.as_deref(), &body.group, idle, &actor).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneBody {
    /// How long a gateway group or an empty consumer must have been idle (default `1m`; 1 s to
    /// 365 days).
    #[schema(
        pattern = r"^([1-9][0-9]{0,4}s|[1-9][0-9]{0,4}m|[1-9][0-9]{0,2}h|([1-9]|[1-9][0-9]|[12][0-9]{2}|3[0-5][0-9]|36[0-5])d)$"
    )]
    pub idle: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/ops/groups/prune",
    tag = "ops",
    request_body = PruneBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Gone gateways' groups and idle consumers holding nothing, removed", body = Pruned),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only the sre role prunes", body = ErrorBody),
        (status = 422, description = "A bad duration", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    )
)]
pub async fn prune(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<PruneBody>,
) -> Result<Json<Pruned>, ApiError> {
    sre(&state, &principal, "prune groups").await?;
    let idle = duration("idle", body.idle.as_deref().unwrap_or("1m"))?;
    let actor = actor(&state, &principal).await;
    Ok(Json(state.ops.prune(idle, &actor).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    /// The newest replays and redrives first.
    pub items: Vec<Task>,
}

#[utoipa::path(
    get,
    path = "/v1/ops/tasks",
    tag = "ops",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recent replays and redrives with their progress", body = TaskList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only the sre role sees tasks", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    )
)]
pub async fn list_tasks(State(state): State<AppState>, principal: Principal) -> Result<Json<TaskList>, ApiError> {
    sre(&state, &principal, "see tasks").await?;
    Ok(Json(TaskList { items: state.ops.tasks().await? }))
}

#[utoipa::path(
    get,
    path = "/v1/ops/tasks/{id}",
    tag = "ops",
    params(("id" = uuid::Uuid, Path, description = "The task's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The task's progress: moved, skipped, remaining, state", body = Task),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only the sre role sees tasks", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
    )
)]
pub async fn get_task(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<uuid::Uuid>,
) -> Result<Json<Task>, ApiError> {
    sre(&state, &principal, "see tasks").await?;
    Ok(Json(state.ops.task(&id.to_string()).await?))
}

#[utoipa::path(
    post,
    path = "/v1/ops/tasks/{id}/cancel",
    tag = "ops",
    params(("id" = uuid::Uuid, Path, description = "The task's id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Asked to stop: it stops before its next entry", body = Task),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only the sre role cancels tasks", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 422, description = "The task has already finished", body = ErrorBody),
    )
)]
pub async fn cancel_task(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<uuid::Uuid>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    sre(&state, &principal, "cancel tasks").await?;
    Ok((StatusCode::ACCEPTED, Json(state.ops.cancel_task(&id.to_string()).await?)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// The previous page's `next_cursor`.
    #[param(pattern = r"^[1-9][0-9]{0,17}$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<chatdesk_ops::audit::AuditEntry>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/ops/audit",
    tag = "ops",
    params(AuditQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Operator actions, newest first: who, when, what, how many", body = AuditPage),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only the sre role sees the audit log", body = ErrorBody),
        (status = 422, description = "An invalid cursor or limit", body = ErrorBody),
    )
)]
pub async fn audit(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    sre(&state, &principal, "see the audit log").await?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "must be 1 to 500"));
    }
    let before = match &query.cursor {
        None => None,
        Some(cursor) => Some(
            cursor
                .parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| ApiError::invalid_field("cursor", "not a cursor of this list"))?,
        ),
    };
    let mut items = state.ops.audit_list(limit + 1, before).await?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_cursor = more.then(|| items.last().map(|entry| entry.id.to_string())).flatten();
    Ok(Json(AuditPage { items, next_cursor }))
}
