//! Locating server binaries. Debian installs PostgreSQL's server programs under
//! `/usr/lib/postgresql/<version>/bin`, off the `PATH`, so that directory is searched too.

use std::path::{Path, PathBuf};

/// A program chatdesk needs is not installed; the message says what to install.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "`{program}` not found on PATH{extra}; install it with `apt-get install {package}` (or run ./scripts/install-deps, which does so as root)"
)]
pub struct MissingBinary {
    pub program: String,
    pub package: &'static str,
    extra: String,
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// `redis-server`, `redis-cli`, `redis-benchmark` (all in Debian's `redis-server`/`redis-tools`).
pub fn redis_program(program: &str) -> Result<PathBuf, MissingBinary> {
    on_path(program).ok_or_else(|| MissingBinary {
        program: program.to_owned(),
        package: if program == "redis-server" { "redis-server" } else { "redis-tools" },
        extra: String::new(),
    })
}

/// The newest `/usr/lib/postgresql/<version>/bin`, if any.
fn debian_postgres_bin_dir() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    let mut versions: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            is_executable(&bin.join("postgres")).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A PostgreSQL server program (`initdb`, `postgres`, `pg_isready`, `createdb`). The server's
/// own directory wins over `PATH` so that all programs come from one version.
pub fn postgres_program(program: &str) -> Result<PathBuf, MissingBinary> {
    if let Some(dir) = debian_postgres_bin_dir() {
        let candidate = dir.join(program);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    on_path(program).ok_or_else(|| MissingBinary {
        program: program.to_owned(),
        package: "postgresql",
        extra: " or in /usr/lib/postgresql/*/bin".to_owned(),
    })
}
