//! Typed `streams.toml`. Parsing happens in two steps: serde reads the file into raw structs
//! (unknown keys refused), then [`validate`](StreamsConfig::from_toml_str) checks every rule and
//! reports *all* problems at once, each naming the file, the dotted key and the reason, so an
//! operator fixes a bad file in one pass. `chatdesk streams check` runs exactly this code.
//!
//! Shape of the file (the shipped `streams.toml` documents each knob):
//!
//! ```toml
//! [defaults]                      # applied to every group that does not set a knob
//! batch_size = 100
//! block = "2s"
//!
//! [streams.events]
//! partitions = 8
//! retention = { max_age = "7d", max_len = 5000000, durable_groups = ["writer"] }
//!
//! [streams.events.groups.writer]
//! batch_size = 500
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::duration::parse_duration;
use crate::names::{GroupName, StreamName};

/// Built-in values for knobs neither a group nor `[defaults]` sets.
pub mod builtin {
    use std::time::Duration;

    pub const BATCH_SIZE: u32 = 100;
    pub const BLOCK: Duration = Duration::from_secs(2);
    pub const CLAIM_IDLE: Duration = Duration::from_secs(30);
    pub const MAX_DELIVERIES: u32 = 5;
}

const MAX_PARTITIONS: i64 = 1024;
const MAX_BATCH_SIZE: i64 = 10_000;
const MAX_BLOCK: Duration = Duration::from_secs(60);
/// A batch never waits longer than this to fill: it is a latency knob, not a schedule.
const MAX_BATCH_WAIT: Duration = Duration::from_secs(1);
const MAX_DELIVERIES_LIMIT: i64 = 1_000;
const MAX_CONCURRENCY: i64 = 1024;

/// The family every conversation event goes to (its name in `streams.toml`).
pub const EVENTS_STREAM: &str = "events";
/// The family of outbound messages waiting for delivery.
pub const SEND_STREAM: &str = "send";
/// Campaign recipients handed over for sending.
pub const BROADCAST_STREAM: &str = "broadcast";

/// The validated content of a `streams.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamsConfig {
    pub streams: BTreeMap<StreamName, StreamSettings>,
}

/// One stream family.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    pub name: StreamName,
    /// Number of physical streams; a tenant's events all go to `hash(tenant) % partitions`.
    pub partitions: u16,
    pub retention: Retention,
    pub groups: BTreeMap<GroupName, GroupSettings>,
}

/// How long entries are kept. A trim never passes an entry that one of `durable_groups` has not
/// acknowledged, whatever `max_age` / `max_len` say.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_len: Option<u64>,
    pub durable_groups: Vec<GroupName>,
}

/// Where a newly created group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// From the first entry still in the stream (durable consumers: nothing is skipped).
    Earliest,
    /// From entries appended after the group is created (live-only readers).
    Latest,
}

/// The knobs of one consumer group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSettings {
    /// Entries per XREADGROUP call and per handler call.
    pub batch_size: u32,
    /// How long one XREADGROUP waits for new entries before the loop looks around (claims,
    /// shutdown, retries). Short blocks react faster; long blocks cost fewer round trips.
    pub block: Duration,
    /// How long an entry may sit unacknowledged before another consumer claims it. Must exceed
    /// the slowest batch, or a live but slow consumer's work is handled twice.
    pub claim_idle: Duration,
    /// Deliveries after which an entry is dead-lettered instead of retried.
    pub max_deliveries: u32,
    /// How long a read that found fewer than `batch_size` new entries waits for more before
    /// the batch is handled (Kafka's `fetch.max.wait.ms`). Zero: handle what came at once. A
    /// handler with a high cost per call (one PostgreSQL transaction per batch) trades a few
    /// milliseconds of latency for far fewer calls under a steady trickle.
    pub batch_wait: Duration,
    /// How many partitions of this group one process handles at the same time.
    pub concurrency: u32,
    pub start: StartFrom,
    /// One process of the group reads a partition at a time (a lease per partition, taken over
    /// with the previous holder's pending entries when it lapses), so a handler that needs the
    /// partition's order keeps it with several processes. Without it, processes of one group
    /// read a partition side by side and only each one keeps its own batches in order.
    pub exclusive: bool,
    /// Live fan-out whose readers resume from their own cursors (every gateway's group): read
    /// with `NOACK`, so Redis keeps no pending list, nothing is acknowledged, claimed or
    /// dead-lettered, and no `XCLAIM` per entry goes into the append-only file. The worker sets
    /// the group back to the last entry it handled after a Redis error instead. One consumer per
    /// group; never `exclusive`.
    pub live: bool,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the offending key, e.g. `streams.events.partitions`.
    pub key: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not valid TOML: {message}")]
    Syntax { file: String, message: String },
    #[error("{}", render_problems(file, problems))]
    Invalid { file: String, problems: Vec<Problem> },
}

