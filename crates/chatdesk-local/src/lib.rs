//! Private database servers started from the system's own binaries: a Redis (optionally with
//! AOF `appendfsync always`), a local 3-master Redis Cluster, and a PostgreSQL. `chatdesk up`
//! uses them when no `REDIS_URL` / `DATABASE_URL` is given, and the test harness uses them so
//! every test binary gets its own servers on free loopback ports, which fault tests can kill and
//! restart.
//!
//! - [`binaries`]: finding `redis-server`, `initdb`, … and saying exactly what to install.
//! - [`process`]: a supervised child process with its log, signals and stale-pid handling.
//! - [`redis`]: [`RedisServer`] and [`RedisCluster`].
//! - [`postgres`], with [`PostgresServer`].
//!
//! Servers are children of the calling process and are killed when their handle is dropped, so
//! a crashed test leaves nothing listening. Call `stop` for a clean shutdown.

pub mod binaries;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod resp;

pub use binaries::MissingBinary;
pub use postgres::{PostgresOptions, PostgresServer};
pub use redis::{RedisCluster, RedisOptions, RedisPersistence, RedisServer};

use std::path::PathBuf;

/// Everything that can go wrong starting or stopping a private server.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    MissingBinary(#[from] MissingBinary),
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{server} did not become ready within {seconds}s; last lines of {log}:\n{tail}")]
    NotReady { server: &'static str, seconds: u64, log: PathBuf, tail: String },
    #[error("{server} exited during start-up ({status}); last lines of {log}:\n{tail}")]
    ExitedEarly { server: &'static str, status: String, log: PathBuf, tail: String },
    #[error("{command} failed ({status}): {output}")]
    CommandFailed { command: String, status: String, output: String },
    #[error(
        "running as root, but there is no `postgres` system user to run PostgreSQL as; install the postgresql package or run as an ordinary user"
    )]
    NoPostgresUser,
    #[error("no free loopback port found")]
    NoFreePort,
}
