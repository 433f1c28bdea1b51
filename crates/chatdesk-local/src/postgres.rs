//! A private PostgreSQL server: `initdb` on first start, reused afterwards.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::LocalError;
use crate::binaries::postgres_program;
use crate::ports::{free_port, is_free};
use crate::process::{RunAs, ServerProcess, create_dir, run, run_with_env, stop_stale, wait_until_ready};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The cluster's data directory; created by `initdb` when it does not exist yet.
    pub data_dir: PathBuf,
    pub port: Option<u16>,
    /// `false` turns off fsync and friends: fine for throwaway test servers, never for data
    /// that must survive a power cut.
    pub durable: bool,
    /// Database created on start (if missing) and named by [`PostgresServer::url`].
    pub database: String,
    /// A directory to keep one freshly `initdb`-ed cluster in and copy from, which is much
    /// faster than running `initdb` for every throwaway server.
    pub template_cache: Option<PathBuf>,
    /// The superuser's password for a cluster this start creates (`scram-sha-256` on loopback
    /// instead of `trust`), and the one put into [`PostgresServer::url`]. A cluster that already
    /// exists keeps the authentication it was made with.
    pub password: Option<String>,
}

impl PostgresOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            port: None,
            durable: true,
            database: "chatdesk".into(),
            template_cache: None,
            password: None,
        }
    }
}

pub struct PostgresServer {
    options: PostgresOptions,
    port: u16,
    run_as: Option<RunAs>,
    process: Option<ServerProcess>,
}

/// PostgreSQL refuses to run as root: when we are root, run it as the `postgres` system user.
fn run_as() -> Result<Option<RunAs>, LocalError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse::<u32>().ok());
    if euid != Some(0) {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3)
                .then(|| Some(RunAs { uid: fields[2].parse().ok()?, gid: fields[3].parse().ok()? }))
                .flatten()
        })
        .map(Some)
        .ok_or(LocalError::NoPostgresUser)
}

/// Whether the user PostgreSQL runs as can reach `path` (enter every directory above it). As
/// root the server runs as `postgres`, which cannot pass through, say, root's `0700` home.
pub fn server_can_reach(path: &Path) -> Result<bool, LocalError> {
    use std::os::unix::fs::MetadataExt;
    let Some(run_as) = run_as()? else { return Ok(true) };
    for ancestor in path.ancestors().skip(1) {
        let Ok(metadata) = std::fs::metadata(ancestor) else { continue };
        let mode = metadata.mode();
        let enters = if metadata.uid() == run_as.uid {
            mode & 0o100 != 0
        } else if metadata.gid() == run_as.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !enters {
            return Ok(false);
        }
    }
    Ok(true)
}

fn chown_tree(path: &Path, run_as: RunAs) -> Result<(), LocalError> {
    let io = |source| LocalError::Io { action: "cannot change owner of", path: path.to_path_buf(), source };
    std::os::unix::fs::chown(path, Some(run_as.uid), Some(run_as.gid)).map_err(io)?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io)? {
            chown_tree(&entry.map_err(io)?.path(), run_as)?;
        }
    }
    Ok(())
}

async fn initdb(
    data_dir: &Path,
    durable: bool,
    password: Option<&str>,
    run_as: Option<RunAs>,
) -> Result<(), LocalError> {
    let parent = data_dir.parent().unwrap_or(Path::new("/"));
    create_dir(parent)?;
    std::fs::create_dir(data_dir).map_err(|source| LocalError::Io {
        action: "cannot create",
        path: data_dir.to_path_buf(),
        source,
    })?;
    if let Some(run_as) = run_as {
        chown_tree(data_dir, run_as)?;
    }
    let method = if password.is_some() { "scram-sha-256" } else { "trust" };
    let mut args: Vec<String> =
        ["-D", &data_dir.display().to_string(), "-A", method, "-U", "postgres", "-E", "UTF8", "--no-locale"]
            .iter()
            .map(|arg| arg.to_string())
            .collect();
    if !durable {
        args.push("--no-sync".into());
    }
    // initdb reads the password from a file: private, beside the data directory, readable by
    // the server's user, and removed straight after.
    let password_file = parent.join(format!(".initdb-password-{}", std::process::id()));
    if let Some(password) = password {
        crate::process::write_private_file(&password_file, password)?;
        if let Some(run_as) = run_as {
            chown_tree(&password_file, run_as)?;
        }
        args.push(format!("--pwfile={}", password_file.display()));
    }
    let result = run(&postgres_program("initdb")?, &args, run_as).await;
    if password.is_some() {
        let _ = std::fs::remove_file(&password_file);
    }
    result.map(drop)
}

