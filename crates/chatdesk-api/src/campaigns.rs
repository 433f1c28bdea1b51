//! Broadcast campaigns for marketers: create (JSON or CSV, validated up front, idempotent by
//! `Idempotency-Key`), list, progress, recipients, pause / resume / cancel. Recipients and their
//! statuses live in PostgreSQL; the `broadcaster` role sends them (see `chatdesk-broadcast`).

use std::collections::HashSet;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chatdesk_core::campaign::{AddressKind, normalise_address, placeholders};
use chatdesk_core::envelope::Template;
use chatdesk_store::campaigns::{self as store, CampaignRow, Created, NewCampaign};
use chatdesk_store::directory::InboxKind;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, parse_json};
use crate::openapi::ErrorBody;

/// Roles that run campaigns.
pub const MARKETING_ROLES: &[Role] = &[Role::Owner, Role::Admin, Role::Marketer];

/// Recipients one campaign may have.
pub const MAX_RECIPIENTS: usize = 100_000;
/// A campaign request's body may be this large (a CSV of [`MAX_RECIPIENTS`] rows).
pub const MAX_CAMPAIGN_BODY_BYTES: usize = 16 * 1024 * 1024;
const MAX_NAME_CHARS: usize = 200;
const MAX_KEY_CHARS: usize = 200;
const MAX_VARS: usize = 50;
const MAX_VAR_CHARS: usize = 1024;
/// Columns a CSV row may have: `to` and the variables.
const MAX_CSV_FIELDS: usize = MAX_VARS + 1;
/// A template's components as JSON: every recipient's message carries them.
const MAX_TEMPLATE_BYTES: usize = 16 * 1024;
/// How far ahead a campaign may start, and how long after its start it may expire.
const MAX_AHEAD: time::Duration = time::Duration::days(366);
/// Rejected rows listed in an answer (the count is always exact).
const MAX_REJECTED_LISTED: usize = 1000;
/// How long a finished or cancelled campaign's state key lives (messages of it may still be
/// queued at a sender for a while).
const FINAL_STATE_TTL_SECONDS: i64 = 7 * 86_400;
/// The window the measured rate is taken over.
const RATE_WINDOW_SECONDS: i64 = 10;

fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// The highest rate a channel allows one sender (WhatsApp's highest throughput tier, Telegram's
/// per-bot limit; the generic channel is the receiver's business).
fn channel_max_rate(kind: InboxKind) -> Option<u32> {
    match kind {
        InboxKind::Whatsapp => Some(1000),
        InboxKind::Telegram => Some(30),
        InboxKind::Generic => Some(1000),
        InboxKind::Web => None,
    }
}

fn address_kind(kind: InboxKind) -> AddressKind {
    match kind {
        InboxKind::Whatsapp => AddressKind::Phone,
        InboxKind::Telegram => AddressKind::TelegramChat,
        InboxKind::Generic | InboxKind::Web => AddressKind::Generic,
    }
}

/// One recipient: an address on the inbox's channel and the values of the text's variables.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipientInput {
    /// A phone number in international format (WhatsApp), a chat id (Telegram), the receiver's
    /// id (generic).
    #[schema(min_length = 1, max_length = 256)]
    pub to: String,
    /// `{{name}}` in the text (and in template parameters) is replaced by `vars.name`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub vars: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateInput {
    /// The approved template's name.
    pub name: String,
    /// Its language code, e.g. `en_US`.
    pub language: String,
    /// The Cloud API's `components` array; a parameter text of `{{name}}` is filled per recipient.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub components: Option<serde_json::Value>,
}

/// A campaign to create. Recipients come from `recipients`, from `recipients_csv` (a CSV text
/// whose header has a `to` column and one column per variable), or from a `text/csv` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaign {
    pub inbox_id: Uuid,
    /// Shown in the dashboard; defaults to "Campaign" and the creation time.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub name: Option<String>,
    /// The message, with `{{variable}}` placeholders. With a template, what the conversation
    /// history shows.
    #[schema(min_length = 1, max_length = 4096)]
    pub text: String,
    /// Messages per second on this sender, at most the channel's maximum (WhatsApp 1000,
    /// Telegram 30, generic 1000).
    #[schema(minimum = 1, maximum = 1000)]
    pub rate_per_sec: u32,
    #[serde(default, deserialize_with = "at_most_max_recipients")]
    pub recipients: Option<Vec<RecipientInput>>,
    #[serde(default)]
    pub recipients_csv: Option<String>,
    /// The inbox's stored contacts instead of a list: every contact of the inbox, or those whose
    /// conversation was active within the last `seen_within_days`. Each has the variable `name`
    /// (its name, or its address when it has none).
    #[serde(default)]
    pub audience: Option<Audience>,
    /// WhatsApp: send this approved template (marketing outside the 24-hour window).
    #[serde(default)]
    pub template: Option<TemplateInput>,
    /// RFC 3339; the campaign waits until then (default: now).
    #[serde(default)]
    pub start_at: Option<String>,
    /// RFC 3339; a message not sent by then is `expired`, never sent late.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Validate and report only; nothing is created.
    #[serde(default)]
    pub dry_run: bool,
}

