//! Private servers for `chatdesk up`: when REDIS_URL or DATABASE_URL is not set, a Redis (AOF,
//! `appendfsync always`, so every acknowledged append survives a crash) and a PostgreSQL are
//! started from the system's binaries under the data directory. Their URLs are written to
//! `<data-dir>/servers.env` so other tools (or a `chatdesk serve` in another terminal) can
//! reach them, and the same ports are preferred on the next start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chatdesk_local::{PostgresOptions, PostgresServer, RedisOptions, RedisPersistence, RedisServer};

use crate::settings::Secret;

pub struct PrivateServers {
    redis: Option<RedisServer>,
    postgres: Option<PostgresServer>,
}

fn previous_ports(file: &Path) -> HashMap<String, u16> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (name, url) = line.split_once('=')?;
            let port = url.rsplit(':').next()?.split('/').next()?.parse().ok()?;
            Some((name.to_owned(), port))
        })
        .collect()
}

fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.is_absolute() {
        return Ok(dir.to_path_buf());
    }
    Ok(std::env::current_dir().context("cannot read the current directory")?.join(dir))
}

impl PrivateServers {
    /// Starts what is missing; returns the URLs to use.
    pub async fn start(
        data_dir: &Path,
        redis_url: Option<Secret>,
        database_url: Option<Secret>,
    ) -> anyhow::Result<(Self, Secret, Secret)> {
        let data_dir = absolute(data_dir)?;
        create_data_dir(&data_dir)?;
        let env_file = data_dir.join("servers.env");
        let previous = previous_ports(&env_file);
        let mut servers = Self { redis: None, postgres: None };

        let redis_url = match redis_url {
            Some(url) => url,
            None => {
                // A new password every start: only this process and servers.env know it.
                let mut options = RedisOptions::new(data_dir.join("redis"))
                    .persistence(RedisPersistence::AofAlways)
                    .password(random_password());
                if let Some(port) = previous.get("REDIS_URL") {
                    options = options.port(*port);
                }
                let server = RedisServer::start(options).await.context("cannot start the private Redis")?;
                tracing::info!(port = server.port(), dir = %server.dir().display(), "private Redis running");
                let url = server.url();
                servers.redis = Some(server);
                Secret::new(url)
            }
        };
        let database_url = match database_url {
            Some(url) => url,
            None => {
                let mut options = PostgresOptions::new(postgres_dir(&data_dir)?);
                options.port = previous.get("DATABASE_URL").copied();
                options.password = postgres_password(&data_dir)?;
                let server = match PostgresServer::start(options).await {
                    Ok(server) => server,
                    Err(error) => {
                        servers.stop().await;
                        return Err(error).context("cannot start the private PostgreSQL");
                    }
                };
                tracing::info!(port = server.port(), dir = %data_dir.join("postgres").display(), "private PostgreSQL running");
                let url = server.url();
                servers.postgres = Some(server);
                Secret::new(url)
            }
        };
        if servers.redis.is_some() || servers.postgres.is_some() {
            let mut text = String::from("# Written by `chatdesk up`: the private servers of this data directory.\n");
            text.push_str(&format!("REDIS_URL={}\nDATABASE_URL={}\n", redis_url.expose(), database_url.expose()));
            write_private(&env_file, &text)?;
        }
        Ok((servers, redis_url, database_url))
    }

    /// Clean shutdown of whatever was started.
    pub async fn stop(&mut self) {
        if let Some(mut redis) = self.redis.take() {
            redis.stop().await;
            tracing::info!("private Redis stopped");
        }
        if let Some(mut postgres) = self.postgres.take() {
            postgres.stop().await;
            tracing::info!("private PostgreSQL stopped");
        }
    }
}