impl PostgresServer {
    pub async fn start(options: PostgresOptions) -> Result<Self, LocalError> {
        let run_as = run_as()?;
        if !options.data_dir.join("PG_VERSION").exists() {
            match &options.template_cache {
                Some(template) => copy_from_template(template, &options.data_dir, run_as).await?,
                None => initdb(&options.data_dir, options.durable, options.password.as_deref(), run_as).await?,
            }
        }
        stop_stale(&options.data_dir.join("postmaster.pid"), "INT", "postgres").await;
        let mut last_error = None;
        for attempt in 0..3 {
            let port = match options.port {
                Some(port) if attempt == 0 && is_free(port) => port,
                _ => free_port()?,
            };
            let mut server = Self { options: options.clone(), port, run_as, process: None };
            match server.spawn().await {
                Ok(()) => {
                    server.ensure_database(&options.database).await?;
                    return Ok(server);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.expect("three attempts were made"))
    }

    async fn spawn(&mut self) -> Result<(), LocalError> {
        let program = postgres_program("postgres")?;
        let mut args: Vec<String> = [
            "-D",
            &self.options.data_dir.display().to_string(),
            "-p",
            &self.port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        if !self.options.durable {
            for setting in ["fsync=off", "synchronous_commit=off", "full_page_writes=off"] {
                args.extend(["-c".to_owned(), setting.to_owned()]);
            }
        }
        let log = self.log_path();
        let mut process = ServerProcess::spawn("postgres", &program, &args, &log, self.run_as)?;
        let isready = postgres_program("pg_isready")?;
        let ready_args: Vec<String> =
            vec!["-h".into(), "127.0.0.1".into(), "-p".into(), self.port.to_string(), "-q".into()];
        let ready = wait_until_ready(&mut process, READY_TIMEOUT, || {
            let (isready, ready_args) = (isready.clone(), ready_args.clone());
            async move { run(&isready, &ready_args, None).await.is_ok() }
        })
        .await;
        if let Err(error) = ready {
            process.kill().await;
            return Err(error);
        }
        tracing::debug!(port = self.port, data_dir = %self.options.data_dir.display(), "postgres ready");
        self.process = Some(process);
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        let name =
            format!("{}.log", self.options.data_dir.file_name().and_then(|name| name.to_str()).unwrap_or("postgres"));
        self.options.data_dir.parent().unwrap_or(Path::new(".")).join(name)
    }

    /// Creates `database` unless it exists.
    pub async fn ensure_database(&self, database: &str) -> Result<(), LocalError> {
        let args: Vec<String> = vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
            database.into(),
        ];
        let env: Vec<(&str, &str)> =
            self.options.password.as_deref().map(|password| ("PGPASSWORD", password)).into_iter().collect();
        match run_with_env(&postgres_program("createdb")?, &args, None, &env).await {
            Ok(_) => Ok(()),
            Err(LocalError::CommandFailed { output, .. }) if output.contains("already exists") => Ok(()),
            Err(error) => Err(error),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the configured database, as the superuser `postgres` (with its password when there
    /// is one: treat it as a secret; else trust authentication on loopback only).
    pub fn url(&self) -> String {
        self.url_for(&self.options.database)
    }

    pub fn url_for(&self, database: &str) -> String {
        match &self.options.password {
            Some(password) => format!("postgres://postgres:{password}@127.0.0.1:{}/{database}", self.port),
            None => format!("postgres://postgres@127.0.0.1:{}/{database}", self.port),
        }
    }

    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// Fast shutdown (SIGINT): open sessions are ended, everything committed is kept.
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate("INT", STOP_GRACE).await;
        }
    }

    pub async fn restart(&mut self) -> Result<(), LocalError> {
        self.stop().await;
        self.spawn().await
    }
}

/// Copies a cached, freshly initialised cluster; creates the cache first if needed. The cache is
/// built in a private directory and renamed into place, so concurrent test processes never see a
/// half-written one.
async fn copy_from_template(template: &Path, data_dir: &Path, run_as: Option<RunAs>) -> Result<(), LocalError> {
    if !template.join("PG_VERSION").exists() {
        let building = template.with_extension(format!("building-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&building);
        initdb(&building, false, None, run_as).await?;
        if std::fs::rename(&building, template).is_err() {
            let _ = std::fs::remove_dir_all(&building);
        }
    }
    create_dir(data_dir.parent().unwrap_or(Path::new("/")))?;
    let args = vec!["-a".to_owned(), template.display().to_string(), data_dir.display().to_string()];
    run(Path::new("cp"), &args, None).await?;
    Ok(())
}