/// Recipients chosen among the inbox's stored contacts.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    /// Only contacts whose conversation was active within this many days (1 to 3650).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3650)]
    pub seen_within_days: Option<u32>,
}

/// `recipients`, refused as soon as it holds more than [`MAX_RECIPIENTS`], so a huge list is
/// never held in memory whole.
fn at_most_max_recipients<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<RecipientInput>>, D::Error> {
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<RecipientInput>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(formatter, "a list of at most {MAX_RECIPIENTS} recipients")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                if items.len() == MAX_RECIPIENTS {
                    return Err(serde::de::Error::custom(format!("at most {MAX_RECIPIENTS} recipients per campaign")));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    deserializer.deserialize_seq(Bounded).map(Some)
}

/// Recipients per status; they always add up to `total`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignCounts {
    pub total: i64,
    pub pending: i64,
    pub queued: i64,
    pub sent: i64,
    pub delivered: i64,
    pub read: i64,
    pub failed: i64,
    pub skipped: i64,
    pub expired: i64,
    pub deferred: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignView {
    pub id: Uuid,
    pub inbox_id: Uuid,
    pub name: String,
    pub text: String,
    /// scheduled, running, paused, cancelled or finished (every recipient has a final status).
    pub status: String,
    pub rate_per_sec: i32,
    /// RFC 3339.
    pub start_at: String,
    pub expires_at: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub counts: CampaignCounts,
    /// Sends per second, from the intervals between the sends of the last 10 seconds; 0 when
    /// the campaign is not running.
    pub measured_rate: f64,
    /// When the pending and queued recipients will have been sent at the measured rate (or the
    /// configured one before sending starts); `null` when nothing is left.
    pub estimated_finish_at: Option<String>,
}

/// A recipient that was not taken: its index in `recipients` (from 0) or its CSV line (the
/// header is line 1), what it said, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct RejectedRecipient {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub to: String,
    pub reason: String,
}

