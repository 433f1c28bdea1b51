//! An inbox's auto-reply settings, as stored in `inboxes.auto_reply` and exchanged over
//! `GET/PUT /v1/inboxes/{id}/autoreply`. One type for both, validated in one place, so what the
//! API accepts is exactly what the `autoreply` role can run.
//!
//! The model's API key is write-only: it is stored, used by the bot, and never serialised back
//! ([`AutoReplyView`] replaces it with `api_key_set`).

use serde::{Deserialize, Serialize};

/// Default quiet period: customer messages arriving closer together than this are answered once.
pub const DEFAULT_DEBOUNCE_MS: u64 = 2_000;
/// Default longest wait after the first unanswered message, however busy the customer types.
pub const DEFAULT_MAX_WAIT_MS: u64 = 30_000;
/// Default bot replies per conversation before it hands off.
pub const DEFAULT_MAX_REPLIES: u32 = 10;
/// Default model timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 15_000;
/// Default number of earlier messages sent to the model.
pub const DEFAULT_MAX_CONTEXT: u32 = 20;

const MAX_TEXT: usize = 4_096;
const MAX_PROMPT: usize = 32_768;
const MAX_KEYWORDS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Off,
    Llm,
    Flow,
}

/// What the bot does when the model fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Hand the conversation to humans (reason `error` or `timeout`).
    #[default]
    Handoff,
    /// Send `fallback_text` and stay on.
    Fallback,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmSettings {
    /// An OpenAI-compatible API root, e.g. `https://api.openai.com/v1`; `/chat/completions` is
    /// appended. Its host must be a public address (or one the deployment allows).
    #[schema(max_length = 2048, pattern = "^[\\s\\u0085]*[hH][tT][tT][pP][sS]?://")]
    pub base_url: String,
    /// Write-only: `None` on a `PUT` keeps the stored key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1024, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub api_key: Option<String>,
    #[schema(min_length = 1, max_length = 200, pattern = "[^\\s\\u0085]")]
    pub model: String,
    #[serde(default)]
    #[schema(max_length = 32768)]
    pub system_prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f32>,
    #[serde(default = "default_max_context")]
    #[schema(minimum = 1, maximum = 200)]
    pub max_context_messages: u32,
    #[serde(default = "default_timeout")]
    #[schema(minimum = 100, maximum = 120000)]
    pub timeout_ms: i64,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 4096)]
    pub fallback_text: Option<String>,
}

/// When the bot answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoursRule {
    /// Only outside business hours (humans answer inside them).
    Outside,
    /// Only inside business hours.
    Inside,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BusinessHours {
    pub when: HoursRule,
    /// The business's offset from UTC, in minutes (`-300` for UTC−5).
    #[serde(default)]
    #[schema(minimum = -840, maximum = 840)]
    pub utc_offset_minutes: i32,
    /// ISO weekdays the hours apply to: 1 = Monday … 7 = Sunday.
    #[schema(min_items = 1, max_items = 7)]
    pub days: Vec<u8>,
    /// `HH:MM`, local time; `to` after `from`.
    #[schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub from: String,
    #[schema(pattern = "^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")]
    pub to: String,
}

impl BusinessHours {
    /// Whether `unix_ms` falls inside business hours.
    pub fn inside(&self, unix_ms: i64) -> bool {
        let local_minutes = unix_ms.div_euclid(60_000) + i64::from(self.utc_offset_minutes);
        let day_number = local_minutes.div_euclid(1_440);
        let minute_of_day = local_minutes.rem_euclid(1_440) as u32;
        // 1970-01-01 was a Thursday (ISO 4).
        let weekday = ((day_number + 3).rem_euclid(7) + 1) as u8;
        let (Some(from), Some(to)) = (clock(&self.from), clock(&self.to)) else { return false };
        self.days.contains(&weekday) && minute_of_day >= from && minute_of_day < to
    }

    /// Whether the bot may answer at `unix_ms`.
    pub fn bot_answers(&self, unix_ms: i64) -> bool {
        match self.when {
            HoursRule::Outside => !self.inside(unix_ms),
            HoursRule::Inside => self.inside(unix_ms),
        }
    }
}

/// `scheme://host:port` of a URL, lower-cased: what a key is bound to.
fn origin(url: &str) -> String {
    let url = url.trim().to_ascii_lowercase();
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url.as_str()));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    format!("{scheme}://{authority}")
}

fn clock(text: &str) -> Option<u32> {
    let (hours, minutes) = text.split_once(':')?;
    let digits = |part: &str| part.len() == 2 && part.bytes().all(|byte| byte.is_ascii_digit());
    if !digits(hours) || !digits(minutes) {
        return None;
    }
    let (hours, minutes): (u32, u32) = (hours.parse().ok()?, minutes.parse().ok()?);
    (hours < 24 && minutes < 60).then_some(hours * 60 + minutes).or((hours == 24 && minutes == 0).then_some(1_440))
}

