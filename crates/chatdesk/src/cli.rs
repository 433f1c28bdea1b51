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
    /// Inspect and repair streams: status, replay, dead letters, claims, pruning.
    Streams {
        #[command(subcommand)]
        command: StreamsCommand,
    },
    /// Operator actions on the streams (replay, redrive, purge, claim, prune), newest first.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
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
    /// Every partition's length, first and last entry, dead letters and what holds its retention
    /// back; every group's lag (marked `~` when estimated), pending entries and their age, and
    /// consumers (REDIS_URL, else `chatdesk up`'s servers).
    Status {
        #[arg(long, env = "CHATDESK_STREAMS")]
        streams: Option<PathBuf>,
        /// Print one JSON object per partition instead of a table.
        #[arg(long)]
        json: bool,
        /// Only this stream family.
        #[arg(long)]
        family: Option<String>,
    },
    /// Re-deliver a range of entries to one consumer group while it keeps running. Prints the
    /// plan; acts only with --execute.
    Replay {
        #[command(flatten)]
        target: OpsTarget,
        /// The group to replay into (writer, sender, broadcaster, autoreply).
        #[arg(long)]
        group: String,
        /// Start: an entry id, an RFC 3339 time or a time before now (-2h).
        #[arg(long, allow_hyphen_values = true)]
        from: String,
        /// End (inclusive), same forms; now when absent.
        #[arg(long, allow_hyphen_values = true)]
        to: Option<String>,
        /// One partition only.
        #[arg(long)]
        partition: Option<u16>,
        /// Carry the plan out (without it, nothing changes).
        #[arg(long)]
        execute: bool,
    },
    /// Dead letters: list, show, redrive to their group, purge.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Hand the entries a dead consumer of GROUP holds (idle past --idle) to the group's live
    /// consumers now, and remove the dead consumers.
    Claim {
        #[command(flatten)]
        target: OpsTarget,
        #[arg(long)]
        group: String,
        /// How long an entry must have been idle, e.g. 5m.
        #[arg(long, value_parser = parse_duration_arg)]
        idle: std::time::Duration,
    },
    /// Consumer groups: `groups prune` removes gone gateways' groups and idle empty consumers.
    Groups {
        #[command(subcommand)]
        command: GroupsCommand,
    },
    /// Replays and redrives: progress of the recent ones, or of one.
    Tasks {
        #[command(flatten)]
        target: OpsTarget,
        /// One task's id.
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Ask a running replay or redrive to stop.
    Cancel {
        #[command(flatten)]
        target: OpsTarget,
        id: String,
    },
}

/// Where the operator tools find the servers and streams.
#[derive(Debug, Args)]
pub struct OpsTarget {
    #[arg(long, env = "CHATDESK_STREAMS")]
    pub streams: Option<PathBuf>,
    /// The stream family, when the group's name is in several.
    #[arg(long)]
    pub family: Option<String>,
}

/// Which dead letters: every option narrows.
#[derive(Debug, Args)]
pub struct DlqFilterArgs {
    #[command(flatten)]
    pub target: OpsTarget,
    #[arg(long)]
    pub group: Option<String>,
    /// Text the error contains (case-insensitive).
    #[arg(long)]
    pub error: Option<String>,
    /// Dead-lettered at or after (entry id, RFC 3339 time, -2h).
    #[arg(long, allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Dead-lettered at or before.
    #[arg(long, allow_hyphen_values = true)]
    pub until: Option<String>,
    /// Letters by reference (<family>/<partition>/<id>), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub ids: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// The newest dead letters matching the filters, and how many match.
    List {
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// 1 to 1000.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        #[arg(long)]
        json: bool,
    },
    /// One dead letter with its original entry's fields.
    Show {
        #[command(flatten)]
        target: OpsTarget,
        /// <family>/<partition>/<id>, as `list` prints it.
        reference: String,
    },
    /// Return matching dead letters to their group, paced (Ctrl-C or `streams cancel` stops it).
    /// Name what to redrive with the filters, or pass --all.
    Redrive {
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Every dead letter of every family (or of --family).
        #[arg(long)]
        all: bool,
        /// Letters per second (0.1 to 10000).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
    },
    /// Delete matching dead letters. Prints how many; deletes only with --execute.
    Purge {
        #[command(flatten)]
        filter: DlqFilterArgs,
        #[arg(long)]
        execute: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Remove gone gateway nodes' groups and consumers holding nothing, idle past --idle.
    Prune {
        #[command(flatten)]
        target: OpsTarget,
        #[arg(long, default_value = "1m", value_parser = parse_duration_arg)]
        idle: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Operator actions, newest first: who, when, what, how many.
    List {
        /// 1 to 1000.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration_arg(raw: &str) -> Result<std::time::Duration, String> {
    chatdesk_core::duration::parse_duration(raw).map_err(|error| error.to_string())
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
