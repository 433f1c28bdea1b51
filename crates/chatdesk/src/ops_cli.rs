//! `chatdesk streams status|replay|dlq|claim|groups|tasks|cancel` and `chatdesk audit`: the
//! operator tools of `chatdesk-ops`, printed for a terminal (or as JSON). Actions are recorded
//! in the audit log as done by `cli`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chatdesk_ops::dlq::DlqFilter;
use chatdesk_ops::replay::{ReplayPlan, ReplayRequest};
use chatdesk_ops::report::PartitionReport;
use chatdesk_ops::task::{Task, TaskState};
use chatdesk_ops::{Actor, Ops, OpsError};
use chatdesk_streams::RedisConnector;
use chatdesk_streams::connection::RedisSettings;

use crate::cli::{AuditCommand, DlqCommand, DlqFilterArgs, GroupsCommand, StreamsCommand};
use crate::settings;

/// Connects to Redis (and PostgreSQL when `with_db`) as `chatdesk up` or the environment say.
async fn connect(streams: Option<&Path>, with_db: bool) -> anyhow::Result<Ops> {
    let data_dir = settings::default_data_dir();
    let (config, _) = settings::load_streams(streams)?;
    let keys = settings::key_scheme()?;
    let (url, from_up) = settings::server_url("REDIS_URL", &data_dir)?;
    let redis = match RedisConnector::new(RedisSettings::new(url.expose()))?.shared().await {
        Ok(client) => client,
        Err(_) if from_up => anyhow::bail!(settings::up_not_running("REDIS_URL", &data_dir)),
        Err(error) => {
            let at = chatdesk_streams::connection::redact(url.expose());
            return Err(anyhow::Error::new(error).context(format!("cannot connect to Redis at {at} (REDIS_URL)")));
        }
    };
    let db = if with_db {
        let (url, from_up) = settings::server_url("DATABASE_URL", &data_dir)?;
        match chatdesk_store::connect(url.expose(), 2).await {
            Ok(pool) => Some(pool),
            Err(_) if from_up => anyhow::bail!(settings::up_not_running("DATABASE_URL", &data_dir)),
            Err(error) => return Err(error.into()),
        }
    } else {
        None
    };
    Ok(Ops { redis, db, keys, streams: Arc::new(config) })
}

/// An operator error as the CLI says it (no "Error:" chain for a refusal: it is the message).
fn refuse(error: OpsError) -> anyhow::Error {
    anyhow::Error::msg(error.to_string())
}

