//! Private Redis servers and a local Redis Cluster.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::binaries::redis_program;
use crate::ports::{free_cluster_port, free_port, is_free};
use crate::process::{ServerProcess, create_private_dir, run, stop_stale, wait_until_ready};
use crate::{LocalError, resp};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(20);

/// What survives a crash of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisPersistence {
    /// Nothing is written to disk (fast; for tests that do not restart Redis).
    None,
    /// AOF with `appendfsync always`: every acknowledged write survives a SIGKILL.
    AofAlways,
    /// AOF with `appendfsync everysec`: at most about a second of writes is lost on a crash.
    AofEverySec,
}

#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Data directory (AOF, pid file, log). Created when missing.
    pub dir: PathBuf,
    /// Port to listen on; a free one when `None`, or when the preferred one is taken.
    pub port: Option<u16>,
    pub persistence: RedisPersistence,
    /// Clients must `AUTH` with it (`requirepass`, kept in a private config file rather than on
    /// the command line, where every local user could read it).
    pub password: Option<String>,
    cluster: bool,
}

impl RedisOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), port: None, persistence: RedisPersistence::None, password: None, cluster: false }
    }

    pub fn persistence(mut self, persistence: RedisPersistence) -> Self {
        self.persistence = persistence;
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }
}

pub struct RedisServer {
    options: RedisOptions,
    port: u16,
    process: Option<ServerProcess>,
}

impl RedisServer {
    /// Starts a server and waits until it answers PING (after replaying its AOF, if any).
    pub async fn start(options: RedisOptions) -> Result<Self, LocalError> {
        // Redis runs as this user and writes its AOF with its own umask: the directory keeps it
        // private.
        create_private_dir(&options.dir)?;
        stop_stale(&options.dir.join("redis.pid"), "TERM", "redis-server").await;
        let mut last_error = None;
        for attempt in 0..3 {
            let port = match options.port {
                Some(port) if attempt == 0 && is_free(port) => port,
                _ if options.cluster => free_cluster_port()?,
                _ => free_port()?,
            };
            let mut server = Self { options: options.clone(), port, process: None };
            match server.spawn().await {
                Ok(()) => return Ok(server),
                // Another process may have taken the port between our check and the bind.
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.expect("three attempts were made"))
    }

    async fn spawn(&mut self) -> Result<(), LocalError> {
        let program = redis_program("redis-server")?;
        let dir = self.options.dir.display().to_string();
        let mut args: Vec<String> = Vec::new();
        if let Some(password) = &self.options.password {
            // A config file must come first on redis-server's command line.
            let config = self.options.dir.join("redis.conf");
            crate::process::write_private_file(&config, &format!("requirepass \"{password}\"\n"))?;
            args.push(config.display().to_string());
        }
        args.extend(
            [
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                &dir,
                "--pidfile",
                &format!("{dir}/redis.pid"),
                "--daemonize",
                "no",
                "--save",
                "",
                "--protected-mode",
                "no",
            ]
            .iter()
            .map(|arg| arg.to_string()),
        );
        let aof: &[&str] = match self.options.persistence {
            RedisPersistence::None => &["--appendonly", "no"],
            RedisPersistence::AofAlways => &["--appendonly", "yes", "--appendfsync", "always"],
            RedisPersistence::AofEverySec => &["--appendonly", "yes", "--appendfsync", "everysec"],
        };
        args.extend(aof.iter().map(|arg| arg.to_string()));
        if self.options.cluster {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("{dir}/nodes.conf"),
                    "--cluster-node-timeout",
                    "5000",
                ]
                .iter()
                .map(|arg| arg.to_string()),
            );
        }
        let log = self.options.dir.join("redis.log");
        let mut process = ServerProcess::spawn("redis-server", &program, &args, &log, None)?;
        let port = self.port;
        let password = self.options.password.clone();
        let ready =
            wait_until_ready(&mut process, READY_TIMEOUT, || {
                let password = password.clone();
                async move {
                    resp::command_as(port, password.as_deref(), &["PING"]).await.is_ok_and(|reply| reply == "PONG")
                }
            })
            .await;
        if let Err(error) = ready {
            process.kill().await;
            return Err(error);
        }
        tracing::debug!(port, dir = %self.options.dir.display(), "redis-server ready");
        self.process = Some(process);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// With the password, when there is one: treat it as a secret.
    pub fn url(&self) -> String {
        match &self.options.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// SIGKILL: what survives is what the persistence setting guarantees.
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// Clean shutdown (SIGTERM: Redis flushes its AOF and exits).
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate("TERM", STOP_GRACE).await;
        }
    }

    /// Starts the server again on the same port and data directory after `kill` or `stop`.
    pub async fn restart(&mut self) -> Result<(), LocalError> {
        self.stop().await;
        self.spawn().await
    }
}

/// A local Redis Cluster of `masters` cluster-enabled servers joined with
/// `redis-cli --cluster create`, no replicas.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start(base_dir: &Path, masters: usize) -> Result<Self, LocalError> {
        Self::start_with(base_dir, masters, RedisPersistence::None).await
    }

    /// [`Self::start`] with each node's persistence (`AofAlways` for a cluster whose nodes are
    /// killed and restarted without losing an acknowledged write).
    pub async fn start_with(
        base_dir: &Path,
        masters: usize,
        persistence: RedisPersistence,
    ) -> Result<Self, LocalError> {
        let mut nodes = Vec::with_capacity(masters);
        for index in 0..masters {
            let mut options = RedisOptions::new(base_dir.join(format!("node-{index}"))).persistence(persistence);
            options.cluster = true;
            nodes.push(RedisServer::start(options).await?);
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|node| format!("127.0.0.1:{}", node.port())));
        args.extend(["--cluster-replicas".into(), "0".into(), "--cluster-yes".into()]);
        run(&redis_program("redis-cli")?, &args, None).await?;
        // `--cluster create` returns once slots are assigned; every node must agree before
        // clients are routed reliably.
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        for node in &nodes {
            loop {
                let info = resp::command(node.port(), &["CLUSTER", "INFO"]).await.unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(LocalError::NotReady {
                        server: "redis cluster",
                        seconds: READY_TIMEOUT.as_secs(),
                        log: node.dir().join("redis.log"),
                        tail: info,
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(Self { nodes })
    }

    /// A `redis-cluster://` URL naming every node, as fred expects.
    pub fn url(&self) -> String {
        let first = &self.nodes[0];
        let others: Vec<String> =
            self.nodes[1..].iter().map(|node| format!("node=127.0.0.1:{}", node.port())).collect();
        format!("redis-cluster://127.0.0.1:{}?{}", first.port(), others.join("&"))
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// One node, to kill and restart (it rejoins with its own cluster configuration and AOF).
    pub fn node_mut(&mut self, index: usize) -> Option<&mut RedisServer> {
        self.nodes.get_mut(index)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub async fn stop(&mut self) {
        for node in &mut self.nodes {
            node.stop().await;
        }
    }
}
