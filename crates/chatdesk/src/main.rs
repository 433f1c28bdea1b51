//! The `chatdesk` binary: the CLI, the roles a process runs, telemetry and shutdown.
//!
//! - `cli`: the command line (clap).
//! - `settings`: configuration from the environment (and `.env`-style files), typed.
//! - `telemetry`: logs (tracing) and the Prometheus recorder.
//! - `servers`: private Redis / PostgreSQL for `chatdesk up` when no URLs are configured.
//! - `roles`: what `up` and `serve` run, supervised under one cancellation token.
//! - `commands`: what each subcommand does; `admin` and `ops_cli` (the operator tools:
//!   `streams status|replay|dlq|claim|groups|tasks|cancel`, `audit`) in their own modules.
//! - `demo`: the demo tenant and simulated customers of `up --demo`.

/// `println!` that stops quietly when the reader has gone (`| head`) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The same on stderr, for progress.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod admin;
mod cli;
mod commands;
mod demo;
mod ops_cli;
mod roles;
mod servers;
mod settings;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

/// Every stage allocates per entry and per request on many threads at once (decoded entries,
/// frames, JSON); glibc's allocator spent a fifth of the CPU of a busy process in malloc and
/// free, mimalloc far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chatdesk: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            // The one place the whole cause chain is printed: once, as a log line in JSON logs
            // (collectors read those), as plain text otherwise.
            if std::env::var("CHATDESK_LOG_FORMAT").is_ok_and(|format| format == "json") {
                tracing::error!(error = format!("{error:#}"), "chatdesk failed");
            } else {
                eprintln!("chatdesk: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}