impl ConfigError {
    /// The problems found, empty for read and syntax errors.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn render_problems(file: &str, problems: &[Problem]) -> String {
    problems.iter().map(|problem| format!("{file}: {}: {}", problem.key, problem.reason)).collect::<Vec<_>>().join("\n")
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawGroup,
    #[serde(default)]
    streams: BTreeMap<String, RawStream>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    partitions: Option<i64>,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    groups: BTreeMap<String, RawGroup>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    max_age: Option<String>,
    max_len: Option<i64>,
    #[serde(default)]
    durable_groups: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    batch_size: Option<i64>,
    block: Option<String>,
    claim_idle: Option<String>,
    max_deliveries: Option<i64>,
    batch_wait: Option<String>,
    concurrency: Option<i64>,
    start: Option<String>,
    exclusive: Option<bool>,
    live: Option<bool>,
}

/// Collects problems while checking; each check returns `None` on failure so validation goes on.
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn report(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem { key: key.into(), reason: reason.into() });
    }

    fn int_in(&mut self, key: &str, value: i64, min: i64, max: i64) -> Option<i64> {
        if value < min || value > max {
            self.report(key, format!("must be between {min} and {max}, got {value}"));
            return None;
        }
        Some(value)
    }

    fn duration(&mut self, key: &str, raw: &str) -> Option<Duration> {
        match parse_duration(raw) {
            Ok(duration) => Some(duration),
            Err(error) => {
                self.report(key, error.to_string());
                None
            }
        }
    }
}

/// A group's knobs after merging with `[defaults]`; `None` where the value given was invalid
/// (already reported).
struct ResolvedGroup {
    batch_size: Option<u32>,
    block: Option<Duration>,
    claim_idle: Option<Duration>,
    max_deliveries: Option<u32>,
    batch_wait: Option<Duration>,
    concurrency: Option<u32>,
    start: Option<StartFrom>,
}

fn resolve_group(checker: &mut Checker, path: &str, raw: &RawGroup, partitions: u16) -> ResolvedGroup {
    let key = |name: &str| format!("{path}.{name}");
    let batch_size = match raw.batch_size {
        Some(value) => checker.int_in(&key("batch_size"), value, 1, MAX_BATCH_SIZE).map(|v| v as u32),
        None => Some(builtin::BATCH_SIZE),
    };
    let block = match &raw.block {
        Some(text) => checker.duration(&key("block"), text).and_then(|block| {
            if block.is_zero() || block > MAX_BLOCK {
                checker.report(key("block"), format!("must be between 1ms and {}s", MAX_BLOCK.as_secs()));
                return None;
            }
            Some(block)
        }),
        None => Some(builtin::BLOCK),
    };
    let claim_idle = match &raw.claim_idle {
        Some(text) => checker.duration(&key("claim_idle"), text),
        None => Some(builtin::CLAIM_IDLE),
    };
    let max_deliveries = match raw.max_deliveries {
        Some(value) => checker.int_in(&key("max_deliveries"), value, 1, MAX_DELIVERIES_LIMIT).map(|v| v as u32),
        None => Some(builtin::MAX_DELIVERIES),
    };
    let batch_wait = match &raw.batch_wait {
        Some(text) => checker.duration(&key("batch_wait"), text).and_then(|wait| {
            if wait > MAX_BATCH_WAIT {
                checker.report(key("batch_wait"), format!("must be at most {}ms", MAX_BATCH_WAIT.as_millis()));
                return None;
            }
            Some(wait)
        }),
        None => Some(Duration::ZERO),
    };
    let concurrency = match raw.concurrency {
        Some(value) => checker.int_in(&key("concurrency"), value, 1, MAX_CONCURRENCY).map(|v| v as u32),
        None => Some(u32::from(partitions)),
    };
    let start = match raw.start.as_deref() {
        None | Some("earliest") => Some(StartFrom::Earliest),
        Some("latest") => Some(StartFrom::Latest),
        Some(other) => {
            checker.report(key("start"), format!("must be \"earliest\" or \"latest\", got {other:?}"));
            None
        }
    };
    ResolvedGroup { batch_size, block, claim_idle, max_deliveries, batch_wait, concurrency, start }
}

