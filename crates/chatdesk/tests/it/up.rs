//! `chatdesk up` with no REDIS_URL / DATABASE_URL: private servers, ready, clean stop, reuse.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chatdesk_streams::{RedisConnector, RedisSettings};
use fred::prelude::*;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

async fn start(data_dir: &Path, http: SocketAddr, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chatdesk"))
        .args(["up", "--http", &http.to_string(), "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env("CHATDESK_KEY_PREFIX", chatdesk_testkit::unique_prefix())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chatdesk starts")
}

/// Ready, and ours: a free port can be taken by another test's server between choosing it and
/// binding it, and that server's `/readyz` would answer first. `chatdesk up` writes
/// `servers.env` before it serves.
async fn wait_ready(http: SocketAddr, data_dir: &Path) {
    chatdesk_testkit::wait_until("/readyz answers 200", Duration::from_secs(120), || async {
        data_dir.join("servers.env").exists()
            && matches!(chatdesk_testkit::http_get(http, "/readyz").await, Ok((200, _)))
    })
    .await;
}

/// Ctrl-C, as a terminal sends it.
async fn interrupt(mut child: Child) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill").args(["-s", "INT", &pid]).status().unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait()).await.expect("chatdesk stops").unwrap();
    assert!(exit.success(), "chatdesk exited with {exit}");
}

fn urls(data_dir: &Path) -> (String, String) {
    let text = std::fs::read_to_string(data_dir.join("servers.env")).expect("servers.env written");
    let get = |name: &str| {
        text.lines().find_map(|line| line.strip_prefix(&format!("{name}="))).map(str::to_owned).expect(name)
    };
    (get("REDIS_URL"), get("DATABASE_URL"))
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().split('/').next().unwrap().parse().unwrap()
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_private_servers_stops_them_and_reuses_their_data() {
    let dir = tempfile::Builder::new().prefix("chatdesk-up-").tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let http: SocketAddr = chatdesk_testkit::free_addr();

    let first = start(&data_dir, http, &[]).await;
    wait_ready(http, &data_dir).await;
    let (redis_url, database_url) = urls(&data_dir);
    // What holds secrets or data is its owner's alone.
    let mode = |path: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&data_dir), 0o711, "others may pass through to PostgreSQL's directory, not list");
    assert_eq!(mode(&data_dir.join("servers.env")), 0o600);
    assert_eq!(mode(&data_dir.join("jwt-secret")), 0o600);
    assert_eq!(mode(&data_dir.join("redis")), 0o700, "Redis's AOF stays private");
    assert_eq!(mode(&data_dir.join("postgres")), 0o700);
    assert_eq!(mode(&data_dir.join("postgres-password")), 0o600);
    assert_eq!(mode(&data_dir.join("redis/redis.conf")), 0o600, "Redis's password stays private");
    // Both servers want a password: another local user cannot just connect.
    let refused = chatdesk_local::resp::command(port_of(&redis_url), &["PING"]).await.unwrap_err();
    assert!(refused.starts_with("NOAUTH"), "{refused}");
    assert_eq!(chatdesk_local::resp::command_as(port_of(&redis_url), Some("guess"), &["PING"]).await.ok(), None);
    let without_password = format!("postgres://postgres@127.0.0.1:{}/chatdesk", port_of(&database_url));
    assert!(
        chatdesk_store::connect(&without_password, 1).await.is_err(),
        "PostgreSQL let a user in without a password"
    );
    let wrong_password = format!("postgres://postgres:guess@127.0.0.1:{}/chatdesk", port_of(&database_url));
    assert!(chatdesk_store::connect(&wrong_password, 1).await.is_err(), "PostgreSQL took a wrong password");
    let (status, body) = chatdesk_testkit::http_get(http, "/readyz").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(r#""redis":{"status":"ok"}"#) && body.contains(r#""postgres":{"status":"ok"}"#), "{body}");
    let (status, metrics) = chatdesk_testkit::http_get(http, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("chatdesk_http_requests_total"), "{metrics}");

    // Leave data in both servers.
    let redis = RedisConnector::new(RedisSettings::new(&redis_url)).unwrap().shared().await.unwrap();
    let _: () = redis.set("up-test", "kept", None, None, false).await.unwrap();
    let _ = redis.quit().await;
    let pool = chatdesk_store::connect(&database_url, 1).await.unwrap();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ('01900000-0000-7000-8000-000000000001', 'Acme')")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    interrupt(first).await;
    assert!(!listening(port_of(&redis_url)), "private Redis still running");
    assert!(!listening(port_of(&database_url)), "private PostgreSQL still running");
    assert!(!data_dir.join("postgres/postmaster.pid").exists(), "PostgreSQL was not shut down cleanly");

    // Again, with the demo: its logins are printed, they work, and a simulated customer writes.
    let mut second = start(&data_dir, http, &["--demo"]).await;
    let mut stdout = tokio::io::BufReader::new(second.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    while !banner.contains("simulated customer") {
        let line = tokio::time::timeout(Duration::from_secs(120), stdout.next_line()).await.unwrap().unwrap().unwrap();
        banner.push_str(&line);
        banner.push('\n');
    }
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    assert!(banner.contains("agent@demo.chatdesk.dev / demo-agent-1"), "{banner}");
    wait_ready(http, &data_dir).await;
    let token = crate::support::login(http, "agent@demo.chatdesk.dev", "demo-agent-1").await.json()["token"]
        .as_str()
        .expect("the demo agent signs in")
        .to_owned();
    let api = crate::support::Client { http, token };
    // The SRE login the banner offers signs in with the role that reads stream health.
    assert!(banner.contains("sre@demo.chatdesk.dev / demo-sre-1"), "{banner}");
    let sre = crate::support::login(http, "sre@demo.chatdesk.dev", "demo-sre-1").await;
    assert_eq!(sre.json()["user"]["role"], "sre", "{}", sre.body);
    let page = crate::support::eventually(&api, "/v1/conversations", "a simulated customer's conversation", |page| {
        !page["items"].as_array().unwrap().is_empty()
    })
    .await;
    // A reply to a simulated customer reaches the demo's own receiver: sent, not failed.
    let conversation = page["items"][0]["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/conversations/{conversation}/messages");
    let reply = api.call("POST", &path, Some(serde_json::json!({"text": "On its way!"}))).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let event_id = reply.json()["event_id"].as_str().unwrap().to_owned();
    crate::support::eventually(&api, &path, "the demo reply sent", |page| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|message| message["event_id"] == event_id.as_str() && message["status"] == "sent")
    })
    .await;
    let widget_page =
        banner.lines().find_map(|line| line.split_whitespace().find(|word| word.contains("/demo?inbox="))).unwrap();
    let path = widget_page.trim_start_matches(&format!("http://{http}"));
    let (status, page) = chatdesk_testkit::http_get(http, path).await.unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("widget.js"), "{page}");
    let (status, script) = chatdesk_testkit::http_get(http, "/widget.js").await.unwrap();
    assert!(status == 200 && script.contains("data-inbox"), "{status}");
    let (redis_url, database_url) = urls(&data_dir);
    let redis = RedisConnector::new(RedisSettings::new(&redis_url)).unwrap().shared().await.unwrap();
    let kept: Option<String> = redis.get("up-test").await.unwrap();
    assert_eq!(kept.as_deref(), Some("kept"), "Redis data was not reused");
    let _ = redis.quit().await;
    let pool = chatdesk_store::connect(&database_url, 1).await.unwrap();
    let name: String = sqlx::query_scalar("SELECT name FROM tenants WHERE id = '01900000-0000-7000-8000-000000000001'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, "Acme", "PostgreSQL data was not reused");
    pool.close().await;
    interrupt(second).await;
}

