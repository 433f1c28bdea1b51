//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::roles::Role;

#[derive(Debug, Parser)]
#[command(name = "chatdesk", version, about = "Customer-messaging backbone on Redis Streams consumer groups")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every role in one process. Without REDIS_URL / DATABASE_URL, starts private Redis and
    /// PostgreSQL servers under the data directory (reused on the next start).
    Up(UpArgs),
    /// Run a subset of roles against existing Redis and PostgreSQL (REDIS_URL, DATABASE_URL).
    Serve(ServeArgs),
    /// Apply database migrations (DATABASE_URL) and exit.
    Migrate,
    /// Inspect stream configuration and consumer groups.
    Streams {
        #[command(subcommand)]
        command: StreamsCommand,
    },
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// HTTP listen address (health, readiness, metrics and the API).
    #[arg(long, env = "CHATDESK_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// streams.toml to use; defaults to ./streams.toml, else the built-in copy.
    #[arg(long, env = "CHATDESK_STREAMS")]
    pub streams: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Where private servers keep their data.
    #[arg(long, env = "CHATDESK_DATA_DIR", default_value = ".chatdesk")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Comma-separated roles to run.
    #[arg(long, value_delimiter = ',', required = true, env = "CHATDESK_ROLES")]
    pub roles: Vec<Role>,
}

#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Validate a streams.toml and exit non-zero with every problem (file, key, reason).
    Check {
        /// The file to check; defaults to ./streams.toml.
        file: Option<PathBuf>,
    },
    /// Length, lag, pending and consumers of every group on every partition (REDIS_URL).
    Status {
        #[arg(long, env = "CHATDESK_STREAMS")]
        streams: Option<PathBuf>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn unknown_roles_and_bad_addresses_are_refused() {
        let error = Cli::try_parse_from(["chatdesk", "serve", "--roles", "ingress,teleporter"]).unwrap_err();
        assert!(error.to_string().contains("teleporter"), "{error}");
        let error = Cli::try_parse_from(["chatdesk", "up", "--http", "localhost"]).unwrap_err();
        assert!(error.to_string().contains("--http"), "{error}");
        assert!(Cli::try_parse_from(["chatdesk", "serve", "--roles", "ingress"]).is_ok());
    }
}