/// Where the private PostgreSQL keeps its cluster: `<data-dir>/postgres`, unless the server's
/// user cannot reach it there (as root, PostgreSQL runs as `postgres`, and a data directory in
/// root's home is closed to it). Then the cluster lives under `/var/lib/chatdesk/clusters`, owned
/// by the server's user, and `<data-dir>/postgres` is a link to it.
fn postgres_dir(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join("postgres");
    if dir.is_symlink() {
        return dir.read_link().with_context(|| format!("cannot read the link {}", dir.display()));
    }
    if dir.exists() || chatdesk_local::postgres::server_can_reach(&dir)? {
        return Ok(dir);
    }
    // One cluster per data directory: named after its path.
    let name = format!("{:016x}", fnv1a(data_dir.as_os_str().as_encoded_bytes()));
    let home = Path::new(CLUSTERS_HOME);
    std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        for dir in home.ancestors().take(2) {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .with_context(|| format!("cannot open {} to PostgreSQL's user", dir.display()))?;
        }
    }
    let cluster = home.join(name);
    std::os::unix::fs::symlink(&cluster, &dir)
        .with_context(|| format!("cannot link {} to {}", dir.display(), cluster.display()))?;
    tracing::info!(
        data_dir = %data_dir.display(),
        cluster = %cluster.display(),
        "PostgreSQL's user cannot reach the data directory: its cluster lives in {CLUSTERS_HOME}, linked from the data directory"
    );
    Ok(cluster)
}

const CLUSTERS_HOME: &str = "/var/lib/chatdesk/clusters";

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

fn random_password() -> String {
    // Two v4 UUIDs: 244 random bits, in characters no URL needs to escape.
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// The superuser password of the private PostgreSQL: made (and kept, owner-only) before the
/// cluster is created with it. A cluster made without one keeps trust authentication on loopback.
fn postgres_password(data_dir: &Path) -> anyhow::Result<Option<String>> {
    let file = data_dir.join("postgres-password");
    if let Ok(password) = read_private(&file)?
        && !password.trim().is_empty()
    {
        return Ok(Some(password.trim().to_owned()));
    }
    if data_dir.join("postgres/PG_VERSION").exists() {
        tracing::warn!(
            dir = %data_dir.join("postgres").display(),
            "this PostgreSQL was created without a password (trust on 127.0.0.1): any local user can use it; \
             move the data directory away to have a new one made with a password"
        );
        return Ok(None);
    }
    let password = random_password();
    write_private(&file, &password)?;
    Ok(Some(password))
}

/// The token-signing key of this data directory: generated once and kept (readable only by its
/// owner) so agent tokens stay valid across restarts of `chatdesk up`.
pub fn persistent_jwt_secret(data_dir: &Path) -> anyhow::Result<Secret> {
    create_data_dir(data_dir)?;
    let file = data_dir.join("jwt-secret");
    if let Ok(secret) = read_private(&file)?
        && secret.trim().len() >= 32
    {
        return Ok(Secret::new(secret.trim().to_owned()));
    }
    let secret = chatdesk_api::auth::TokenKey::generate_secret();
    write_private(&file, &secret)?;
    Ok(Secret::new(secret))
}

/// The data directory: others may pass through it (PostgreSQL runs as its own user and must
/// reach its data directory below) but not list or read it.
/// It must be ours: chatdesk keeps its secrets there, and a directory another user owns (or a
/// link they placed) lets them plant a password or a signing key for us to trust.
fn create_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let metadata = std::fs::symlink_metadata(data_dir)
        .with_context(|| format!("cannot read data directory {}", data_dir.display()))?;
    if !metadata.is_dir() || Some(metadata.uid()) != own_uid() {
        anyhow::bail!(
            "the data directory {} is not a directory of this user's (owner uid {}): chatdesk keeps its \
             secrets there; use a directory of your own (--data-dir)",
            data_dir.display(),
            metadata.uid()
        );
    }
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("cannot restrict {}", data_dir.display()))
}

/// This process's user (the owner of its own `/proc` entry).
fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|metadata| metadata.uid())
}

/// A secret file's text, trusted only when it is a plain file of ours that nobody else can
/// read or write. `Ok(Err(_))` when it does not exist yet.
fn read_private(file: &Path) -> anyhow::Result<std::io::Result<String>> {
    use std::os::unix::fs::MetadataExt;
    let metadata = match std::fs::symlink_metadata(file) {
        Ok(metadata) => metadata,
        Err(error) => return Ok(Err(error)),
    };
    if !metadata.is_file() || Some(metadata.uid()) != own_uid() || metadata.mode() & 0o077 != 0 {
        anyhow::bail!(
            "{} must be a file of this user's that only they can read (chmod 600); it is not, so it is \
             not trusted: remove it, or use a data directory of your own",
            file.display()
        );
    }
    Ok(std::fs::read_to_string(file))
}

/// Writes a file only its owner can read, with that mode from its creation (never readable by
/// others, not even for a moment).
fn write_private(file: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut handle = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    // A file made before this mode was used keeps its old one: set it too.
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", file.display()))?;
    handle.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", file.display()))
}