fn merge(group: &RawGroup, defaults: &RawGroup) -> RawGroup {
    RawGroup {
        batch_size: group.batch_size.or(defaults.batch_size),
        block: group.block.clone().or_else(|| defaults.block.clone()),
        claim_idle: group.claim_idle.clone().or_else(|| defaults.claim_idle.clone()),
        max_deliveries: group.max_deliveries.or(defaults.max_deliveries),
        batch_wait: group.batch_wait.clone().or_else(|| defaults.batch_wait.clone()),
        concurrency: group.concurrency.or(defaults.concurrency),
        start: group.start.clone().or_else(|| defaults.start.clone()),
        exclusive: group.exclusive.or(defaults.exclusive),
        live: group.live.or(defaults.live),
    }
}

/// The dotted key a merged knob came from: the group's own key when it set the knob, else the
/// `[defaults]` one, so an error points at the line to edit.
fn origin(path: &str, name: &str, group_sets_it: bool) -> String {
    if group_sets_it { format!("{path}.{name}") } else { format!("defaults.{name}") }
}

impl StreamsConfig {
    /// Reads and validates a file; `file` is also the name used in error messages.
    pub fn from_file(file: &str) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(file).map_err(|source| ConfigError::Read { file: file.to_owned(), source })?;
        Self::from_toml_str(file, &text)
    }

    /// Parses and validates `text`; `file` names the source in error messages.
    pub fn from_toml_str(file: &str, text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text.parse().map_err(|error: toml::de::Error| ConfigError::Syntax {
            file: file.to_owned(),
            message: error.to_string(),
        })?;
        let raw: RawFile = serde_path_to_error::deserialize(table).map_err(|error| {
            let path = error.path().to_string();
            ConfigError::Invalid {
                file: file.to_owned(),
                problems: vec![Problem {
                    key: if path == "." { "(top level)".to_owned() } else { path },
                    reason: error.into_inner().message().trim().to_owned(),
                }],
            }
        })?;
        validate(raw).map_err(|problems| ConfigError::Invalid { file: file.to_owned(), problems })
    }

    pub fn stream(&self, name: &str) -> Option<&StreamSettings> {
        self.streams.iter().find(|(key, _)| key.as_str() == name).map(|(_, settings)| settings)
    }
}

impl StreamSettings {
    pub fn group(&self, name: &str) -> Option<&GroupSettings> {
        self.groups.iter().find(|(key, _)| key.as_str() == name).map(|(_, settings)| settings)
    }
}