/// What validation made of the recipients.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecipientReport {
    /// Recipients the campaign has (opted-out ones among them, as `skipped`).
    pub accepted: usize,
    /// Repeats of an address given earlier, removed.
    pub duplicates: usize,
    /// Addresses that opted out of this inbox; stored as `skipped`.
    pub opted_out: usize,
    pub rejected_count: usize,
    /// The first 1,000 rejected recipients.
    pub rejected: Vec<RejectedRecipient>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedCampaign {
    /// `null` for a dry run.
    pub campaign: Option<CampaignView>,
    pub report: RecipientReport,
    /// The `Idempotency-Key` was used before: this is the campaign made then, and `report`
    /// describes this request's recipients.
    pub replayed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignList {
    pub items: Vec<CampaignView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecipientView {
    /// The recipient's place in the campaign, from 0.
    pub position: i32,
    pub to: String,
    #[schema(value_type = Object)]
    pub vars: serde_json::Value,
    /// pending, queued, sent, delivered, read, failed, skipped, expired or deferred.
    pub status: String,
    /// Why it failed, was skipped, expired or was deferred.
    pub reason: Option<String>,
    /// The message in the recipient's conversation, once handed over.
    pub message_id: Option<Uuid>,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecipientPage {
    pub items: Vec<RecipientView>,
    /// Pass as `after` for the next page; `null` at the end.
    pub next_after: Option<i32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RecipientQuery {
    /// Only recipients with this status.
    pub status: Option<String>,
    /// Recipients after this position (from the previous page's `next_after`).
    pub after: Option<i32>,
    /// 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CsvQuery {
    pub inbox_id: Option<Uuid>,
    pub text: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub rate_per_sec: Option<u32>,
    pub name: Option<String>,
    pub start_at: Option<String>,
    pub expires_at: Option<String>,
    pub dry_run: Option<bool>,
}

pub(crate) async fn view(state: &AppState, row: CampaignRow) -> Result<CampaignView, ApiError> {
    let progress =
        store::progress(&state.db, row.tenant_id, row.id, RATE_WINDOW_SECONDS).await.map_err(ApiError::store)?;
    let count = |status: &str| progress.counts.get(status).copied().unwrap_or(0);
    // Only a campaign that is sending has a rate.
    let measured_rate = if row.status == "running" { progress.measured_rate } else { 0.0 };
    let left = count("pending") + count("queued") + count("deferred");
    let estimated_finish_at = (left > 0 && matches!(row.status.as_str(), "running" | "scheduled")).then(|| {
        let rate = if measured_rate > 0.0 { measured_rate } else { f64::from(row.rate_per_sec.max(1)) };
        let from = row.start_at.max(OffsetDateTime::now_utc());
        from.checked_add(time::Duration::seconds_f64(left as f64 / rate)).map(rfc3339).unwrap_or_default()
    });
    Ok(CampaignView {
        id: row.id,
        inbox_id: row.inbox_id,
        name: row.name,
        text: row.text,
        status: row.status,
        rate_per_sec: row.rate_per_sec,
        start_at: rfc3339(row.start_at),
        expires_at: row.expires_at.map(rfc3339),
        created_at: rfc3339(row.created_at),
        finished_at: row.finished_at.map(rfc3339),
        counts: CampaignCounts {
            total: count("total"),
            pending: count("pending"),
            queued: count("queued"),
            sent: count("sent"),
            delivered: count("delivered"),
            read: count("read"),
            failed: count("failed"),
            skipped: count("skipped"),
            expired: count("expired"),
            deferred: count("deferred"),
        },
        measured_rate,
        estimated_finish_at,
    })
}

/// One row of a CSV text: its line and fields. Quoted fields may hold commas, quotes (`""`)
/// and line breaks.
fn parse_csv(text: &str) -> Result<Vec<(usize, Vec<String>)>, ApiError> {
    let bad = |line: usize, reason: &str| ApiError::Unprocessable {
        code: "invalid_csv",
        message: format!("CSV line {line}: {reason}"),
        details: Some(serde_json::json!({ "line": line })),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let (mut line, mut row_line) = (1usize, 1usize);
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut at_field_start = true;
    while let Some(character) = chars.next() {
        if quoted {
            match character {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    quoted = false;
                    if !matches!(chars.peek(), None | Some(',' | '\n' | '\r')) {
                        return Err(bad(line, "a closing quote must end its field"));
                    }
                }
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                other => field.push(other),
            }
            continue;
        }
        match character {
            '"' if at_field_start => {
                quoted = true;
                at_field_start = false;
            }
            '"' => return Err(bad(line, "a quote inside an unquoted field (quote the whole field)")),
            ',' => {
                fields.push(std::mem::take(&mut field));
                if fields.len() > MAX_CSV_FIELDS {
                    return Err(bad(line, &format!("more than {MAX_CSV_FIELDS} fields")));
                }
                at_field_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => {
                fields.push(std::mem::take(&mut field));
                if !(fields.len() == 1 && fields[0].trim().is_empty()) {
                    // The header and one row more than a campaign may have: enough to refuse
                    // without holding a huge upload in memory row by row.
                    if rows.len() > MAX_RECIPIENTS {
                        return Err(ApiError::invalid_field(
                            "recipients_csv",
                            format!("at most {MAX_RECIPIENTS} recipients per campaign"),
                        ));
                    }
                    rows.push((row_line, std::mem::take(&mut fields)));
                }
                fields.clear();
                line += 1;
                row_line = line;
                at_field_start = true;
            }
            other => {
                field.push(other);
                at_field_start = false;
            }
        }
    }
    if quoted {
        return Err(bad(row_line, "a quoted field is never closed"));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        if !(fields.len() == 1 && fields[0].trim().is_empty()) {
            rows.push((row_line, fields));
        }
    }
    Ok(rows)
}

/// Where a recipient came from, for its report.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Index(usize),
    Line(usize),
}

fn rejected(origin: Origin, to: &str, reason: String) -> RejectedRecipient {
    let (index, line) = match origin {
        Origin::Index(index) => (Some(index), None),
        Origin::Line(line) => (None, Some(line)),
    };
    RejectedRecipient { index, line, to: to.chars().take(100).collect(), reason }
}

/// A recipient as given: where it came from, its address, its variables.
type Given = (Origin, String, serde_json::Map<String, serde_json::Value>);

fn csv_recipients(csv: &str) -> Result<Vec<Given>, ApiError> {
    let rows = parse_csv(csv)?;
    let Some((_, header)) = rows.first() else {
        return Err(ApiError::invalid_field("recipients_csv", "is empty: expected a header with a `to` column"));
    };
    let header: Vec<String> = header.iter().map(|name| name.trim().to_owned()).collect();
    let mut seen = HashSet::new();
    if let Some(repeated) = header.iter().find(|name| !name.is_empty() && !seen.insert(name.to_ascii_lowercase())) {
        return Err(ApiError::Unprocessable {
            code: "invalid_csv",
            message: format!("CSV line 1: the column {repeated:?} appears twice"),
            details: Some(serde_json::json!({ "line": 1 })),
        });
    }
    let Some(to_column) = header.iter().position(|name| name.eq_ignore_ascii_case("to")) else {
        return Err(ApiError::invalid_field("recipients_csv", "the header has no `to` column"));
    };
    let mut out = Vec::with_capacity(rows.len());
    for (line, fields) in rows.iter().skip(1) {
        if fields.len() != header.len() {
            return Err(ApiError::Unprocessable {
                code: "invalid_csv",
                message: format!("CSV line {line}: {} fields, the header has {}", fields.len(), header.len()),
                details: Some(serde_json::json!({ "line": line })),
            });
        }
        let mut vars = serde_json::Map::new();
        for (index, name) in header.iter().enumerate() {
            if index != to_column && !name.is_empty() {
                vars.insert(name.clone(), serde_json::Value::String(fields[index].clone()));
            }
        }
        out.push((Origin::Line(*line), fields[to_column].clone(), vars));
    }
    Ok(out)
}

fn parse_time(field: &str, value: Option<&str>) -> Result<Option<OffsetDateTime>, ApiError> {
    value
        .map(|text| {
            OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|_| ApiError::invalid_field(field, "must be an RFC 3339 time, e.g. 2026-12-24T09:00:00Z"))
        })
        .transpose()
}

/// The validated campaign and what became of its recipients.
struct Checked {
    campaign: NewCampaign,
    report: RecipientReport,
}

async fn check(
    state: &AppState,
    principal: &Principal,
    request: CreateCampaign,
    key: Option<String>,
) -> Result<Checked, ApiError> {
    let inbox = state
        .inboxes
        .get(request.inbox_id)
        .await
        .map_err(ApiError::store)?
        .filter(|inbox| inbox.tenant_id == principal.tenant)
        .ok_or_else(|| ApiError::invalid_field("inbox_id", "no such inbox"))?;
    let Some(max_rate) = channel_max_rate(inbox.kind) else {
        return Err(ApiError::invalid_field(
            "inbox_id",
            "a web widget inbox cannot send campaigns: its visitors have no address to send to",
        ));
    };
    if request.rate_per_sec == 0 || request.rate_per_sec > max_rate {
        return Err(ApiError::invalid_field(
            "rate_per_sec",
            format!("must be 1 to {max_rate} messages per second on a {} inbox", inbox.kind.as_str()),
        ));
    }
    // PostgreSQL stores no NUL: removed, as from every entry (`Envelope::of`), rather than
    // failing the insert.
    let text = chatdesk_conversations::text::message_text(&chatdesk_core::envelope::text_without_nul(&request.text))
        .map_err(|error| ApiError::invalid_field("text", error.to_string()))?;
    let name = match request.name.as_deref().map(str::trim) {
        Some(name) if name.chars().count() > MAX_NAME_CHARS || name.contains('\0') => {
            return Err(ApiError::invalid_field("name", format!("must be 1 to {MAX_NAME_CHARS} characters")));
        }
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => {
            let now = OffsetDateTime::now_utc();
            format!("Campaign {} {:02}:{:02} UTC", now.date(), now.hour(), now.minute())
        }
    };
    let template = match request.template {
        Some(template) => {
            if inbox.kind != InboxKind::Whatsapp {
                return Err(ApiError::invalid_field("template", "only WhatsApp inboxes send templates"));
            }
            let has_nul = template.name.contains('\0')
                || template.language.contains('\0')
                || template.components.as_ref().is_some_and(|components| components.to_string().contains("\\u0000"));
            if has_nul {
                return Err(ApiError::invalid_field("template", "must not contain U+0000"));
            }
            if template.name.trim().is_empty() || template.name.len() > 512 {
                return Err(ApiError::invalid_field("template.name", "must be 1 to 512 bytes"));
            }
            if template.language.trim().is_empty() || template.language.len() > 20 {
                return Err(ApiError::invalid_field("template.language", "must be a language code such as en_US"));
            }
            if template.components.as_ref().is_some_and(|components| !components.is_array()) {
                return Err(ApiError::invalid_field("template.components", "must be the Cloud API's components array"));
            }
            if template.components.as_ref().is_some_and(|components| components.to_string().len() > MAX_TEMPLATE_BYTES)
            {
                return Err(ApiError::invalid_field(
                    "template.components",
                    format!("must be at most {} KiB as JSON", MAX_TEMPLATE_BYTES / 1024),
                ));
            }
            Some(Template { name: template.name, language: template.language, components: template.components })
        }
        None => None,
    };
    let now = OffsetDateTime::now_utc();
    // A start in the past is now: it must not jump the queue of campaigns waiting to run.
    let start_at = parse_time("start_at", request.start_at.as_deref())?.unwrap_or(now).max(now);
    if start_at > now + MAX_AHEAD {
        return Err(ApiError::invalid_field("start_at", "must be within a year from now"));
    }
    let expires_at = parse_time("expires_at", request.expires_at.as_deref())?;
    if expires_at.is_some_and(|expires| expires > start_at + MAX_AHEAD) {
        return Err(ApiError::invalid_field("expires_at", "must be within a year of start_at"));
    }
    if let Some(expires) = expires_at
        && (expires <= now || expires <= start_at)
    {
        return Err(ApiError::invalid_field("expires_at", "must be in the future and after start_at"));
    }
    // Every variable the text and the template use must have a value for each recipient.
    let mut needed = placeholders(&text);
    if let Some(bad) = needed.iter().find(|name| !chatdesk_core::campaign::is_variable_name(name)) {
        return Err(ApiError::invalid_field(
            "text",
            format!("{{{{{bad}}}}} is not a variable: names are letters, digits and _"),
        ));
    }
    if let Some(components) = template.as_ref().and_then(|template| template.components.as_ref()) {
        for name in placeholders(&components.to_string()) {
            if !needed.contains(&name) {
                needed.push(name);
            }
        }
    }
    let given: Vec<Given> = match (request.recipients, request.recipients_csv, request.audience) {
        (Some(list), None, None) => list
            .into_iter()
            .enumerate()
            .map(|(index, recipient)| (Origin::Index(index), recipient.to, recipient.vars))
            .collect(),
        (None, Some(csv), None) => csv_recipients(&csv)?,
        (None, None, Some(audience)) => {
            let days = audience.seen_within_days;
            if days.is_some_and(|days| !(1..=3650).contains(&days)) {
                return Err(ApiError::invalid_field("audience.seen_within_days", "must be 1 to 3650"));
            }
            let contacts =
                store::audience(&state.db, principal.tenant, inbox.id, days.map(i64::from), MAX_RECIPIENTS as i64 + 1)
                    .await
                    .map_err(ApiError::store)?;
            contacts
                .into_iter()
                .enumerate()
                .map(|(index, (address, name))| {
                    let mut vars = serde_json::Map::new();
                    vars.insert("name".to_owned(), serde_json::Value::String(name.unwrap_or_else(|| address.clone())));
                    (Origin::Index(index), address, vars)
                })
                .collect()
        }
        (None, None, None) => {
            return Err(ApiError::invalid_field("recipients", "is required (or recipients_csv, or audience)"));
        }
        _ => {
            return Err(ApiError::invalid_field(
                "recipients",
                "give one of recipients, recipients_csv and audience, not several",
            ));
        }
    };
    if given.is_empty() {
        return Err(ApiError::invalid_field("recipients", "is empty"));
    }
    if given.len() > MAX_RECIPIENTS {
        return Err(ApiError::invalid_field("recipients", format!("at most {MAX_RECIPIENTS} per campaign")));
    }
    let kind = address_kind(inbox.kind);
    let mut seen = HashSet::new();
    let (mut accepted, mut rejected_rows, mut rejected_count, mut duplicates) = (Vec::new(), Vec::new(), 0, 0);
    for (origin, to, vars) in given {
        let problem = (|| {
            let address = normalise_address(kind, &to).map_err(|reason| format!("to: {reason}"))?;
            if vars.len() > MAX_VARS {
                return Err(format!("at most {MAX_VARS} variables"));
            }
            for (name, value) in &vars {
                let fits = match value {
                    serde_json::Value::String(text) => text.chars().count() <= MAX_VAR_CHARS && !text.contains('\0'),
                    serde_json::Value::Number(_) | serde_json::Value::Bool(_) => true,
                    _ => false,
                };
                if !fits || name.contains('\0') {
                    return Err(format!(
                        "vars.{name}: must be a string of at most {MAX_VAR_CHARS} characters or a number"
                    ));
                }
            }
            // A blank value would send "Hi !": it counts as none.
            let blank = |name: &str| match vars.get(name) {
                None => true,
                Some(serde_json::Value::String(text)) => text.trim().is_empty(),
                Some(_) => false,
            };
            if let Some(missing) = needed.iter().find(|name| blank(name)) {
                return Err(format!("no value for the variable {missing:?}"));
            }
            Ok(address)
        })();
        match problem {
            Ok(address) => {
                if seen.insert(address.clone()) {
                    accepted.push((address, serde_json::Value::Object(vars)));
                } else {
                    duplicates += 1;
                }
            }
            Err(reason) => {
                rejected_count += 1;
                if rejected_rows.len() < MAX_REJECTED_LISTED {
                    rejected_rows.push(rejected(origin, &to, reason));
                }
            }
        }
    }
    let addresses: Vec<String> = accepted.iter().map(|(address, _)| address.clone()).collect();
    let opted_out = if addresses.is_empty() {
        0
    } else {
        store::opted_out(&state.db, principal.tenant, inbox.id, &addresses).await.map_err(ApiError::store)?.len()
    };
    let report =
        RecipientReport { accepted: accepted.len(), duplicates, opted_out, rejected_count, rejected: rejected_rows };
    if accepted.len() == opted_out {
        return Err(ApiError::Unprocessable {
            code: "no_recipients",
            message: format!(
                "nothing left to send: {} rejected, {} duplicates, {} opted out",
                report.rejected_count, report.duplicates, report.opted_out
            ),
            details: Some(serde_json::to_value(&report).unwrap_or_default()),
        });
    }
    let campaign = NewCampaign {
        id: Uuid::now_v7(),
        tenant_id: principal.tenant,
        inbox_id: inbox.id,
        name,
        text,
        template: template.map(|template| serde_json::to_value(template).unwrap_or_default()),
        rate_per_sec: request.rate_per_sec as i32,
        start_at,
        expires_at,
        idempotency_key: key,
        request_hash: Vec::new(),
        created_by: principal.user,
        recipients: accepted,
    };
    Ok(Checked { campaign, report })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().map_err(|_| ApiError::BadRequest {
        code: "invalid_header",
        message: "Idempotency-Key must be visible ASCII".into(),
        details: None,
    })?;
    let key = key.trim();
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS {
        return Err(ApiError::BadRequest {
            code: "invalid_header",
            message: format!("Idempotency-Key must be 1 to {MAX_KEY_CHARS} characters"),
            details: None,
        });
    }
    Ok(Some(key.to_owned()))
}

/// Writes the state senders and runners read, unless a later change (a higher version) is there
/// already: two controls at once leave Redis where PostgreSQL ends. Final states expire after a
/// week; others never do, since a paused campaign must stay paused however long it waits.
static SET_STATE: std::sync::LazyLock<chatdesk_streams::Script> = std::sync::LazyLock::new(|| {
    chatdesk_streams::Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, ':(%d+)$') or '0')
  if version > tonumber(ARGV[2]) then
    return 0
  end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'EX', tonumber(ARGV[3]))
else
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2])
end
return 1
"#,
    )
});