/// An inbox's auto-reply settings. `llm` is required with `mode: llm` (and checked whenever it
/// is given), `flow` with `mode: flow`; `max_wait_ms` is at least `debounce_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoReply {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmSettings>,
    /// The dialog flow's name (`mode: flow`), one the deployment loads (`order` ships).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    #[serde(default = "default_debounce")]
    #[schema(minimum = 0, maximum = 60000)]
    pub debounce_ms: i64,
    #[serde(default = "default_max_wait")]
    #[schema(minimum = 0, maximum = 600000)]
    pub max_wait_ms: i64,
    #[serde(default = "default_max_replies")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_replies: u32,
    #[serde(default = "default_keywords")]
    #[schema(max_items = 20, value_type = Vec<String>)]
    pub handoff_keywords: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours: Option<BusinessHours>,
    /// Resolving a conversation ends its bot session: the bot answers again when the customer
    /// writes next (a new session), even after a handoff.
    #[serde(default = "default_true")]
    pub reenable_on_resolve: bool,
    /// Told to the customer when the bot hands them over (not when an agent took over by
    /// replying or being assigned: the human is already there); `None`: nothing is said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 4096, pattern = "[^\\s\\u0085]")]
    pub handoff_text: Option<String>,
}

fn default_debounce() -> i64 {
    DEFAULT_DEBOUNCE_MS as i64
}
fn default_max_wait() -> i64 {
    DEFAULT_MAX_WAIT_MS as i64
}
fn default_max_replies() -> u32 {
    DEFAULT_MAX_REPLIES
}
fn default_max_context() -> u32 {
    DEFAULT_MAX_CONTEXT
}
fn default_timeout() -> i64 {
    DEFAULT_TIMEOUT_MS as i64
}
fn default_true() -> bool {
    true
}
fn default_keywords() -> Vec<String> {
    ["human", "agent", "operator"].map(str::to_owned).to_vec()
}

impl Default for AutoReply {
    fn default() -> Self {
        Self {
            mode: Mode::Off,
            llm: None,
            flow: None,
            debounce_ms: default_debounce(),
            max_wait_ms: default_max_wait(),
            max_replies: DEFAULT_MAX_REPLIES,
            handoff_keywords: default_keywords(),
            hours: None,
            reenable_on_resolve: true,
            handoff_text: None,
        }
    }
}

/// A setting that cannot be used: the dotted field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> Invalid {
    Invalid { field: field.to_owned(), reason: reason.into() }
}

fn bounded_text(field: &str, text: &str, max: usize) -> Result<(), Invalid> {
    if text.contains('\0') {
        return Err(invalid(field, "must not contain U+0000"));
    }
    if text.chars().count() > max {
        return Err(invalid(field, format!("must be at most {max} characters")));
    }
    Ok(())
}

impl AutoReply {
    /// Reads a stored value; anything unreadable (an older or hand-edited row) means off.
    pub fn from_stored(value: &serde_json::Value) -> Self {
        if value.as_object().is_some_and(|object| object.is_empty()) {
            return Self::default();
        }
        serde_json::from_value(value.clone()).unwrap_or_default()
    }