fn validate(raw: RawFile) -> Result<StreamsConfig, Vec<Problem>> {
    let mut checker = Checker { problems: Vec::new() };
    // Check the defaults on their own so a bad default is reported once, at its own key.
    resolve_group(&mut checker, "defaults", &raw.defaults, 1);
    let defaults_ok = checker.problems.is_empty();
    if raw.defaults.live.is_some() {
        // Made a default, it would take every durable group's pending list away.
        checker.report("defaults.live", "is a setting of a group of its own, not a default");
    }

    if raw.streams.is_empty() {
        checker.report("streams", "no stream family declared; declare at least one [streams.<name>] table");
    }

    let mut streams = BTreeMap::new();
    for (raw_name, raw_stream) in &raw.streams {
        let path = format!("streams.{raw_name}");
        let name = match StreamName::parse(raw_name) {
            Ok(name) => Some(name),
            Err(error) => {
                checker.report(&path, format!("invalid stream name: {error}"));
                None
            }
        };
        let partitions = match raw_stream.partitions {
            Some(value) => checker.int_in(&format!("{path}.partitions"), value, 1, MAX_PARTITIONS).map(|v| v as u16),
            None => {
                checker.report(format!("{path}.partitions"), "is required (number of partitions, 1 to 1024)");
                None
            }
        };

        let mut groups = BTreeMap::new();
        for (raw_group_name, raw_group) in &raw_stream.groups {
            let group_path = format!("{path}.groups.{raw_group_name}");
            let group_name = match GroupName::parse(raw_group_name) {
                Ok(group_name) => Some(group_name),
                Err(error) => {
                    checker.report(&group_path, format!("invalid group name: {error}"));
                    None
                }
            };
            let merged = merge(raw_group, &raw.defaults);
            let before = checker.problems.len();
            // Knobs that come from [defaults] were checked already; re-checking would report
            // the same default once per group.
            let mut scratch = Checker { problems: Vec::new() };
            let resolved = resolve_group(&mut scratch, &group_path, &merged, partitions.unwrap_or(1));
            for problem in scratch.problems {
                let knob = problem.key.rsplit('.').next().unwrap_or_default().to_owned();
                let from_group = match knob.as_str() {
                    "batch_size" => raw_group.batch_size.is_some(),
                    "block" => raw_group.block.is_some(),
                    "claim_idle" => raw_group.claim_idle.is_some(),
                    "max_deliveries" => raw_group.max_deliveries.is_some(),
                    "batch_wait" => raw_group.batch_wait.is_some(),
                    "concurrency" => raw_group.concurrency.is_some(),
                    "start" => raw_group.start.is_some(),
                    _ => true,
                };
                if from_group || defaults_ok {
                    checker.problems.push(problem);
                }
            }
            if let (Some(block), Some(claim_idle)) = (resolved.block, resolved.claim_idle)
                && claim_idle <= block
            {
                checker.report(
                    origin(&group_path, "claim_idle", raw_group.claim_idle.is_some()),
                    format!(
                        "claim_idle ({}ms) must be longer than block ({}ms) for group {raw_group_name}: \
                         otherwise entries are claimed from consumers that are merely waiting",
                        claim_idle.as_millis(),
                        block.as_millis()
                    ),
                );
            }
            if merged.live == Some(true) && merged.start.as_deref() != Some("latest") {
                checker.report(
                    origin(&group_path, "live", raw_group.live.is_some()),
                    format!(
                        "group {raw_group_name} is live and must start at \"latest\": a live group's readers fill \
                         their own gaps, and it keeps no pending list to replay from"
                    ),
                );
            }
            if merged.live == Some(true) && raw_stream.retention.durable_groups.iter().any(|g| g == raw_group_name) {
                checker.report(
                    origin(&group_path, "live", raw_group.live.is_some()),
                    format!("group {raw_group_name} is durable and cannot be live: a live group keeps no pending list"),
                );
            }
            if merged.exclusive == Some(true) && merged.live == Some(true) {
                checker.report(
                    origin(&group_path, "live", raw_group.live.is_some()),
                    format!(
                        "group {raw_group_name} cannot be both live and exclusive: a live group keeps no pending \
                         list for another process to take over"
                    ),
                );
            }
            if checker.problems.len() != before {
                continue;
            }
            if let (
                Some(group_name),
                Some(batch_size),
                Some(block),
                Some(claim_idle),
                Some(max_deliveries),
                Some(batch_wait),
                Some(concurrency),
                Some(start),
            ) = (
                group_name,
                resolved.batch_size,
                resolved.block,
                resolved.claim_idle,
                resolved.max_deliveries,
                resolved.batch_wait,
                resolved.concurrency,
                resolved.start,
            ) {
                let exclusive = merged.exclusive.unwrap_or(false);
                let live = merged.live.unwrap_or(false);
                groups.insert(
                    group_name,
                    GroupSettings {
                        batch_size,
                        block,
                        claim_idle,
                        max_deliveries,
                        batch_wait,
                        concurrency,
                        start,
                        exclusive,
                        live,
                    },
                );
            }
        }

        let retention_path = format!("{path}.retention");
        let max_age = raw_stream.retention.max_age.as_deref().and_then(|text| {
            let key = format!("{retention_path}.max_age");
            let age = checker.duration(&key, text)?;
            if age < Duration::from_secs(60) {
                checker.report(key, "must be at least 1m: shorter retention breaks resume after brief disconnects");
                return None;
            }
            Some(age)
        });
        let max_len = raw_stream
            .retention
            .max_len
            .and_then(|value| checker.int_in(&format!("{retention_path}.max_len"), value, 1, i64::MAX))
            .map(|value| value as u64);
        let mut durable_groups = Vec::new();
        for (index, reference) in raw_stream.retention.durable_groups.iter().enumerate() {
            let declared = raw_stream.groups.contains_key(reference);
            if !declared {
                let known: Vec<&str> = raw_stream.groups.keys().map(String::as_str).collect();
                checker.report(
                    format!("{retention_path}.durable_groups[{index}]"),
                    format!(
                        "unknown group reference {reference:?}: stream {raw_name} declares {}",
                        if known.is_empty() { "no groups".to_owned() } else { known.join(", ") }
                    ),
                );
                continue;
            }
            if let Ok(group_name) = GroupName::parse(reference) {
                durable_groups.push(group_name);
            }
        }

        if let (Some(name), Some(partitions)) = (name, partitions) {
            streams.insert(
                name.clone(),
                StreamSettings { name, partitions, retention: Retention { max_age, max_len, durable_groups }, groups },
            );
        }
    }

    if checker.problems.is_empty() { Ok(StreamsConfig { streams }) } else { Err(checker.problems) }
}