/// Removes the cluster a data directory links to (kept outside it when PostgreSQL's user could
/// not reach it) when the test ends, passed or not.
struct LinkedCluster(std::path::PathBuf);

impl Drop for LinkedCluster {
    fn drop(&mut self) {
        if let Ok(target) = self.0.read_link() {
            let _ = std::fs::remove_dir_all(target);
        }
    }
}

/// A data directory below one closed to other users (a clone in root's `0700` home, where
/// PostgreSQL, run as `postgres` by root, cannot enter): `up` still starts and stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_works_from_a_home_closed_to_other_users() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("chatdesk-home-").tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let data_dir = home.join("chatdesk/.chatdesk");
    let _cluster = LinkedCluster(data_dir.join("postgres"));
    let http: SocketAddr = chatdesk_testkit::free_addr();

    let up = start(&data_dir, http, &[]).await;
    wait_ready(http, &data_dir).await;
    let (status, body) = chatdesk_testkit::http_get(http, "/readyz").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(r#""postgres":{"status":"ok"}"#), "{body}");
    let (_, database_url) = urls(&data_dir);
    interrupt(up).await;
    assert!(!listening(port_of(&database_url)), "private PostgreSQL still running");
    assert_eq!(
        std::fs::metadata(&home).unwrap().permissions().mode() & 0o777,
        0o700,
        "the home directory is left as it was"
    );
}

/// Secrets are trusted only from a data directory of ours and files only we can read: a
/// planted password or signing key is refused, by name, before anything starts.
#[tokio::test]
async fn up_refuses_secrets_it_cannot_trust() {
    use std::os::unix::fs::PermissionsExt;
    let run = |data_dir: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_chatdesk"))
            .args(["up", "--http", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .env_remove("CHATDESK_JWT_SECRET")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();

    // A signing key others can read (or could have written).
    let data_dir = dir.path().join("readable");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("jwt-secret"), "planted-planted-planted-planted-planted").unwrap();
    std::fs::set_permissions(data_dir.join("jwt-secret"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = run(&data_dir);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("jwt-secret must be a file of this user's"), "{stderr}");

    // A planted PostgreSQL password, likewise.
    let data_dir = dir.path().join("planted");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("postgres-password"), "attackerpass123").unwrap();
    std::fs::set_permissions(data_dir.join("postgres-password"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = run(&data_dir);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("postgres-password must be a file of this user's"), "{stderr}");

    // A data directory that belongs to another user (only root can make one to test with).
    let data_dir = dir.path().join("theirs");
    std::fs::create_dir(&data_dir).unwrap();
    if std::os::unix::fs::chown(&data_dir, Some(65534), Some(65534)).is_ok() {
        let output = run(&data_dir);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("is not a directory of this user's"), "{stderr}");
    }
}
