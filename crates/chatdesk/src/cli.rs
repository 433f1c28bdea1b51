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
    /// Check dialog flows (the files `CHATDESK_FLOWS` points at).
    Flows {
        #[command(subcommand)]
        command: FlowsCommand,
    },
    /// Create tenants, agents, inboxes and API keys; prints JSON for scripts. Uses DATABASE_URL,
    /// else the servers of `chatdesk up`'s data directory.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
        #[arg(long, env = "CHATDESK_DATA_DIR", default_value = ".chatdesk", global = true)]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Tenants: `admin tenant create --name --owner-email --password`.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Agents (users): `admin agent create --tenant --email --password --role`.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Inboxes: `admin inbox create --tenant --kind --name [--outbound-url]`.
    Inbox {
        #[command(subcommand)]
        command: InboxCommand,
    },
    /// API keys for server-to-server calls: `admin apikey create --tenant --role`,
    /// `admin apikey revoke --tenant --key`.
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Creates a tenant and its owner; prints {"tenant_id", "user_id"}.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        owner_email: String,
        /// At least 8 characters.
        #[arg(long, env = "CHATDESK_ADMIN_PASSWORD")]
        password: String,
    },
    /// Sets a tenant's unique-recipient quota per 24 hours across its WhatsApp numbers
    /// (WhatsApp's messaging limit tier; default 2,000); prints {"tenant_id", "daily_recipients"}.
    SetQuota {
        #[arg(long)]
        tenant: uuid::Uuid,
        /// 1 to 10,000,000.
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..=10_000_000))]
        daily_recipients: i32,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Creates a user of a tenant; prints {"user_id"}.
    Create {
        #[arg(long)]
        tenant: uuid::Uuid,
        #[arg(long)]
        email: String,
        /// At least 8 characters.
        #[arg(long, env = "CHATDESK_ADMIN_PASSWORD")]
        password: String,
        #[arg(long, value_enum, default_value = "agent")]
        role: RoleArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum InboxCommand {
    /// Creates an inbox; prints {"inbox_id", "webhook_path", "secret"}.
    Create {
        #[arg(long)]
        tenant: uuid::Uuid,
        #[arg(long, value_enum)]
        kind: KindArg,
        #[arg(long)]
        name: String,
        /// Where the generic channel delivers outbound messages (signed POST).
        #[arg(long)]
        outbound_url: Option<String>,
        /// The webhook secret, when the provider fixes it (WhatsApp: the app secret); random
        /// otherwise.
        #[arg(long)]
        secret: Option<String>,
        /// WhatsApp: the business phone number's id messages are sent from.
        #[arg(long)]
        phone_number_id: Option<String>,
        /// WhatsApp: the Cloud API access token (system user token).
        #[arg(long)]
        access_token: Option<String>,
        /// Telegram: the bot's token from @BotFather.
        #[arg(long)]
        bot_token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Creates an API key; prints {"key", "key_id"}. The key is shown only once.
    Create {
        #[arg(long)]
        tenant: uuid::Uuid,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Revokes an API key at once; prints {"revoked": true}. `--key` is its `key_id` or the key
    /// itself.
    Revoke {
        #[arg(long)]
        tenant: uuid::Uuid,
        #[arg(long)]
        key: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Owner,
    Admin,
    Agent,
    Marketer,
    Sre,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    Generic,
    Whatsapp,
    Telegram,
    Web,
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
    /// Seed a demo tenant (agent logins printed at start), a widget test page at /demo, and a
    /// simulated customer writing every 20 seconds.
    #[arg(long)]
    pub demo: bool,
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
pub enum FlowsCommand {
    /// Validate a flow file or a directory of them and exit non-zero listing every problem
    /// (file, key, reason); prints each flow's states when all is well.
    Check {
        /// A `.toml` file or a directory; defaults to `CHATDESK_FLOWS`, else ./flows.
        path: Option<PathBuf>,
    },
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
