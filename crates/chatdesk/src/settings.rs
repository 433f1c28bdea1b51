//! Configuration from the environment, typed and validated before anything starts. Secrets
//! (URLs with passwords) are wrapped so they never print.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use chatdesk_core::{KeyScheme, StreamsConfig};
use chatdesk_streams::{RedisClient, RedisConnector, RedisSettings};
use fred::interfaces::ClientLike;
use metrics_exporter_prometheus::PrometheusHandle;

/// The streams.toml compiled into the binary, used when no file is given or found.
const BUILTIN_STREAMS: &str = include_str!("../../../streams.toml");

/// A value that must never appear in logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(***)")
    }
}

pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty())
}

pub fn redis_url() -> Option<Secret> {
    env_var("REDIS_URL").map(Secret::new)
}

pub fn database_url() -> Option<Secret> {
    env_var("DATABASE_URL").map(Secret::new)
}

/// Where `chatdesk up` keeps its data when no `--data-dir` is given (`CHATDESK_DATA_DIR`).
pub fn default_data_dir() -> std::path::PathBuf {
    env_var("CHATDESK_DATA_DIR").unwrap_or_else(|| ".chatdesk".to_owned()).into()
}

/// The URL of a server: `name` (`REDIS_URL`, `DATABASE_URL`) when set, else the one of `chatdesk
/// up`'s servers in `data_dir`. The second answer says where it came from, for error messages.
pub fn server_url(name: &str, data_dir: &Path) -> anyhow::Result<(Secret, bool)> {
    if let Some(url) = env_var(name) {
        return Ok((Secret::new(url), false));
    }
    servers_env_value(data_dir, name).map(|url| (url, true)).with_context(|| {
        format!(
            "{name} is not set and {} has no `chatdesk up` servers: start `chatdesk up`, set {name}, or point \
             CHATDESK_DATA_DIR (or --data-dir) at the data directory `chatdesk up` was started with",
            data_dir.display()
        )
    })
}

/// What to say when `chatdesk up`'s servers (named in `servers.env`) do not answer.
pub fn up_not_running(name: &str, data_dir: &Path) -> String {
    format!(
        "chatdesk up is not running (the servers in {}/servers.env do not answer): start it, or set {name}",
        data_dir.display()
    )
}

/// A value from `<data-dir>/servers.env`, written by a running `chatdesk up`.
pub fn servers_env_value(data_dir: &Path, name: &str) -> Option<Secret> {
    let text = std::fs::read_to_string(data_dir.join("servers.env")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('=').map(str::to_owned))
        .filter(|value| !value.is_empty())
        .map(Secret::new)
}

/// `CHATDESK_INGRESS_RATE_PER_INBOX` (requests per second per inbox, default 200) and
/// `CHATDESK_WIDGET_STANDBY` (how long a widget visitor may be away and continue the same
/// conversation, default `10m`).
pub fn ingress_settings() -> anyhow::Result<chatdesk_api::ingress::IngressSettings> {
    let mut settings = chatdesk_api::ingress::IngressSettings { outbound: outbound_policy()?, ..Default::default() };
    if let Some(rate) = env_var("CHATDESK_INGRESS_RATE_PER_INBOX") {
        settings.rate_per_inbox =
            rate.parse().ok().filter(|rate| *rate > 0).with_context(|| {
                format!("CHATDESK_INGRESS_RATE_PER_INBOX {rate:?}: expected a positive whole number")
            })?;
    }
    if let Some(url) = env_var("CHATDESK_PUBLIC_WS_URL") {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            anyhow::bail!("CHATDESK_PUBLIC_WS_URL {url:?}: expected a ws:// or wss:// URL");
        }
        settings.websocket_url = Some(url);
    }
    if let Some(standby) = env_var("CHATDESK_WIDGET_STANDBY") {
        settings.widget_standby = chatdesk_core::duration::parse_duration(&standby)
            .map_err(|error| anyhow::anyhow!("CHATDESK_WIDGET_STANDBY: {error}"))?;
    }
    Ok(settings)
}