async fn set_state(state: &AppState, row: &CampaignRow) -> Result<(), ApiError> {
    let value = chatdesk_core::campaign::state_of_status(&row.status);
    let ttl = if value == "cancelled" { FINAL_STATE_TTL_SECONDS } else { 0 };
    let _: i64 = SET_STATE
        .call(
            &state.redis,
            vec![state.keys.campaign_state(&row.id)],
            vec![value.to_owned(), row.version().to_string(), ttl.to_string()],
        )
        .await
        .map_err(|error| {
            tracing::warn!(error = %error, "cannot record a campaign's state");
            ApiError::Unavailable { dependency: "Redis" }
        })?;
    Ok(())
}

/// Creates a campaign. `application/json`: a `CreateCampaign`. `text/csv`: the recipients, with
/// the campaign's fields as query parameters.
#[utoipa::path(
    post,
    path = "/v1/campaigns",
    tag = "campaigns",
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "A retried create with the same key (per tenant) answers the first campaign instead of making another"),
        CsvQuery,
    ),
    request_body(content(
        (CreateCampaign = "application/json"),
        (String = "text/csv", example = "to,name\n+16505551234,Ana\n"),
    )),
    responses(
        (status = 201, description = "Created", body = CreatedCampaign),
        (status = 200, description = "A dry run (`campaign` is null), or a retry: the Idempotency-Key was used before with the same request, and this is the campaign made then (`replayed`)", body = CreatedCampaign),
        (status = 409, description = "The Idempotency-Key was used before with a different request", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not run campaigns (marketer, admin and owner may)", body = ErrorBody),
        (status = 413, description = "The body is larger than 16 MiB", body = ErrorBody),
        (status = 415, description = "The body is neither application/json nor text/csv", body = ErrorBody),
        (status = 422, description = "A field is invalid (invalid_field), a CSV row is malformed (invalid_csv, with its line), or no recipient is left to send to (no_recipients, with the report)", body = ErrorBody),
        (status = 503, description = "PostgreSQL or Redis is unavailable; nothing was created", body = ErrorBody),
    )
)]
pub async fn create_campaign(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<CsvQuery>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<CreatedCampaign>), ApiError> {
    principal.require(MARKETING_ROLES, "run campaigns")?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                message: format!("a campaign request may be at most {} MiB", MAX_CAMPAIGN_BODY_BYTES / 1024 / 1024),
            }
        } else {
            ApiError::BadRequest { code: "invalid_body", message: rejection.body_text(), details: None }
        }
    })?;
    // What the request said, to tell a retry (same request) from a reuse of its key.
    let request_hash = {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update(uri.query().unwrap_or_default().as_bytes());
        hash.update([0]);
        hash.update(&body);
        hash.finalize().to_vec()
    };
    let mime = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|mime| mime.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let request = match mime.as_str() {
        "application/json" => {
            if query.inbox_id.is_some() || query.text.is_some() || query.rate_per_sec.is_some() {
                return Err(ApiError::BadRequest {
                    code: "invalid_query",
                    message: "with a JSON body, give the campaign's fields in the body".into(),
                    details: None,
                });
            }
            let mut request: CreateCampaign = parse_json(&body)?;
            request.dry_run = request.dry_run || query.dry_run.unwrap_or(false);
            request
        }
        "text/csv" => {
            let csv = std::str::from_utf8(&body).map_err(|_| ApiError::BadRequest {
                code: "invalid_body",
                message: "the CSV is not UTF-8".into(),
                details: None,
            })?;
            let missing =
                |field: &str| ApiError::invalid_field(field, "is required as a query parameter with a CSV body");
            CreateCampaign {
                inbox_id: query.inbox_id.ok_or_else(|| missing("inbox_id"))?,
                name: query.name,
                text: query.text.ok_or_else(|| missing("text"))?,
                rate_per_sec: query.rate_per_sec.ok_or_else(|| missing("rate_per_sec"))?,
                recipients: None,
                recipients_csv: Some(csv.to_owned()),
                audience: None,
                template: None,
                start_at: query.start_at,
                expires_at: query.expires_at,
                dry_run: query.dry_run.unwrap_or(false),
            }
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType {
                message: "expected Content-Type: application/json or text/csv".into(),
            });
        }
    };
    let key = idempotency_key(&headers)?;
    let dry_run = request.dry_run;
    let mut checked = check(&state, &principal, request, key).await?;
    if dry_run {
        return Ok((StatusCode::OK, Json(CreatedCampaign { campaign: None, report: checked.report, replayed: false })));
    }
    checked.campaign.request_hash = request_hash;
    let (row, replayed) = match store::create(&state.db, &checked.campaign).await.map_err(ApiError::store)? {
        Created::New(row) => (row, false),
        Created::Existing { campaign, same_request: true } => (campaign, true),
        Created::Existing { campaign, same_request: false } => {
            return Err(ApiError::Conflict {
                message: format!(
                    "this Idempotency-Key made campaign {} with a different request; use a new key for a new campaign",
                    campaign.id
                ),
            });
        }
    };
    // Senders and runners read the state here (a missing one counts as running); set it again
    // on a replay, in case the first attempt failed after storing the campaign.
    set_state(&state, &row).await?;
    let status = if replayed { StatusCode::OK } else { StatusCode::CREATED };
    let campaign = view(&state, row).await?;
    tracing::info!(campaign = %campaign.id, recipients = checked.report.accepted, replayed, "campaign created");
    Ok((status, Json(CreatedCampaign { campaign: Some(campaign), report: checked.report, replayed })))
}

