//! The dashboard and the widget in a real browser: headless Chromium driven by playwright-core
//! (`browser-tests/dashboard.test.mjs`), against real servers and chatdesk processes.
//!
//! Screenshots go to `screenshots/` in the cargo target's tmp directory, never into the clone, so
//! a test run leaves the tree as it was; `scripts/screenshots` copies them into `docs/screenshots/`.

use chatdesk_testkit::free_addr;
use std::path::PathBuf;
use std::process::Stdio;

use serde_json::json;

use crate::support::{Env, JWT_SECRET, admin, serve_roles};

/// Where the test writes its screenshots (`scripts/screenshots` reads them from there).
fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_and_a_visitor_chat_live_through_a_gateway_restart() {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let tests = root.join("browser-tests");
    assert!(
        tests.join("node_modules/playwright-core").exists() && std::path::Path::new("/usr/bin/chromium").exists(),
        "the browser tests need Chromium and playwright-core: run ./scripts/test, which installs both"
    );
    let env = Env::start().await;
    let tenant = env.tenant("owner@browser.test", "owner-pass-1");
    let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
    let first = env.user(&tenant_id, "alice@browser.test", "alice-pass-1", "agent");
    env.user(&tenant_id, "bob@browser.test", "bob-pass-1", "agent");
    env.user(&tenant_id, "sre@browser.test", "sre-pass-1", "sre");
    env.user(&tenant_id, "marketer@browser.test", "marketer-pass-1", "marketer");
    // Campaign messages go to a receiver that takes them all.
    let receiver =
        crate::standin::StandIn::start(|_| String::new(), |_, _| crate::standin::Answer::json(200, json!({"id": "x"})))
            .await;
    admin(
        &env,
        &[
            "inbox",
            "create",
            "--tenant",
            &tenant_id,
            "--kind",
            "generic",
            "--name",
            "Marketing",
            "--outbound-url",
            &receiver.url(),
        ],
    );
    // The bot's model: a stand-in speaking the chat-completions API.
    let model = crate::standin::StandIn::start(
        |_| String::new(),
        |_, _| {
            crate::standin::Answer::json(
                200,
                json!({
                    "id": "chatcmpl-browser", "object": "chat.completion", "created": 1_764_000_000, "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "Hello from the Acme bot!"}}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}
                }),
            )
        },
    )
    .await;
    let web = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "web", "--name", "Website"]);
    let generic = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "generic", "--name", "Webhooks"]);

    let http = free_addr();
    let gateway = free_addr();
    let websocket = format!("ws://{gateway}/v1/ws");
    let _api = serve_roles(
        &env,
        "ingress,writer,sender,broadcaster,autoreply",
        http,
        &[("CHATDESK_PUBLIC_WS_URL", &websocket)],
    )
    .await;
    // A dead letter for the SRE: another tenant's message the store refused while a faulty
    // trigger was in place (since removed, so a redrive stores it).
    let other = env.tenant("owner@other.test", "owner-pass-1");
    let other_inbox =
        crate::support::generic_inbox(&env, other["tenant_id"].as_str().unwrap(), "Other", &receiver.url());
    let pool = sqlx::PgPool::connect(&env.database_url).await.unwrap();
    crate::support::refuse_poison(&pool).await;
    let poison = crate::support::generic_body("poison-1", "poisoned", "poison for the SRE");
    assert_eq!(crate::support::post_generic(http, &other_inbox, &poison).await.status, 200);
    chatdesk_testkit::wait_until("the poison message dead-lettered", std::time::Duration::from_secs(60), || async {
        crate::support::dead_letters(&env, "events").await == 1
    })
    .await;
    crate::support::accept_poison(&pool).await;
    pool.close().await;

    let config = json!({
        "base": format!("http://{http}"),
        "gateway": {
            "base": format!("http://{gateway}"),
            "bin": env!("CARGO_BIN_EXE_chatdesk"),
            "args": ["serve", "--roles", "gateway", "--http", gateway.to_string()],
            "env": {
                "REDIS_URL": env.redis_url, "DATABASE_URL": env.database_url, "CHATDESK_JWT_SECRET": JWT_SECRET,
                "CHATDESK_KEY_PREFIX": env.prefix, "CHATDESK_NODE_ID": "browser-gateway",
                "CHATDESK_STREAMS": root.join("streams.toml"), "RUST_LOG": "warn",
            },
        },
        "web_inbox": web["inbox_id"],
        "generic": {"webhook_path": generic["webhook_path"], "secret": generic["secret"]},
        "agents": [
            {"email": "alice@browser.test", "password": "alice-pass-1", "id": first["user_id"]},
            {"email": "bob@browser.test", "password": "bob-pass-1"},
        ],
        "sre": {"email": "sre@browser.test", "password": "sre-pass-1"},
        "marketer": {"email": "marketer@browser.test", "password": "marketer-pass-1"},
        "owner": {"email": "owner@browser.test", "password": "owner-pass-1"},
        "bot": {"inbox": "Website", "base_url": format!("{}/v1", model.url()), "reply": "Hello from the Acme bot!"},
        "screenshots": screenshot_dir(),
    });
    let output = tokio::process::Command::new("node")
        .arg(tests.join("dashboard.test.mjs"))
        .env("CHATDESK_BROWSER_CONFIG", config.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "browser checks failed:\n{stdout}\n{stderr}");
}
