//! Every benchmark, one after the other, summed up in one table: each stage's chatdesk figure next
//! to the limit or peer its benchmark measured in the same run, their ratio and the goal; the
//! same table as JSON.
//!
//! ```text
//! cargo build --release -p chatdesk -p chatdesk-load-tests
//! cargo run --release -p chatdesk-load-tests --bin bench-all -- [--json bench-all.json] [--quick] [--soak]
//! ```
//!
//! It runs the other benchmark binaries next to it (same build profile) with the arguments the
//! benchmarks' README uses, and reads their printed figures; their whole output is kept in the
//! JSON too, so a surprising figure can be read in context.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::json;

#[derive(Parser)]
#[command(about = "Runs every chatdesk benchmark and prints one table of figures, peers and ratios")]
struct Args {
    /// Where the table is written as JSON.
    #[arg(long, default_value = "bench-all.json")]
    json: PathBuf,
    /// Smaller runs (fewer entries, shorter rates): a quick look, not figures to publish.
    #[arg(long)]
    quick: bool,
    /// Also keep the gateway's load on for a 10-minute soak (1 minute with `--quick`) and report
    /// the server's RSS at its start and end; off by default, since it adds those minutes.
    #[arg(long)]
    soak: bool,
}

/// One line of the table.
struct Row {
    stage: &'static str,
    figure: f64,
    unit: &'static str,
    against: String,
    reference: f64,
    /// Higher is better (throughput) or lower is better (latency, memory).
    higher_is_better: bool,
    goal: &'static str,
    met: bool,
}

impl Row {
    /// A throughput next to the limit measured in the same run, whose goal is half of it.
    fn half_of(stage: &'static str, figure: f64, unit: &'static str, against: &str, reference: f64) -> Self {
        Self {
            stage,
            figure,
            unit,
            against: against.to_owned(),
            reference,
            higher_is_better: true,
            goal: ">= 0.5",
            met: figure / reference >= 0.5,
        }
    }
}