/// `CHATDESK_WS_QUEUE`: frames a WebSocket may have waiting before the client counts as too
/// slow and is closed (default 1024). `CHATDESK_GATEWAY_LINGER`: how long a gateway keeps reading
/// a partition after its last socket left (default 60s). `CHATDESK_WS_TOKEN_RECHECK`: how often an
/// agent's open socket checks its token still stands (default 30s).
pub fn gateway_settings() -> anyhow::Result<chatdesk_gateway::GatewaySettings> {
    let mut settings = chatdesk_gateway::GatewaySettings::default();
    if let Some(tenant) = env_var("CHATDESK_OPS_TENANT") {
        settings.ops_tenant = Some(
            tenant.trim().parse().with_context(|| format!("CHATDESK_OPS_TENANT {tenant:?}: expected a tenant id"))?,
        );
    }
    if let Some(linger) = env_var("CHATDESK_GATEWAY_LINGER") {
        settings.linger = chatdesk_core::duration::parse_duration(&linger)
            .map_err(|error| anyhow::anyhow!("CHATDESK_GATEWAY_LINGER: {error}"))?;
    }
    if let Some(recheck) = env_var("CHATDESK_WS_TOKEN_RECHECK") {
        settings.token_recheck = chatdesk_core::duration::parse_duration(&recheck)
            .ok()
            .filter(|recheck| !recheck.is_zero())
            .with_context(|| format!("CHATDESK_WS_TOKEN_RECHECK {recheck:?}: expected a duration such as 30s"))?;
    }
    if let Some(queue) = env_var("CHATDESK_WS_QUEUE") {
        settings.queue = queue
            .parse()
            .ok()
            .filter(|queue| *queue > 0)
            .with_context(|| format!("CHATDESK_WS_QUEUE {queue:?}: expected a positive whole number"))?;
    }
    Ok(settings)
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(name: &str) -> anyhow::Result<Option<T>> {
    env_var(name)
        .map(|raw| {
            raw.trim()
                .parse::<T>()
                .ok()
                .filter(|value| *value > T::default())
                .with_context(|| format!("{name} {raw:?}: expected a positive whole number"))
        })
        .transpose()
}

fn duration(name: &str) -> anyhow::Result<Option<std::time::Duration>> {
    env_var(name)
        .map(|raw| chatdesk_core::duration::parse_duration(&raw).map_err(|error| anyhow::anyhow!("{name}: {error}")))
        .transpose()
}

fn base_url(name: &str) -> anyhow::Result<Option<String>> {
    env_var(name)
        .map(|raw| {
            let url = raw.trim().trim_end_matches('/').to_owned();
            if url.starts_with("http://") || url.starts_with("https://") {
                Ok(url)
            } else {
                anyhow::bail!("{name} {raw:?}: expected an http:// or https:// URL")
            }
        })
        .transpose()
}

/// `CHATDESK_HTTP_HEADER_TIMEOUT` (default 10s): how long a client may take to send a request's
/// headers; `CHATDESK_HTTP_MAX_CONNECTIONS` (default 50000): connections open at once;
/// `CHATDESK_TRUSTED_PROXIES` (none by default): reverse proxies whose `X-Forwarded-For` is believed.
pub fn serve_limits() -> anyhow::Result<chatdesk_api::ServeLimits> {
    let mut limits = chatdesk_api::ServeLimits::default();
    if let Some(timeout) = env_var("CHATDESK_HTTP_HEADER_TIMEOUT") {
        limits.header_read_timeout = chatdesk_core::duration::parse_duration(&timeout)
            .map_err(|error| anyhow::anyhow!("CHATDESK_HTTP_HEADER_TIMEOUT: {error}"))?;
    }
    if let Some(connections) = positive("CHATDESK_HTTP_MAX_CONNECTIONS")? {
        limits.max_connections = connections;
    }
    if let Some(proxies) = env_var("CHATDESK_TRUSTED_PROXIES") {
        limits.trusted_proxies =
            proxies.parse().map_err(|error| anyhow::anyhow!("CHATDESK_TRUSTED_PROXIES: {error}"))?;
    }
    Ok(limits)
}

/// `CHATDESK_OUTBOUND_ALLOW`: comma-separated `host:port` or CIDR entries a generic inbox's
/// outbound URL may reach besides public addresses (empty by default).
pub fn outbound_policy() -> anyhow::Result<chatdesk_core::outbound::OutboundPolicy> {
    env_var("CHATDESK_OUTBOUND_ALLOW")
        .unwrap_or_default()
        .parse()
        .map_err(|error| anyhow::anyhow!("CHATDESK_OUTBOUND_ALLOW: {error}"))
}

/// The outbound sender's settings: `CHATDESK_SEND_CONCURRENCY`, `CHATDESK_SEND_MAX_ATTEMPTS`,
/// `CHATDESK_SEND_BACKOFF`, `CHATDESK_SEND_TIMEOUT`, `CHATDESK_SEND_LIMITS`,
/// `CHATDESK_OUTBOUND_ALLOW` and the providers' base URLs (`CHATDESK_WHATSAPP_API_URL`,
/// `CHATDESK_WHATSAPP_API_VERSION`, `CHATDESK_TELEGRAM_API_URL`).
pub fn sender_settings() -> anyhow::Result<chatdesk_sender::SenderSettings> {
    let mut settings = chatdesk_sender::SenderSettings { outbound: outbound_policy()?, ..Default::default() };
    if let Some(concurrency) = positive("CHATDESK_SEND_CONCURRENCY")? {
        settings.concurrency = concurrency;
    }
    if let Some(attempts) = positive("CHATDESK_SEND_MAX_ATTEMPTS")? {
        settings.max_attempts = attempts;
    }
    if let Some(backoff) = duration("CHATDESK_SEND_BACKOFF")? {
        settings.backoff = backoff;
    }
    if let Some(timeout) = duration("CHATDESK_SEND_TIMEOUT")? {
        if timeout.is_zero() {
            anyhow::bail!("CHATDESK_SEND_TIMEOUT must be longer than 0");
        }
        settings.timeout = timeout;
    }
    if let Some(limits) = env_var("CHATDESK_SEND_LIMITS") {
        settings.limits = limits.parse().map_err(|error| anyhow::anyhow!("CHATDESK_SEND_LIMITS: {error}"))?;
    }
    if let Some(url) = base_url("CHATDESK_WHATSAPP_API_URL")? {
        settings.endpoints.whatsapp = url;
    }
    if let Some(version) = env_var("CHATDESK_WHATSAPP_API_VERSION") {
        if !version.starts_with('v') || version.contains('/') {
            anyhow::bail!("CHATDESK_WHATSAPP_API_VERSION {version:?}: expected a Graph API version such as v21.0");
        }
        settings.endpoints.whatsapp_version = version;
    }
    if let Some(url) = base_url("CHATDESK_TELEGRAM_API_URL")? {
        settings.endpoints.telegram = url;
    }
    Ok(settings)
}

/// A comma-separated list of words, upper-cased (`CHATDESK_OPT_OUT_WORDS`, `CHATDESK_OPT_IN_WORDS`).
fn words(name: &str) -> anyhow::Result<Option<Vec<String>>> {
    let Some(value) = env_var(name) else { return Ok(None) };
    let words: Vec<String> =
        value.split(',').map(str::trim).filter(|word| !word.is_empty()).map(str::to_uppercase).collect();
    if words.iter().any(|word| word.chars().count() > 64) {
        anyhow::bail!("{name}: a word may have at most 64 characters");
    }
    Ok(Some(words))
}

/// What the writer does beyond storing: `CHATDESK_OPT_OUT_WORDS`, `CHATDESK_OPT_IN_WORDS`,
/// `CHATDESK_CAMPAIGN_DEFER`.
pub fn writer_rules() -> anyhow::Result<chatdesk_store::writer::Rules> {
    let mut rules = chatdesk_store::writer::Rules::default();
    if let Some(words) = words("CHATDESK_OPT_OUT_WORDS")? {
        rules.opt_out_words = words;
    }
    if let Some(words) = words("CHATDESK_OPT_IN_WORDS")? {
        rules.opt_in_words = words;
    }
    if let Some(defer) = duration("CHATDESK_CAMPAIGN_DEFER")? {
        if defer.is_zero() {
            anyhow::bail!("CHATDESK_CAMPAIGN_DEFER must be longer than 0");
        }
        rules.defer = defer;
    }
    Ok(rules)
}

/// The broadcaster's settings: `CHATDESK_BROADCAST_CAMPAIGNS` (campaigns one process runs).
pub fn broadcast_settings() -> anyhow::Result<chatdesk_broadcast::BroadcastSettings> {
    let mut settings = chatdesk_broadcast::BroadcastSettings::default();
    if let Some(campaigns) = positive("CHATDESK_BROADCAST_CAMPAIGNS")? {
        settings.max_campaigns = campaigns;
    }
    Ok(settings)
}

/// The bot's settings: `CHATDESK_AUTOREPLY_CONCURRENCY` (conversations one process answers at
/// once), `CHATDESK_AUTOREPLY_DAILY_CALLS` and `CHATDESK_AUTOREPLY_DAILY_TOKENS` (each tenant's
/// daily model budget; 0: none), `CHATDESK_FLOWS` (the dialog-flow directory) and
/// `CHATDESK_OUTBOUND_ALLOW` (where model endpoints may be).
pub fn autoreply_settings() -> anyhow::Result<chatdesk_autoreply::AutoReplySettings> {
    let mut settings = chatdesk_autoreply::AutoReplySettings {
        policy: outbound_policy()?,
        flows: Arc::new(load_flows(None)?),
        ..Default::default()
    };
    if let Some(concurrency) = positive("CHATDESK_AUTOREPLY_CONCURRENCY")? {
        settings.concurrency = concurrency;
    }
    for (name, limit) in [
        ("CHATDESK_AUTOREPLY_DAILY_CALLS", &mut settings.limits.daily_calls),
        ("CHATDESK_AUTOREPLY_DAILY_TOKENS", &mut settings.limits.daily_tokens),
    ] {
        if let Some(raw) = env_var(name) {
            *limit =
                raw.trim().parse().with_context(|| format!("{name} {raw:?}: expected a whole number (0: no limit)"))?;
        }
    }
    Ok(settings)
}

/// E-mail notifications: on when `CHATDESK_SMTP_URL` is set (`smtp://user:password@host:587`,
/// `smtps://…` for TLS from the start). `CHATDESK_SMTP_FROM` (the sender mailbox),
/// `CHATDESK_PUBLIC_URL` (where e-mailed links point, default `http://127.0.0.1:8080`),
/// `CHATDESK_NOTIFY_DELAY` (an agent's first notification waits this long for others to join it,
/// default 1m), `CHATDESK_NOTIFY_INTERVAL` (at most one e-mail per recipient per this long,
/// default 5m); a visitor's reply waits for the widget's standby window.
pub fn notify_settings(
    ingress: &chatdesk_api::ingress::IngressSettings,
) -> anyhow::Result<Option<chatdesk_notify::NotifySettings>> {
    let Some(url) = env_var("CHATDESK_SMTP_URL") else { return Ok(None) };
    let mut settings = chatdesk_notify::NotifySettings::new(url.trim());
    if let Some(from) = env_var("CHATDESK_SMTP_FROM") {
        settings.from = from.trim().to_owned();
    }
    if let Some(public) = env_var("CHATDESK_PUBLIC_URL") {
        let public = public.trim();
        if !(public.starts_with("http://") || public.starts_with("https://")) {
            anyhow::bail!("CHATDESK_PUBLIC_URL {public:?}: expected an http:// or https:// URL");
        }
        settings.public_url = public.to_owned();
    }
    if let Some(delay) = duration("CHATDESK_NOTIFY_DELAY")? {
        settings.delay = delay;
    }
    if let Some(interval) = duration("CHATDESK_NOTIFY_INTERVAL")? {
        settings.interval = interval;
    }
    settings.visitor_delay = ingress.widget_standby;
    Ok(Some(settings))
}

/// Loads dialog flows: the given directory, else `CHATDESK_FLOWS`, else `./flows` when it
/// exists, else the built-in order flow. Any problem in any file stops the start, listing all.
pub fn load_flows(dir: Option<&Path>) -> anyhow::Result<chatdesk_autoreply::Flows> {
    let configured = dir.map(Path::to_path_buf).or_else(|| env_var("CHATDESK_FLOWS").map(PathBuf::from));
    let dir = match configured {
        Some(dir) => dir,
        None if Path::new("flows").is_dir() => PathBuf::from("flows"),
        None => return Ok(chatdesk_autoreply::Flows::builtin()),
    };
    chatdesk_autoreply::Flows::load_dir(&dir).map_err(|errors| anyhow::anyhow!("{errors}"))
}

/// `CHATDESK_JWT_SECRET`: the key agent tokens are signed with.
pub fn jwt_secret() -> Option<Secret> {
    env_var("CHATDESK_JWT_SECRET").map(Secret::new)
}

/// `CHATDESK_KEY_PREFIX` (default `chatdesk`): isolates deployments that share one Redis.
pub fn key_scheme() -> anyhow::Result<KeyScheme> {
    let prefix = env_var("CHATDESK_KEY_PREFIX").unwrap_or_else(|| "chatdesk".to_owned());
    KeyScheme::new(prefix).map_err(|reason| anyhow::anyhow!("CHATDESK_KEY_PREFIX: {reason}"))
}

/// `CHATDESK_NODE_ID` (default: the host name) names this process's consumers, so it must be
/// unique among running processes; keeping it stable across restarts lets a restarted process
/// pick up its own unfinished entries at once instead of waiting for another to claim them.
pub fn node_id() -> anyhow::Result<String> {
    let node = env_var("CHATDESK_NODE_ID")
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|name| name.trim().to_owned()))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let valid =
        node.len() <= 64 && node.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if !valid {
        anyhow::bail!("CHATDESK_NODE_ID {node:?}: use at most 64 letters, digits, '-' or '_'");
    }
    Ok(node)
}

