//! A server running as our child process. Its output goes to a log file whose tail is shown when
//! start-up fails. Signals are sent with the system's `kill` program, which keeps this crate free
//! of `unsafe`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::LocalError;

/// A user and group to run a server as (PostgreSQL refuses to run as root).
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

pub struct ServerProcess {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl ServerProcess {
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: &Path,
        run_as: Option<RunAs>,
    ) -> Result<Self, LocalError> {
        let io = |action: &'static str| move |source| LocalError::Io { action, path: log.to_path_buf(), source };
        let log_file = File::options().create(true).append(true).open(log).map_err(io("cannot open log"))?;
        let log_err = log_file.try_clone().map_err(io("cannot open log"))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C in the terminal reaches only chatdesk, which then
            // stops the servers after its own work is finished, in order.
            .process_group(0);
        if let Some(run_as) = run_as {
            command.uid(run_as.uid).gid(run_as.gid);
        }
        let child = command.spawn().map_err(|source| LocalError::Io {
            action: "cannot start",
            path: program.to_path_buf(),
            source,
        })?;
        Ok(Self { name, child, log: log.to_path_buf() })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `Err` with the log tail when the process has already exited.
    pub fn check_running(&mut self) -> Result<(), LocalError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(LocalError::ExitedEarly {
                server: self.name,
                status: status.to_string(),
                log: self.log.clone(),
                tail: log_tail(&self.log),
            }),
            _ => Ok(()),
        }
    }

    pub fn not_ready(&self, seconds: u64) -> LocalError {
        LocalError::NotReady { server: self.name, seconds, log: self.log.clone(), tail: log_tail(&self.log) }
    }

    /// SIGKILL, as a crash would: nothing is flushed.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Sends `signal` (the server's clean-shutdown signal), waits up to `grace`, then kills.
    pub async fn terminate(&mut self, signal: &str, grace: Duration) {
        if let Some(pid) = self.child.id() {
            send_signal(pid, signal);
            if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                return;
            }
            tracing::warn!(server = self.name, pid, "did not stop in time, killing");
        }
        self.kill().await;
    }
}

pub fn send_signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn is_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A server left running by an earlier process that died without stopping it (its pid file is
/// still there and the pid is alive) is asked to stop, so its data directory can be reused.
pub async fn stop_stale(pidfile: &Path, signal: &str, command_fragment: &str) {
    let Ok(text) = std::fs::read_to_string(pidfile) else {
        return;
    };
    let Some(pid) = text.lines().next().and_then(|line| line.trim().parse::<u32>().ok()) else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains(command_fragment) {
        return;
    }
    tracing::warn!(pid, pidfile = %pidfile.display(), "stopping a server left running by an earlier run");
    send_signal(pid, signal);
    for _ in 0..300 {
        if !is_alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send_signal(pid, "KILL");
}

/// Runs a short command to completion; `Err` carries its output when it fails.
pub async fn run(program: &Path, args: &[String], run_as: Option<RunAs>) -> Result<String, LocalError> {
    run_with_env(program, args, run_as, &[]).await
}

/// [`run`] with extra environment variables (a password a client program reads from its
/// environment rather than its command line, which every local user can see).
pub async fn run_with_env(
    program: &Path,
    args: &[String],
    run_as: Option<RunAs>,
    env: &[(&str, &str)],
) -> Result<String, LocalError> {
    let mut command = Command::new(program);
    command.args(args).envs(env.iter().copied()).stdin(Stdio::null());
    if let Some(run_as) = run_as {
        command.uid(run_as.uid).gid(run_as.gid);
    }
    let output = command.output().await.map_err(|source| LocalError::Io {
        action: "cannot run",
        path: program.to_path_buf(),
        source,
    })?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(text)
    } else {
        Err(LocalError::CommandFailed {
            command: format!("{} {}", program.display(), args.join(" ")),
            status: output.status.to_string(),
            output: text.trim().to_owned(),
        })
    }
}

pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Polls `ready` until it answers true, the process exits, or `timeout` passes.
pub async fn wait_until_ready<F, Fut>(
    process: &mut ServerProcess,
    timeout: Duration,
    mut ready: F,
) -> Result<(), LocalError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        process.check_running()?;
        if ready().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(process.not_ready(timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates `dir` (and parents) that other users may pass through but not list (0711), so a
/// server running as another user can reach its own data directory below it.
pub fn create_dir(dir: &Path) -> Result<(), LocalError> {
    create_dir_with_mode(dir, 0o711)
}

/// Creates `dir` (and parents) for its owner alone (0700): data files inside stay private
/// whatever mode the server creates them with.
pub fn create_private_dir(dir: &Path) -> Result<(), LocalError> {
    create_dir_with_mode(dir, 0o700)
}

fn create_dir_with_mode(dir: &Path, mode: u32) -> Result<(), LocalError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|source| LocalError::Io {
        action: "cannot create",
        path: dir.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|source| LocalError::Io {
        action: "cannot set permissions on",
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes a file only its owner can read, with that mode from its creation.
pub fn write_private_file(file: &Path, text: &str) -> Result<(), LocalError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| LocalError::Io { action: "cannot write", path: file.to_path_buf(), source };
    let mut handle =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(file).map_err(io)?;
    // An older file keeps its mode on open: make sure of it.
    handle.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    handle.write_all(text.as_bytes()).map_err(io)
}