/// Prints lines until the reader goes away (`| head`): then stops quietly.
struct Out(std::io::StdoutLock<'static>);

impl Out {
    fn new() -> Self {
        Out(std::io::stdout().lock())
    }

    fn line(&mut self, line: impl AsRef<str>) -> bool {
        writeln!(self.0, "{}", line.as_ref()).is_ok()
    }
}

/// `count` with the noun in the right number.
fn count_of(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// At most `limit` characters, with an ellipsis when cut.
fn shortened(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(limit - 1).collect();
    cut.push('…');
    cut
}

pub fn human_ms(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0 => format!("{ms}ms"),
        1..=119 => format!("{seconds}s"),
        120..=7199 => format!("{}m", seconds / 60),
        7200..=172_799 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

fn filter_of(args: &DlqFilterArgs) -> DlqFilter {
    DlqFilter {
        family: args.target.family.clone(),
        group: args.group.clone(),
        error: args.error.clone(),
        since: args.since.clone(),
        until: args.until.clone(),
        ids: (!args.ids.is_empty()).then(|| args.ids.clone()),
    }
}

pub async fn streams(command: StreamsCommand) -> anyhow::Result<ExitCode> {
    match command {
        StreamsCommand::Check { .. } => unreachable!("handled without connecting"),
        StreamsCommand::Status { streams, json, family } => {
            let ops = connect(streams.as_deref(), false).await?;
            let reports = ops.report(family.as_deref()).await.map_err(refuse)?;
            print_status(&reports, json);
            Ok(ExitCode::SUCCESS)
        }
        StreamsCommand::Replay { target, group, from, to, partition, execute } => {
            let ops = connect(target.streams.as_deref(), execute).await?;
            let request = ReplayRequest { family: target.family, group, from, to, partition };
            let plan = ops.replay_plan(&request).await.map_err(refuse)?;
            print_plan(&plan);
            if let Some(refused) = &plan.refused {
                if execute {
                    anyhow::bail!("cannot replay: {refused}");
                }
                say!("this plan cannot be executed: {refused}");
                return Ok(ExitCode::SUCCESS);
            }
            if !execute {
                say!("nothing done: add --execute to re-deliver these {} entries to {}", plan.entries, plan.group);
                return Ok(ExitCode::SUCCESS);
            }
            let actor = Actor::cli();
            let (plan, running) = ops.replay_start(&request, &actor).await.map_err(refuse)?;
            let task = follow(&ops, running.task.id.clone(), ops.replay_run(&plan, running)).await?;
            finished(&task)
        }
        StreamsCommand::Dlq { command } => dlq(command).await,
        StreamsCommand::Claim { target, group, idle } => {
            let ops = connect(target.streams.as_deref(), true).await?;
            let claimed = ops.claim(target.family.as_deref(), &group, idle, &Actor::cli()).await.map_err(refuse)?;
            say!(
                "{}/{}: handed {} idle past {} to the group's live consumers (they claim them now)",
                claimed.family,
                claimed.group,
                count_of(claimed.entries, "entry", "entries"),
                human_ms(idle.as_millis() as u64)
            );
            if !claimed.consumers_removed.is_empty() {
                say!("removed consumers: {}", claimed.consumers_removed.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        StreamsCommand::Groups { command: GroupsCommand::Prune { target, idle } } => {
            let ops = connect(target.streams.as_deref(), true).await?;
            let pruned = ops.prune(idle, &Actor::cli()).await.map_err(refuse)?;
            say!(
                "removed {} gateway groups and {} idle consumers",
                pruned.groups_removed.len(),
                pruned.consumers_removed.len()
            );
            for name in pruned.groups_removed.iter().chain(&pruned.consumers_removed) {
                say!("  {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        StreamsCommand::Tasks { target, id, json } => {
            let ops = connect(target.streams.as_deref(), false).await?;
            let tasks = match id {
                Some(id) => vec![ops.task(&id).await.map_err(refuse)?],
                None => ops.tasks().await.map_err(refuse)?,
            };
            let mut out = Out::new();
            for task in tasks {
                let line = if json { serde_json::to_string(&task)? } else { task_line(&task) };
                if !out.line(line) {
                    break;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        StreamsCommand::Cancel { target, id } => {
            let ops = connect(target.streams.as_deref(), false).await?;
            let task = ops.cancel_task(&id).await.map_err(refuse)?;
            say!("asked task {} to stop; it stops before its next entry ({} moved so far)", task.id, task.moved);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn dlq(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List { filter, limit, json } => {
            let ops = connect(filter.target.streams.as_deref(), false).await?;
            let page = ops.dlq_list(&filter_of(&filter), usize::from(limit)).await.map_err(refuse)?;
            let mut out = Out::new();
            if json {
                out.line(serde_json::to_string(&page)?);
                return Ok(ExitCode::SUCCESS);
            }
            let heading = if page.total_at_least {
                format!("at least {} dead letters match (the newest {} shown)", page.total, page.letters.len())
            } else if page.letters.len() as u64 == page.total {
                let verb = if page.total == 1 { "matches" } else { "match" };
                format!("{} {verb}", count_of(page.total, "dead letter", "dead letters"))
            } else {
                format!(
                    "{} match (the newest {} shown)",
                    count_of(page.total, "dead letter", "dead letters"),
                    page.letters.len()
                )
            };
            if !out.line(heading) {
                return Ok(ExitCode::SUCCESS);
            }
            for letter in &page.letters {
                let line = format!(
                    "{:<36} {:<24} {:<12} {:>3}× {}",
                    letter.reference,
                    letter.time,
                    letter.group,
                    letter.deliveries,
                    shortened(&letter.error, 120)
                );
                if !out.line(line) {
                    break;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { target, reference } => {
            let ops = connect(target.streams.as_deref(), false).await?;
            let letter = ops.dlq_show(&reference).await.map_err(refuse)?;
            say!("{}", serde_json::to_string_pretty(&letter)?);
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Redrive { filter, rate, all } => {
            let chosen = filter_of(&filter);
            if !all && chosen.is_everything() {
                anyhow::bail!(
                    "name what to redrive (--family, --group, --error, --since, --until, --ids), or pass --all for every dead letter"
                );
            }
            let ops = connect(filter.target.streams.as_deref(), true).await?;
            let actor = Actor::cli();
            let (letters, running) =
                ops.redrive_start(&filter_of(&filter), Some(rate), &actor).await.map_err(refuse)?;
            say!("redriving {} dead letters at {rate}/s (task {}; Ctrl-C stops it)", letters.len(), running.task.id);
            let task = follow(&ops, running.task.id.clone(), ops.redrive_run(letters, running)).await?;
            finished(&task)
        }
        DlqCommand::Purge { filter, execute } => {
            let ops = connect(filter.target.streams.as_deref(), execute).await?;
            let (count, more) = ops.dlq_purge(&filter_of(&filter), execute, &Actor::cli()).await.map_err(refuse)?;
            let rest = if more { " (the oldest of a larger backlog: run it again for the rest)" } else { "" };
            if execute {
                say!("purged {}{rest}", count_of(count, "dead letter", "dead letters"));
            } else {
                say!(
                    "{} {}{rest}; nothing done: add --execute to delete them",
                    count_of(count, "dead letter", "dead letters"),
                    if count == 1 { "matches" } else { "match" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::List { limit, json } = command;
    let ops = connect(None, true).await?;
    let entries = ops.audit_list(limit, None).await.map_err(refuse)?;
    let mut out = Out::new();
    for entry in entries {
        let line = if json {
            serde_json::to_string(&entry)?
        } else {
            format!(
                "{:<26} {:<24} {:<12} {:>7} {:<10} {} {}",
                entry.at, entry.actor, entry.action, entry.entries, entry.outcome, entry.target, entry.detail
            )
        };
        if !out.line(line) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `work` (a task's runner) while printing its progress every second; Ctrl-C asks it to
/// stop, and it ends at its next entry.
async fn follow(
    ops: &Ops,
    id: String,
    work: impl std::future::Future<Output = chatdesk_ops::Result<Task>>,
) -> anyhow::Result<Task> {
    let watcher = {
        let (ops, id) = (ops.clone(), id.clone());
        tokio::spawn(async move {
            let mut asked = false;
            let mut last = String::new();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        // A line when something changed, not one a second saying the same.
                        if let Ok(task) = ops.task(&id).await {
                            let line = task_line(&task);
                            if line != last {
                                tell!("{line}");
                                last = line;
                            }
                        }
                    }
                    _ = tokio::signal::ctrl_c(), if !asked => {
                        asked = true;
                        tell!("stopping task {id} …");
                        let _ = ops.cancel_task(&id).await;
                    }
                }
            }
        })
    };
    let result = work.await;
    watcher.abort();
    result.map_err(refuse).context("the task failed")
}

fn finished(task: &Task) -> anyhow::Result<ExitCode> {
    say!("{}", task_line(task));
    match task.state {
        TaskState::Done => Ok(ExitCode::SUCCESS),
        TaskState::Cancelled => Ok(ExitCode::from(3)),
        _ => anyhow::bail!("task {} ended {:?}: {}", task.id, task.state, task.message),
    }
}

fn task_line(task: &Task) -> String {
    let handled = task.handled.map(|handled| format!(" handled {handled}")).unwrap_or_default();
    format!(
        "{} {} [{:?}] moved {}/{} skipped {} remaining {}{handled} — {}",
        task.id, task.kind, task.state, task.moved, task.total, task.skipped, task.remaining, task.message
    )
}

/// An entry id with its time, for people.
fn id_and_time(id: &str) -> String {
    match id.parse::<chatdesk_core::EntryId>() {
        Ok(entry) => format!(
            "{} ({})",
            chatdesk_ops::bound::format_ms(entry.millis),
            if entry.sequence == u64::MAX { entry.millis.to_string() } else { id.to_owned() }
        ),
        Err(_) => id.to_owned(),
    }
}

fn print_plan(plan: &ReplayPlan) {
    say!(
        "replay into {}/{} from {} to {}: {} entries",
        plan.family,
        plan.group,
        id_and_time(&plan.from_id),
        id_and_time(&plan.to_id),
        plan.entries
    );
    say!("{:>5} {:>9} {:<26} {:<26} NOTES", "PART", "ENTRIES", "FIRST", "LAST");
    let mut quiet = Vec::new();
    for part in &plan.partitions {
        let mut notes = Vec::new();
        if part.trimmed {
            notes.push(format!("partly trimmed (holds from {})", part.available_from.as_deref().unwrap_or("nothing")));
        }
        if part.not_yet_delivered {
            notes.push("the rest is not delivered yet (the group reads it anyway)".to_owned());
        }
        if part.group_missing {
            notes.push("the group does not exist here".to_owned());
        }
        if part.dead_letters > 0 {
            notes.push(format!(
                "{} of them are dead letters of {}: replayed, they fail again unless the cause is fixed (redrive them instead)",
                part.dead_letters, plan.group
            ));
        }
        if part.entries == 0 && notes.is_empty() {
            quiet.push(part.partition.to_string());
            continue;
        }
        say!(
            "{:>5} {:>9} {:<26} {:<26} {}",
            part.partition,
            part.entries,
            part.first_id.as_deref().unwrap_or("-"),
            part.last_id.as_deref().unwrap_or("-"),
            notes.join("; ")
        );
    }
    if !quiet.is_empty() {
        say!("nothing in the range on partitions {}", quiet.join(", "));
    }
}

fn print_status(reports: &[PartitionReport], json: bool) {
    let mut out = Out::new();
    if json {
        for report in reports {
            if !out.line(serde_json::to_string(report).unwrap_or_default()) {
                return;
            }
        }
        return;
    }
    let age = |ms: Option<u64>| ms.map_or_else(|| "-".to_owned(), human_ms);
    let header = format!(
        "{:<10} {:>4} {:>9} {:>6} {:>6} {:>5}  {:<22} {:>9} {:>8} {:>8}  CONSUMERS (idle)",
        "STREAM", "PART", "LENGTH", "OLDEST", "NEWEST", "DLQ", "GROUP", "LAG", "PENDING", "WAITING"
    );
    if !out.line(header) {
        return;
    }
    let mut holds = Vec::new();
    for report in reports {
        let stream = format!(
            "{:<10} {:>4} {:>9} {:>6} {:>6} {:>5}",
            report.stream,
            report.partition,
            report.length,
            age(report.first_age_ms),
            age(report.last_age_ms),
            report.dead_letters
        );
        if report.groups.is_empty() && !out.line(format!("{stream}  (no groups)")) {
            return;
        }
        for group in &report.groups {
            let lag = match (group.lag_estimated, group.lag_at_least) {
                (_, true) => format!("≥{}~", group.lag),
                (true, false) => format!("{}~", group.lag),
                _ => group.lag.to_string(),
            };
            let consumers: Vec<String> = group
                .consumers
                .iter()
                .map(|consumer| format!("{} ({})", consumer.name, human_ms(consumer.idle_ms)))
                .collect();
            let line = format!(
                "{stream}  {:<22} {:>9} {:>8} {:>8}  {}",
                group.group,
                lag,
                group.pending,
                age(group.oldest_pending_age_ms),
                if consumers.is_empty() { "none".to_owned() } else { consumers.join(", ") }
            );
            if !out.line(line) {
                return;
            }
        }
        if let Some(hold) = &report.retention_held_by {
            holds.push(format!(
                "{}/{}: retention held back by {} ({}{})",
                report.stream,
                report.partition,
                hold.group,
                match hold.reason.as_str() {
                    "missing" => "the group does not exist here: nothing can be trimmed".to_owned(),
                    "pending" => format!("an entry pending since {}", hold.since_id.as_deref().unwrap_or("?")),
                    _ => format!("it has not read past {}", hold.since_id.as_deref().unwrap_or("?")),
                },
                if hold.held_ms > 0 { format!(", for {}", human_ms(hold.held_ms)) } else { String::new() }
            ));
        }
    }
    if reports.iter().any(|report| report.groups.iter().any(|group| group.lag_estimated)) {
        out.line("~ lag counted in the stream: Redis cannot tell it after XGROUP SETID or a deletion past the group");
    }
    for hold in holds {
        if !out.line(hold) {
            return;
        }
    }
}