/// Loads streams.toml: the given file, else `./streams.toml`, else the built-in copy.
pub fn load_streams(file: Option<&Path>) -> anyhow::Result<(StreamsConfig, String)> {
    if let Some(file) = file {
        let name = file.display().to_string();
        return Ok((StreamsConfig::from_file(&name)?, name));
    }
    if Path::new("streams.toml").exists() {
        return Ok((StreamsConfig::from_file("streams.toml")?, "streams.toml".to_owned()));
    }
    Ok((
        StreamsConfig::from_toml_str("(built-in streams.toml)", BUILTIN_STREAMS)?,
        "(built-in streams.toml)".to_owned(),
    ))
}

/// Everything a running process shares.
pub struct Runtime {
    pub http: SocketAddr,
    pub redis: RedisClient,
    pub db: chatdesk_store::Pool,
    pub metrics: PrometheusHandle,
    pub streams: Arc<StreamsConfig>,
    pub keys: KeyScheme,
    pub connector: RedisConnector,
    pub node_id: String,
    pub token_key: chatdesk_api::auth::TokenKey,
    pub ingress: chatdesk_api::ingress::IngressSettings,
    pub gateway: chatdesk_gateway::GatewaySettings,
    pub sender: chatdesk_sender::SenderSettings,
    pub writer: chatdesk_store::writer::Rules,
    pub broadcast: chatdesk_broadcast::BroadcastSettings,
    pub autoreply: chatdesk_autoreply::AutoReplySettings,
    /// E-mail notifications, when SMTP is configured.
    pub notify: Option<chatdesk_notify::NotifySettings>,
    pub serve: chatdesk_api::ServeLimits,
}

