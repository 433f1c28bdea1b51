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
                let mut options = PostgresOptions::new(data_dir.join("postgres"));
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

fn random_password() -> String {
    // Two v4 UUIDs: 244 random bits, in characters no URL needs to escape.
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// The superuser password of the private PostgreSQL: made (and kept, owner-only) before the
/// cluster is created with it. A cluster made without one keeps trust authentication on loopback.
fn postgres_password(data_dir: &Path) -> anyhow::Result<Option<String>> {
    let file = data_dir.join("postgres-password");
    if let Ok(password) = std::fs::read_to_string(&file)
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
    let file = data_dir.join("jwt-secret");
    if let Ok(secret) = std::fs::read_to_string(&file)
        && secret.trim().len() >= 32
    {
        return Ok(Secret::new(secret.trim().to_owned()));
    }
    create_data_dir(data_dir)?;
    let secret = chatdesk_api::auth::TokenKey::generate_secret();
    write_private(&file, &secret)?;
    Ok(Secret::new(secret))
}

/// The data directory: others may pass through it (PostgreSQL runs as its own user and must
/// reach its data directory below) but not list or read it.
fn create_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("cannot restrict {}", data_dir.display()))
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