impl fmt::Display for StartFrom {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
        [defaults]
        block = "1s"
        claim_idle = "20s"

        [streams.events]
        partitions = 8
        retention = { max_age = "7d", max_len = 1000, durable_groups = ["writer"] }

        [streams.events.groups.writer]
        batch_size = 500
        max_deliveries = 3

        [streams.events.groups.gateway]
        start = "latest"
    "#;

    #[test]
    fn a_valid_file_parses_with_defaults_applied() {
        let config = StreamsConfig::from_toml_str("streams.toml", VALID).unwrap();
        let events = config.stream("events").unwrap();
        assert_eq!(events.partitions, 8);
        assert_eq!(events.retention.max_age, Some(Duration::from_secs(7 * 86_400)));
        let writer = events.group("writer").unwrap();
        assert_eq!(writer.batch_size, 500);
        assert_eq!(writer.block, Duration::from_secs(1));
        assert_eq!(writer.claim_idle, Duration::from_secs(20));
        assert_eq!(writer.max_deliveries, 3);
        assert_eq!(writer.concurrency, 8);
        assert_eq!(events.group("gateway").unwrap().start, StartFrom::Latest);
        assert_eq!(events.group("gateway").unwrap().batch_size, builtin::BATCH_SIZE);
    }

    #[test]
    fn the_shipped_file_is_valid() {
        let text = include_str!("../../../streams.toml");
        let config = StreamsConfig::from_toml_str("streams.toml", text).unwrap();
        for family in ["events", "send", "broadcast"] {
            assert!(config.stream(family).is_some(), "{family} missing from the shipped streams.toml");
        }
        let events = config.stream("events").unwrap();
        assert_eq!(events.group("writer").unwrap().batch_wait, Duration::from_millis(100));
        assert!(events.group("writer").unwrap().exclusive, "the writer keeps each partition's order");
        assert!(!events.group("gateway").unwrap().exclusive);
        assert_eq!(events.group("gateway").unwrap().batch_wait, Duration::ZERO, "live fan-out never waits");
        assert!(events.group("gateway").unwrap().live, "gateways resume from their sockets' cursors");
        assert!(!events.group("writer").unwrap().live, "the writer's entries wait in its pending list");
    }