impl Runtime {
    /// A consumer of every partition of `stream`, named after this node.
    /// The operator tools over this process's connections.
    pub fn ops(&self) -> chatdesk_ops::Ops {
        chatdesk_ops::Ops {
            redis: self.redis.clone(),
            db: Some(self.db.clone()),
            keys: self.keys.clone(),
            streams: self.streams.clone(),
        }
    }

    pub fn consumer_options(&self, stream: &chatdesk_core::StreamSettings) -> chatdesk_streams::ConsumerOptions {
        chatdesk_streams::ConsumerOptions::new(self.connector.clone(), self.keys.clone(), stream, self.node_id.clone())
    }

    /// Connects to Redis and PostgreSQL, applies migrations and creates the durable consumer
    /// groups (so entries appended before a consumer first starts are kept for it).
    pub async fn connect(
        http: SocketAddr,
        redis_url: &Secret,
        database_url: &Secret,
        streams_file: Option<&PathBuf>,
        jwt_secret: &Secret,
        metrics: PrometheusHandle,
    ) -> anyhow::Result<Self> {
        let token_key = chatdesk_api::auth::TokenKey::new(jwt_secret.expose().as_bytes())
            .map_err(|reason| anyhow::anyhow!("CHATDESK_JWT_SECRET {reason}"))?;
        let (streams, source) = load_streams(streams_file.map(PathBuf::as_path))?;
        tracing::info!(source, families = streams.streams.len(), "stream configuration loaded");
        let keys = key_scheme()?;
        let node_id = node_id()?;
        let ingress = ingress_settings()?;
        let gateway = gateway_settings()?;
        let sender = sender_settings()?;
        let writer = writer_rules()?;
        let broadcast = broadcast_settings()?;
        let autoreply = autoreply_settings()?;
        let notify = notify_settings(&ingress)?;
        let serve = serve_limits()?;
        let connector = RedisConnector::new(RedisSettings::new(redis_url.expose())).with_context(|| {
            format!("REDIS_URL {} is not a valid Redis URL", chatdesk_streams::connection::redact(redis_url.expose()))
        })?;
        let redis = connector.shared().await.with_context(|| {
            format!("cannot connect to Redis at {}", chatdesk_streams::connection::redact(redis_url.expose()))
        })?;
        let db = chatdesk_store::connect(database_url.expose(), 16).await?;
        chatdesk_store::migrate(&db).await?;
        tracing::info!("database migrations applied");
        chatdesk_streams::runtime::ensure_durable_groups(&redis, &keys, &streams).await?;
        Ok(Self {
            http,
            redis,
            db,
            metrics,
            streams: Arc::new(streams),
            keys,
            connector,
            node_id,
            token_key,
            ingress,
            gateway,
            sender,
            writer,
            broadcast,
            autoreply,
            notify,
            serve,
        })
    }

    /// Closes connections before the servers behind them go away.
    pub async fn close(self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.redis.quit()).await;
        self.db.close().await;
    }
}
