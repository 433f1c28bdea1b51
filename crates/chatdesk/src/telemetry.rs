//! Logs and metrics. Logs go to stderr, human-readable by default, JSON lines with
//! `CHATDESK_LOG_FORMAT=json`; `RUST_LOG` filters them. Metrics are kept by one Prometheus
//! recorder and rendered at `/metrics`.

use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

const DEFAULT_FILTER: &str = "info,fred=warn,sqlx=warn,tower_http=warn";

pub fn init_logs() {
    init_logs_with(DEFAULT_FILTER);
}

/// For commands a person runs and reads (the operator tools): their own output says what
/// happened, so logs show warnings and errors only unless `RUST_LOG` asks for more.
pub fn init_command_logs() {
    init_logs_with("warn");
}

fn init_logs_with(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a terminal: a log written to a file or a collector stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let json = std::env::var("CHATDESK_LOG_FORMAT").is_ok_and(|format| format == "json");
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Seconds-based histograms get buckets from 0.5 ms to 30 s, which covers a Redis round trip
/// as well as a slow provider call.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &buckets)
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    chatdesk_streams::metrics::describe();
    chatdesk_api::metrics::describe();
    chatdesk_workers::writer::describe();
    chatdesk_workers::routing::describe();
    chatdesk_notify::describe();
    chatdesk_api::ingress::describe();
    chatdesk_gateway::metrics::describe();
    chatdesk_sender::metrics::describe();
    chatdesk_broadcast::describe();
    let upkeep = handle.clone();
    // Histograms are drained into their buckets on upkeep; without it memory grows.
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}
