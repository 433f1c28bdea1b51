//! The test harness: real servers for every test, never mocks.
//!
//! - [`redis`] gives a test a Redis: the one named by `REDIS_URL` when set, otherwise a private
//!   `redis-server` on a free loopback port with a throwaway directory. [`private_redis`] always
//!   starts a private one, for fault tests that kill and restart it. [`redis_cluster`] starts a
//!   local 3-master Redis Cluster.
//! - [`postgres`] gives a test a fresh, empty database: a new database on `DATABASE_URL`'s
//!   server when set, otherwise a private PostgreSQL.
//! - [`unique_prefix`] isolates Redis keys of tests sharing one server.
//! - [`free_port`] and [`free_addr`] give a server a test starts itself a port no other test
//!   or outgoing connection can take first.
//! - [`wait_until`] polls a condition with a deadline; tests wait for outcomes, not for time.
//!
//! nextest runs every test in its own process, so each test gets its own servers; they are
//! killed when the handle drops, even if the test panics.

mod ports;

pub use ports::{free_addr, free_port};

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use chatdesk_local::{PostgresOptions, RedisCluster, RedisOptions};
pub use chatdesk_local::{PostgresServer, RedisPersistence, RedisServer};
use tempfile::TempDir;

/// A key prefix unique to this test.
pub fn unique_prefix() -> String {
    format!("t-{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new().prefix("chatdesk-test-").tempdir().expect("cannot create a temporary directory")
}

/// A Redis for one test.
pub struct TestRedis {
    url: String,
    server: Option<RedisServer>,
    _dir: Option<TempDir>,
}

impl TestRedis {
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The private server, for fault tests. `None` when `REDIS_URL` was used.
    pub fn server(&mut self) -> Option<&mut RedisServer> {
        self.server.as_mut()
    }
}

/// `REDIS_URL` when set, else a private server.
pub async fn redis() -> TestRedis {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => TestRedis { url, server: None, _dir: None },
        _ => private_redis(RedisPersistence::None).await,
    }
}

/// Always a private server, which the test may kill and restart.
pub async fn private_redis(persistence: RedisPersistence) -> TestRedis {
    let dir = temp_dir();
    let server = RedisServer::start(RedisOptions::new(dir.path().join("redis")).persistence(persistence))
        .await
        .unwrap_or_else(|error| panic!("cannot start a private redis-server: {error}"));
    TestRedis { url: server.url(), server: Some(server), _dir: Some(dir) }
}

/// A local Redis Cluster of three masters.
pub struct TestCluster {
    cluster: RedisCluster,
    _dir: TempDir,
}

impl TestCluster {
    pub fn url(&self) -> String {
        self.cluster.url()
    }
}

pub async fn redis_cluster() -> TestCluster {
    let dir = temp_dir();
    let cluster = RedisCluster::start(dir.path(), 3)
        .await
        .unwrap_or_else(|error| panic!("cannot start a local redis cluster: {error}"));
    TestCluster { cluster, _dir: dir }
}

/// A fresh database for one test.
pub struct TestPostgres {
    url: String,
    server: Option<PostgresServer>,
    _dir: Option<TempDir>,
}

impl TestPostgres {
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn server(&mut self) -> Option<&mut PostgresServer> {
        self.server.as_mut()
    }
}

fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base.find("://").map(|index| index + 3).unwrap_or(0);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// `DATABASE_URL`'s server with a new database when set, else a private server.
pub async fn postgres() -> TestPostgres {
    let database = format!("test_{}", uuid::Uuid::now_v7().simple());
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.is_empty()
    {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&url).await.expect("cannot connect to DATABASE_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{database}\"")))
            .execute(&mut connection)
            .await
            .expect("cannot create a test database");
        return TestPostgres { url: with_database(&url, &database), server: None, _dir: None };
    }
    private_postgres(&database).await
}

/// Where a freshly initialised cluster is kept for copying (much faster than `initdb` each time).
fn template_cache() -> PathBuf {
    let version = chatdesk_local::binaries::postgres_program("initdb")
        .ok()
        .and_then(|path| path.parent()?.parent()?.file_name()?.to_str().map(str::to_owned))
        .unwrap_or_else(|| "default".to_owned());
    std::env::temp_dir().join(format!("chatdesk-testkit-pg-template-{version}"))
}

pub async fn private_postgres(database: &str) -> TestPostgres {
    let dir = temp_dir();
    let mut options = PostgresOptions::new(dir.path().join("pgdata"));
    options.durable = false;
    options.database = database.to_owned();
    options.template_cache = Some(template_cache());
    let server = PostgresServer::start(options)
        .await
        .unwrap_or_else(|error| panic!("cannot start a private PostgreSQL: {error}"));
    TestPostgres { url: server.url(), server: Some(server), _dir: Some(dir) }
}

/// The one polling helper: calls `probe` every 20 ms until it answers `Some`, and returns that;
/// panics with `what` after `timeout`. Tests wait for outcomes this way, never for a fixed time.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually`] for a condition without a value.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let probe = || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    };
    eventually(what, timeout, probe).await
}

/// An HTTP answer: status, headers and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("the body is not JSON ({error}): {}", self.body))
    }
}

/// The tests' HTTP client: no proxy (servers under test are on loopback), no redirects followed
/// (a test sees exactly what the server answered).
fn http_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(|| {
        // reqwest is built without a bundled crypto provider (see Cargo.toml): ring, as everywhere.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(120))
            .build()
            .expect("an HTTP client")
    });
    &CLIENT
}

/// `method path` on a local server under test, with `headers` and an optional body.
pub async fn http_request(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<HttpResponse, reqwest::Error> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a valid HTTP method");
    let mut request = http_client().request(method, format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await?;
    Ok(HttpResponse { status, headers, body })
}

/// `GET path`: `(status, body)`.
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> Result<(u16, String), reqwest::Error> {
    http_request(address, "GET", path, &[], None).await.map(|response| (response.status, response.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(with_database("postgres://u@h:5432/db", "x"), "postgres://u@h:5432/x");
        assert_eq!(
            with_database("postgres://u@h:5432/db?sslmode=disable", "x"),
            "postgres://u@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:5432", "x"), "postgres://u@h:5432/x");
    }
}