    /// Each case: a file, and the key and a fragment of the reason the error must name.
    #[test]
    fn invalid_files_name_the_key_and_the_reason() {
        let cases: &[(&str, &str, &str)] = &[
            ("[streams.events]\npartitions = 0", "streams.events.partitions", "between 1 and 1024, got 0"),
            ("[streams.events]\npartitions = 5000", "streams.events.partitions", "between 1 and 1024"),
            ("[streams.events]\n", "streams.events.partitions", "is required"),
            (
                "[streams.events]\npartitions = 2\nretention.durable_groups = [\"writr\"]\n[streams.events.groups.writer]\n",
                "streams.events.retention.durable_groups[0]",
                "unknown group reference \"writr\": stream events declares writer",
            ),
            (
                "[streams.events]\npartitions = 2\n[streams.events.groups.writer]\nbatch_wait = \"2s\"",
                "streams.events.groups.writer.batch_wait",
                "must be at most 1000ms",
            ),
            (
                "[streams.events]\npartitions = 2\n[streams.events.groups.writer]\nblock = \"5 parsecs\"",
                "streams.events.groups.writer.block",
                "is not a duration",
            ),
            (
                "[streams.events]\npartitions = 2\n[streams.events.groups.writer]\nblock = \"5s\"\nclaim_idle = \"2s\"",
                "streams.events.groups.writer.claim_idle",
                "must be longer than block",
            ),
            (
                "[defaults]\nclaim_idle = \"1s\"\n[streams.events]\npartitions = 2\n[streams.events.groups.writer]\n",
                "defaults.claim_idle",
                "must be longer than block",
            ),
            (
                "[streams.events]\npartitions = 2\n[streams.events.groups.writer]\nexclusive = true\nlive = true",
                "streams.events.groups.writer.live",
                "cannot be both live and exclusive",
            ),
            (
                "[streams.events]\npartitions = 2\n[streams.events.groups.gateway]\nlive = true",
                "streams.events.groups.gateway.live",
                "must start at \"latest\"",
            ),
            (
                "[streams.events]\npartitions = 2\nretention.durable_groups = [\"writer\"]\n[streams.events.groups.writer]\nstart = \"latest\"\nlive = true",
                "streams.events.groups.writer.live",
                "is durable and cannot be live",
            ),
            ("[defaults]\nlive = true\n[streams.events]\npartitions = 2", "defaults.live", "not a default"),
            (
                "[streams.events]\npartitions = 2\n[streams.events.groups.writer]\nbatch_size = 0",
                "streams.events.groups.writer.batch_size",
                "between 1 and 10000, got 0",
            ),
            (
                "[streams.events]\npartitions = 2\n[streams.events.groups.writer]\nmax_deliveries = -1",
                "streams.events.groups.writer.max_deliveries",
                "between 1 and 1000",
            ),
            (
                "[streams.events]\npartitions = 2\n[streams.events.groups.writer]\nconcurrency = 0",
                "streams.events.groups.writer.concurrency",
                "between 1 and 1024",
            ),
            (
                "[streams.events]\npartitions = 2\n[streams.events.groups.writer]\nstart = \"middle\"",
                "streams.events.groups.writer.start",
                "\"earliest\" or \"latest\"",
            ),
            (
                "[streams.events]\npartitions = 2\n[streams.events.groups.writer]\nblock = 5",
                "streams.events.groups.writer.block",
                "invalid type",
            ),
            ("[streams.events]\npartitons = 2", "streams.events.partitons", "unknown field `partitons`"),
            ("[streams.Events]\npartitions = 2", "streams.Events", "invalid stream name"),
            (
                "[streams.events]\npartitions = 2\n[streams.events.groups.\"a b\"]\n",
                "streams.events.groups.a b",
                "invalid group name",
            ),
            (
                "[streams.events]\npartitions = 2\nretention.max_age = \"10s\"",
                "streams.events.retention.max_age",
                "at least 1m",
            ),
            (
                "[streams.events]\npartitions = 2\nretention.max_len = 0",
                "streams.events.retention.max_len",
                "between 1",
            ),
            ("", "streams", "no stream family declared"),
            ("[defaults]\nbatch_size = 0\n[streams.events]\npartitions = 1", "defaults.batch_size", "between 1"),
        ];
        for (text, key, reason) in cases {
            let error = StreamsConfig::from_toml_str("test.toml", text).expect_err(text);
            let problems = error.problems();
            assert!(
                problems.iter().any(|problem| problem.key == *key && problem.reason.contains(reason)),
                "file {text:?}: expected {key}: …{reason}…, got {problems:?}"
            );
            let rendered = error.to_string();
            assert!(rendered.starts_with("test.toml: "), "{rendered}");
            assert!(rendered.contains(key), "{rendered}");
        }
    }

    #[test]
    fn a_bad_default_is_reported_once() {
        let text =
            "[defaults]\nbatch_size = 0\n[streams.a]\npartitions = 1\n[streams.a.groups.x]\n[streams.a.groups.y]\n";
        let error = StreamsConfig::from_toml_str("f", text).unwrap_err();
        assert_eq!(error.problems().len(), 1, "{error}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "[streams.a]\npartitions = 0\n[streams.b]\npartitions = 2\n[streams.b.groups.g]\nbatch_size = 0\n";
        let error = StreamsConfig::from_toml_str("f", text).unwrap_err();
        assert_eq!(error.problems().len(), 2, "{error}");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let error = StreamsConfig::from_toml_str("bad.toml", "[streams\n").unwrap_err();
        assert!(matches!(error, ConfigError::Syntax { .. }));
        assert!(error.to_string().starts_with("bad.toml: not valid TOML"));
    }
}