    /// Checks everything that can be checked without I/O. `flow_exists` says whether a flow of
    /// that name is loaded. The base URL's address is checked by the caller against the outbound
    /// policy.
    pub fn validate(&self, flow_exists: impl Fn(&str) -> bool) -> Result<(), Invalid> {
        if !(0..=60_000).contains(&self.debounce_ms) {
            return Err(invalid("debounce_ms", "must be 0 to 60000"));
        }
        if !(0..=600_000).contains(&self.max_wait_ms) || self.max_wait_ms < self.debounce_ms {
            return Err(invalid("max_wait_ms", "must be debounce_ms to 600000"));
        }
        if self.max_replies == 0 || self.max_replies > 1_000 {
            return Err(invalid("max_replies", "must be 1 to 1000"));
        }
        if self.handoff_keywords.len() > MAX_KEYWORDS {
            return Err(invalid("handoff_keywords", format!("at most {MAX_KEYWORDS} keywords")));
        }
        for keyword in &self.handoff_keywords {
            if keyword.trim().is_empty() {
                return Err(invalid("handoff_keywords", "a keyword must not be blank"));
            }
            bounded_text("handoff_keywords", keyword, 64)?;
        }
        if let Some(text) = &self.handoff_text {
            if crate::spaces::is_blank(text) {
                return Err(invalid("handoff_text", "must not be blank (leave it out to say nothing)"));
            }
            bounded_text("handoff_text", text, MAX_TEXT)?;
        }
        if let Some(hours) = &self.hours {
            if hours.days.is_empty() || hours.days.iter().any(|day| !(1..=7).contains(day)) {
                return Err(invalid("hours.days", "must list weekdays 1 (Monday) to 7 (Sunday)"));
            }
            if !(-14 * 60..=14 * 60).contains(&hours.utc_offset_minutes) {
                return Err(invalid("hours.utc_offset_minutes", "must be -840 to 840"));
            }
            let from = clock(&hours.from).ok_or_else(|| invalid("hours.from", "must be HH:MM"))?;
            let to = clock(&hours.to).ok_or_else(|| invalid("hours.to", "must be HH:MM"))?;
            if to <= from {
                return Err(invalid("hours.to", "must be after hours.from"));
            }
        }
        match self.mode {
            Mode::Off => {}
            Mode::Llm => {
                let llm = self.llm.as_ref().ok_or_else(|| invalid("llm", "is required when mode is llm"))?;
                llm.validate()?;
            }
            Mode::Flow => {
                let name = self.flow.as_deref().ok_or_else(|| invalid("flow", "is required when mode is flow"))?;
                if !flow_exists(name) {
                    return Err(invalid("flow", format!("no flow named {name:?} is loaded")));
                }
            }
        }
        if self.mode != Mode::Llm
            && let Some(llm) = &self.llm
        {
            // Kept for switching back, so it must still be valid.
            llm.validate()?;
        }
        Ok(())
    }

    /// A `PUT` that leaves `llm.api_key` out keeps the stored one, but only for the same
    /// endpoint (scheme, host and port): otherwise whoever may change the settings could send
    /// the key, unseen, to a server of their own.
    pub fn keep_key_from(&mut self, stored: &AutoReply) {
        if let (Some(llm), Some(stored_llm)) = (self.llm.as_mut(), stored.llm.as_ref())
            && llm.api_key.is_none()
            && origin(&llm.base_url) == origin(&stored_llm.base_url)
        {
            llm.api_key = stored_llm.api_key.clone();
        }
    }

    pub fn is_on(&self) -> bool {
        self.mode != Mode::Off
    }

    /// Whether `text` asks for a human: a keyword as a whole word, case-insensitively.
    pub fn asks_for_human(&self, text: &str) -> bool {
        let lowered = text.to_lowercase();
        let words: Vec<&str> = lowered.split(|c: char| !c.is_alphanumeric()).filter(|word| !word.is_empty()).collect();
        self.handoff_keywords.iter().any(|keyword| {
            let keyword = keyword.trim().to_lowercase();
            let parts: Vec<&str> = keyword.split_whitespace().collect();
            !parts.is_empty() && words.windows(parts.len()).any(|window| window == parts.as_slice())
        })
    }

    /// What the API shows: the settings without the key.
    pub fn view(&self) -> AutoReplyView {
        let mut shown = self.clone();
        let api_key_set = shown.llm.as_mut().and_then(|llm| llm.api_key.take()).is_some_and(|key| !key.is_empty());
        AutoReplyView { settings: shown, api_key_set }
    }
}