#[utoipa::path(
    get,
    path = "/v1/campaigns",
    tag = "campaigns",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The tenant's campaigns, newest first (up to 200)", body = CampaignList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not run campaigns", body = ErrorBody),
    )
)]
pub async fn list_campaigns(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<CampaignList>, ApiError> {
    principal.require(MARKETING_ROLES, "run campaigns")?;
    let rows = store::list(&state.db, principal.tenant, 200).await.map_err(ApiError::store)?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        items.push(view(&state, row).await?);
    }
    Ok(Json(CampaignList { items }))
}

async fn campaign_of(state: &AppState, principal: &Principal, id: Uuid) -> Result<CampaignRow, ApiError> {
    principal.require(MARKETING_ROLES, "run campaigns")?;
    store::get(&state.db, principal.tenant, id)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found("campaign"))
}

#[utoipa::path(
    get,
    path = "/v1/campaigns/{id}",
    tag = "campaigns",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Campaign id")),
    responses(
        (status = 200, description = "The campaign and its progress", body = CampaignView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not run campaigns", body = ErrorBody),
        (status = 404, description = "No such campaign in the tenant", body = ErrorBody),
    )
)]
pub async fn get_campaign(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<CampaignView>, ApiError> {
    let row = campaign_of(&state, &principal, id).await?;
    Ok(Json(view(&state, row).await?))
}

#[utoipa::path(
    get,
    path = "/v1/campaigns/{id}/recipients",
    tag = "campaigns",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Campaign id"), RecipientQuery),
    responses(
        (status = 200, description = "Recipients in order, with their status and failure reason", body = RecipientPage),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not run campaigns", body = ErrorBody),
        (status = 404, description = "No such campaign in the tenant", body = ErrorBody),
        (status = 422, description = "An unknown status filter or a limit out of range", body = ErrorBody),
    )
)]
pub async fn list_recipients(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<RecipientQuery>,
) -> Result<Json<RecipientPage>, ApiError> {
    let row = campaign_of(&state, &principal, id).await?;
    if let Some(status) = &query.status
        && !store::RECIPIENT_STATUSES[..9].contains(&status.as_str())
    {
        return Err(ApiError::invalid_field(
            "status",
            "must be pending, queued, sent, delivered, read, failed, skipped, expired or deferred",
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "must be 1 to 500"));
    }
    let rows = store::recipients(
        &state.db,
        principal.tenant,
        row.id,
        query.status.as_deref(),
        query.after.unwrap_or(-1),
        i64::from(limit),
    )
    .await
    .map_err(ApiError::store)?;
    let next_after = (rows.len() == limit as usize).then(|| rows.last().map(|row| row.position)).flatten();
    let items = rows
        .into_iter()
        .map(|row| RecipientView {
            position: row.position,
            to: row.address,
            vars: row.vars,
            status: row.status,
            reason: row.reason,
            message_id: row.message_id,
            updated_at: rfc3339(row.updated_at),
        })
        .collect();
    Ok(Json(RecipientPage { items, next_after }))
}