/// Runs a benchmark binary next to this one and returns what it printed on stdout.
fn run(name: &str, args: &[&str]) -> anyhow::Result<String> {
    let binary = std::env::current_exe()?.parent().context("no directory")?.join(name);
    if !binary.exists() {
        bail!("{} is missing: build with `cargo build --release -p chatdesk -p chatdesk-load-tests`", binary.display());
    }
    eprintln!("bench-all: {name} {}", args.join(" "));
    let started = Instant::now();
    let output =
        std::process::Command::new(&binary).args(args).output().with_context(|| format!("cannot run {name}"))?;
    if !output.status.success() {
        bail!("{name} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    eprintln!("bench-all: {name} done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The number at the end of the first line that starts with `label` (after trimming).
fn figure(output: &str, label: &str) -> anyhow::Result<f64> {
    output
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with(label))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("no figure for {label:?} in:\n{output}"))
}

/// The numbers of every line that holds exactly `count` of them (a benchmark's table rows).
fn numeric_lines(output: &str, count: usize) -> Vec<Vec<f64>> {
    output
        .lines()
        .map(|line| line.split_whitespace().filter_map(|word| word.parse::<f64>().ok()).collect::<Vec<_>>())
        .filter(|numbers| numbers.len() == count)
        .collect()
}

/// Every number of each line that starts with `label`.
fn rows_of(output: &str, label: &str) -> Vec<Vec<f64>> {
    output
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with(label))
        .map(|line| line.split_whitespace().filter_map(|word| word.parse().ok()).collect())
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    let mut outputs = serde_json::Map::new();

    // The consumer runtime next to pipelined XADD on the same Redis. A million entries: with
    // 200,000 a scenario lasts half a second, and starting its consumers weighs in the figure.
    let entries = if args.quick { "50000" } else { "1000000" };
    let stream = run("stream-throughput", &["--entries", entries])?;
    let pipelined = figure(&stream, "redis-benchmark XADD (50 clients, pipeline 16)")?;
    let no_op = rows_of(&stream, "no-op group").iter().filter_map(|row| row.last().copied()).fold(0.0, f64::max);
    rows.push(Row::half_of("runtime: no-op group", no_op, "entries/s", "redis-benchmark XADD, pipeline 16", pipelined));
    outputs.insert("stream-throughput".to_owned(), json!(stream));

    // The writer next to a raw COPY of the same rows.
    let messages = if args.quick { "20000" } else { "100000" };
    let writer = run("writer-throughput", &["--messages", messages])?;
    let stored = figure(&writer, "writer group, batch 2000")?;
    let copy = figure(&writer, "raw COPY")?;
    rows.push(Row::half_of("writer: events stored (batch 2000)", stored, "events/s", "raw COPY of the rows", copy));
    // The shipped settings: 8 partitions, batch 500, 32 tenants.
    let shipped = figure(&writer, "writer group, shipped")?;
    rows.push(Row::half_of(
        "writer: events stored (shipped settings, 32 tenants)",
        shipped,
        "events/s",
        "raw COPY of the rows",
        copy,
    ));
    outputs.insert("writer-throughput".to_owned(), json!(writer));

    // Signed webhooks next to redis-benchmark XADD with AOF always.
    let seconds = if args.quick { "3" } else { "10" };
    let ingress = run("ingress-load", &["--seconds", seconds])?;
    let peer = ingress
        .lines()
        .find_map(|line| line.strip_prefix("peer: "))
        .and_then(|rest| rest.rsplit(": ").next())
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse::<f64>().ok())
        .context("no peer figure in ingress-load's output")?;
    // Rate lines: target, sustained, errors, p50, p99, p99.9, ratio.
    let sustained = numeric_lines(&ingress, 7).iter().map(|numbers| numbers[1]).fold(0.0, f64::max);
    rows.push(Row::half_of(
        "ingress: signed webhooks sustained",
        sustained,
        "requests/s",
        "redis-benchmark XADD, 50 clients, AOF always",
        peer,
    ));
    outputs.insert("ingress-load".to_owned(), json!(ingress));

    // Fan-out next to the Socket.IO peer, memory per idle socket, replay.
    let (idle, replay) = if args.quick { ("2000", "10000") } else { ("10000", "100000") };
    let mut gateway_args = vec![
        "--rates",
        "1000,5000",
        "--seconds",
        seconds,
        "--tenants",
        "500",
        "--agents-per-tenant",
        "2",
        "--idle",
        idle,
        "--replay",
        replay,
    ];
    // The soak's rate is gateway-load's default: half the highest rate these rates carried.
    let soak_seconds = if args.quick { "60" } else { "600" };
    if args.soak {
        gateway_args.extend(["--soak-seconds", soak_seconds]);
    }
    let gateway = run("gateway-load", &gateway_args)?;
    // Side-by-side lines: rate, chatdesk/s, p50, p99, Socket.IO/s, p50, p99, ratio.
    let side_by_side = numeric_lines(&gateway, 8);
    for numbers in &side_by_side {
        let rate = numbers[0];
        rows.push(Row {
            stage: if rate <= 1000.0 {
                "fan-out p99, 1,000 msgs/s (ms)"
            } else {
                "fan-out p99, 5,000 msgs/s offered (ms)"
            },
            figure: numbers[3],
            unit: "ms",
            against: format!("Socket.IO peer p99 (it carried {:.0}/s; chatdesk {:.0}/s)", numbers[4], numbers[1]),
            reference: numbers[6],
            higher_is_better: false,
            goal: if rate <= 1000.0 { "<= 2x peer" } else { "all carried, p99 < 100 ms" },
            met: if rate <= 1000.0 {
                numbers[3] <= 2.0 * numbers[6]
            } else {
                numbers[1] >= 0.98 * rate && numbers[3] < 100.0
            },
        });
    }
    let memory = gateway
        .lines()
        .find_map(|line| line.strip_prefix("memory per idle connection: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse::<f64>().ok())
        .context("no memory figure in gateway-load's output")?;
    rows.push(Row {
        stage: "memory per idle socket",
        figure: memory,
        unit: "KiB",
        against: "the goal".to_owned(),
        reference: 16.0,
        higher_is_better: false,
        goal: "<= 16 KiB",
        met: memory <= 16.0,
    });
    if args.soak {
        let start = figure(&gateway, "soak RSS at 0 s (KiB):")?;
        let end = figure(&gateway, "soak RSS at the end (KiB):")?;
        let lost = figure(&gateway, "soak lost:")?;
        let p99 = figure(&gateway, "soak p99 ms:")?;
        let rate = gateway
            .lines()
            .find_map(|line| line.strip_prefix("soak: "))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("?");
        rows.push(Row {
            stage: if args.quick { "memory: RSS over a 1-minute soak" } else { "memory: RSS over a 10-minute soak" },
            figure: end,
            unit: "KiB at the end",
            against: format!("RSS at the start ({rate} msgs/s; lost {lost:.0}, p99 {p99:.2} ms)"),
            reference: start,
            higher_is_better: false,
            goal: "flat (<= 1.1x), none lost",
            met: end <= 1.1 * start && lost == 0.0,
        });
    }
    outputs.insert("gateway-load".to_owned(), json!(gateway));

    // The sender draining its queue, next to the BullMQ peer draining the same number of jobs to
    // the same instant receiver, and to what its concurrency allows with a 50 ms provider.
    let messages = if args.quick { "5000" } else { "20000" };
    let sender = run("sender-throughput", &["--messages", messages, "--conversations", "500", "--delays", "0,50"])?;
    // Lines "queued-first drain, <delay> ms receiver, <n> replies (deliveries/s): <rate>".
    let lines = rows_of(&sender, "queued-first drain,");
    // Absent when the peer was skipped (no Node.js): the instant row is then against the goal.
    let bullmq = figure(&sender, "bullmq drain, instant receiver (jobs/s):").ok();
    for numbers in &lines {
        let drain = *numbers.last().context("a drain line without its rate")?;
        let row = match (numbers[0] == 0.0, bullmq) {
            (true, Some(peer)) => Row {
                stage: "sender: deliveries, instant receiver",
                figure: drain,
                unit: "deliveries/s",
                against: "BullMQ peer, concurrency 50, jobs/s".to_owned(),
                reference: peer,
                higher_is_better: true,
                goal: ">= 5,000/s and > BullMQ",
                met: drain >= 5000.0 && drain > peer,
            },
            (true, None) => Row {
                stage: "sender: deliveries, instant receiver",
                figure: drain,
                unit: "deliveries/s",
                against: "the goal (BullMQ peer skipped)".to_owned(),
                reference: 5000.0,
                higher_is_better: true,
                goal: ">= 5,000/s",
                met: drain >= 5000.0,
            },
            (false, _) => Row {
                stage: "sender: deliveries, 50 ms receiver",
                figure: drain,
                unit: "deliveries/s",
                against: "256 concurrent calls / 50 ms".to_owned(),
                reference: 256.0 / 0.05,
                higher_is_better: true,
                goal: "bounded by concurrency",
                met: drain >= 0.8 * 256.0 / 0.05,
            },
        };
        rows.push(row);
    }
    outputs.insert("sender-throughput".to_owned(), json!(sender));

    // Message search next to the issue's goal, which is set at a million messages; the quick
    // run's tenth of that is a look at the trend only.
    let messages = if args.quick { "100000" } else { "1000000" };
    let search = run("search-bench", &["--messages", messages])?;
    let slowest = figure(&search, "slowest p99 ms:")?;
    let class = search.lines().find_map(|line| line.strip_prefix("slowest class: ")).unwrap_or("unknown class");
    rows.push(Row {
        stage: "search p99, slowest query class (ms)",
        figure: slowest,
        unit: "ms",
        against: format!("the goal; slowest: {class}"),
        reference: 100.0,
        higher_is_better: false,
        goal: "<= 100 ms at 1M messages",
        met: slowest <= 100.0,
    });
    outputs.insert("search-bench".to_owned(), json!(search));

    print_table(&rows);
    write_json(&args.json, &rows, outputs)?;
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<42} {:>14} {:<14} {:>14}  {:<52} {:>7}  {:<26}",
        "stage", "chatdesk", "", "same run", "against", "ratio", "goal"
    );
    for row in rows {
        let ratio = row.figure / row.reference;
        println!(
            "{:<42} {:>14.2} {:<14} {:>14.2}  {:<52} {:>7.2}  {:<26}",
            row.stage,
            row.figure,
            row.unit,
            row.reference,
            row.against,
            ratio,
            format!("{} {}", row.goal, if row.met { "(met)" } else { "(not yet)" })
        );
    }
}

fn write_json(path: &Path, rows: &[Row], outputs: serde_json::Map<String, serde_json::Value>) -> anyhow::Result<()> {
    let table: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            json!({
                "stage": row.stage,
                "chatdesk": row.figure,
                "unit": row.unit,
                "against": row.against,
                "same_run": row.reference,
                "ratio": row.figure / row.reference,
                "higher_is_better": row.higher_is_better,
                "goal": row.goal,
                "met": row.met,
            })
        })
        .collect();
    let document = json!({ "table": table, "outputs": outputs });
    std::fs::write(path, serde_json::to_string_pretty(&document)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("\nwritten to {}", path.display());
    Ok(())
}