impl LlmSettings {
    fn validate(&self) -> Result<(), Invalid> {
        let base = crate::spaces::trim(&self.base_url);
        let scheme = base.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("http" | "https")) {
            return Err(invalid("llm.base_url", "must be an http:// or https:// URL"));
        }
        bounded_text("llm.base_url", base, 2_048)?;
        if crate::spaces::is_blank(&self.model) {
            return Err(invalid("llm.model", "must not be blank"));
        }
        bounded_text("llm.model", &self.model, 200)?;
        bounded_text("llm.system_prompt", &self.system_prompt, MAX_PROMPT)?;
        if let Some(key) = &self.api_key {
            bounded_text("llm.api_key", key, 1_024)?;
            if key.chars().any(|c| c.is_control()) {
                return Err(invalid("llm.api_key", "must not contain control characters"));
            }
        }
        if let Some(temperature) = self.temperature
            && !(0.0..=2.0).contains(&temperature)
        {
            return Err(invalid("llm.temperature", "must be 0 to 2"));
        }
        if self.max_context_messages == 0 || self.max_context_messages > 200 {
            return Err(invalid("llm.max_context_messages", "must be 1 to 200"));
        }
        if !(100..=120_000).contains(&self.timeout_ms) {
            return Err(invalid("llm.timeout_ms", "must be 100 to 120000"));
        }
        match (&self.on_error, &self.fallback_text) {
            (OnError::Fallback, None) => {
                return Err(invalid("llm.fallback_text", "is required when on_error is fallback"));
            }
            (_, Some(text)) => {
                if crate::spaces::is_blank(text) {
                    return Err(invalid("llm.fallback_text", "must not be blank"));
                }
                bounded_text("llm.fallback_text", text, MAX_TEXT)?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The settings as the API shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoReplyView {
    #[serde(flatten)]
    pub settings: AutoReply,
    /// Whether a model API key is stored (the key itself is never shown).
    pub api_key_set: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llm(extra: serde_json::Value) -> AutoReply {
        let mut body = json!({"mode": "llm", "llm": {"base_url": "https://api.example.com/v1", "model": "m"}});
        for (key, value) in extra.as_object().unwrap() {
            body["llm"][key] = value.clone();
        }
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let settings: AutoReply = serde_json::from_value(json!({"mode": "flow", "flow": "order"})).unwrap();
        assert_eq!(settings.debounce_ms, 2_000);
        assert_eq!(settings.max_wait_ms, 30_000);
        assert_eq!(settings.max_replies, 10);
        assert_eq!(settings.handoff_keywords, ["human", "agent", "operator"]);
        assert!(settings.validate(|name| name == "order").is_ok());
        assert_eq!(settings.validate(|_| false).unwrap_err().field, "flow");
        assert_eq!(AutoReply::from_stored(&json!({})), AutoReply::default());
    }

    #[test]
    fn bad_settings_name_their_field() {
        for (settings, field) in [
            (llm(json!({"timeout_ms": -5})), "llm.timeout_ms"),
            (llm(json!({"base_url": "ftp://example.com"})), "llm.base_url"),
            (llm(json!({"base_url": "redis://127.0.0.1:6379"})), "llm.base_url"),
            (llm(json!({"model": " "})), "llm.model"),
            (llm(json!({"temperature": 3.0})), "llm.temperature"),
            (llm(json!({"on_error": "fallback"})), "llm.fallback_text"),
            (llm(json!({"system_prompt": "a\u{0}b"})), "llm.system_prompt"),
        ] {
            assert_eq!(settings.validate(|_| true).unwrap_err().field, field);
        }
        let hours = json!({"when": "outside", "days": [1], "from": "+9:00", "to": "17:00"});
        let signed_clock: AutoReply = serde_json::from_value(json!({"mode": "off", "hours": hours})).unwrap();
        assert_eq!(signed_clock.validate(|_| true).unwrap_err().field, "hours.from");
        let no_llm: AutoReply = serde_json::from_value(json!({"mode": "llm"})).unwrap();
        assert_eq!(no_llm.validate(|_| true).unwrap_err().field, "llm");
        assert!(serde_json::from_value::<AutoReply>(json!({"mode": "llm", "surprise": 1})).is_err());
    }

    #[test]
    fn the_key_is_never_shown() {
        let settings = llm(json!({"api_key": "sk-secret"}));
        let shown = serde_json::to_value(settings.view()).unwrap();
        assert_eq!(shown["api_key_set"], true);
        assert!(!shown.to_string().contains("sk-secret"));
        let mut update = llm(json!({"model": "other"}));
        update.keep_key_from(&settings);
        assert_eq!(update.llm.unwrap().api_key.as_deref(), Some("sk-secret"));
        // A new endpoint never inherits the key.
        let mut moved = llm(json!({"base_url": "https://collector.example.net/v1"}));
        moved.keep_key_from(&settings);
        assert_eq!(moved.llm.unwrap().api_key, None);
    }

    #[test]
    fn keywords_match_whole_words() {
        let settings = AutoReply::default();
        assert!(settings.asks_for_human("I want a HUMAN please"));
        assert!(settings.asks_for_human("agent!"));
        assert!(!settings.asks_for_human("humanity is great"));
        assert!(!settings.asks_for_human("my travel agents"));
    }

    #[test]
    fn business_hours_follow_the_local_clock() {
        let hours = BusinessHours {
            when: HoursRule::Outside,
            utc_offset_minutes: 60,
            days: vec![1, 2, 3, 4, 5],
            from: "09:00".into(),
            to: "17:00".into(),
        };
        // 2026-12-02 is a Wednesday; 08:30 UTC is 09:30 at UTC+1.
        let wednesday_0830_utc = 1_796_200_200_000;
        assert!(hours.inside(wednesday_0830_utc));
        assert!(!hours.bot_answers(wednesday_0830_utc));
        // 16:30 UTC is 17:30 local: closed.
        assert!(!hours.inside(wednesday_0830_utc + 8 * 3_600_000));
        // Saturday.
        assert!(!hours.inside(wednesday_0830_utc + 3 * 86_400_000));
    }
}