/// Applies a control action: the status in PostgreSQL, then the state senders and runners read.
async fn control(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    from: &[&str],
    to: &str,
    verb: &str,
) -> Result<Json<CampaignView>, ApiError> {
    let row = campaign_of(state, principal, id).await?;
    let (row, changed) = store::transition(&state.db, principal.tenant, row.id, from, to)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found("campaign"))?;
    // Not changed because another control moved it meanwhile (its status is one this action
    // applies to, or its result) is fine; a finished or cancelled campaign is a conflict.
    if !changed && row.status != to && !from.contains(&row.status.as_str()) {
        return Err(ApiError::Conflict { message: format!("a {} campaign cannot be {verb}", row.status) });
    }
    // Also when nothing changed: a retry after a failed state write writes it now.
    set_state(state, &row).await?;
    tracing::info!(campaign = %row.id, status = %row.status, "campaign {verb}");
    Ok(Json(view(state, row).await?))
}

#[utoipa::path(
    post,
    path = "/v1/campaigns/{id}/pause",
    tag = "campaigns",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Campaign id")),
    responses(
        (status = 200, description = "Paused: nothing more is sent within a second; pausing a paused campaign is fine", body = CampaignView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not run campaigns", body = ErrorBody),
        (status = 404, description = "No such campaign in the tenant", body = ErrorBody),
        (status = 409, description = "The campaign is finished or cancelled", body = ErrorBody),
    )
)]
pub async fn pause_campaign(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<CampaignView>, ApiError> {
    control(&state, &principal, id, &["scheduled", "running"], "paused", "paused").await
}

#[utoipa::path(
    post,
    path = "/v1/campaigns/{id}/resume",
    tag = "campaigns",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Campaign id")),
    responses(
        (status = 200, description = "Running again from where it stopped", body = CampaignView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not run campaigns", body = ErrorBody),
        (status = 404, description = "No such campaign in the tenant", body = ErrorBody),
        (status = 409, description = "The campaign is finished or cancelled", body = ErrorBody),
    )
)]
pub async fn resume_campaign(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<CampaignView>, ApiError> {
    control(&state, &principal, id, &["paused", "running"], "running", "resumed").await
}

#[utoipa::path(
    post,
    path = "/v1/campaigns/{id}/cancel",
    tag = "campaigns",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Campaign id")),
    responses(
        (status = 200, description = "Cancelled: every recipient not yet sent is skipped", body = CampaignView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not run campaigns", body = ErrorBody),
        (status = 404, description = "No such campaign in the tenant", body = ErrorBody),
        (status = 409, description = "The campaign is already finished", body = ErrorBody),
    )
)]
pub async fn cancel_campaign(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<CampaignView>, ApiError> {
    control(&state, &principal, id, &["scheduled", "running", "paused", "cancelled"], "cancelled", "cancelled").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_keep_their_lines_and_quotes() {
        let rows = parse_csv("to,name\r\n+1 650 555 1234,\"Ana, \"\"A\"\"\"\n\n\"+44\n7\",Bo\n").unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1], (2, vec!["+1 650 555 1234".to_owned(), "Ana, \"A\"".to_owned()]));
        assert_eq!(rows[2].0, 4, "a blank line is skipped but counted");
        let error = parse_csv("to\n\"open").unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
        let error = parse_csv("to,name\n1,a\"b\n").unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
    }

    #[test]
    fn a_row_with_the_wrong_field_count_is_named_by_its_line() {
        let error = csv_recipients("to,name\n+16505551234,Ana\n+16505551235\n").unwrap_err();
        assert!(error.to_string().contains("CSV line 3"), "{error}");
    }
}
