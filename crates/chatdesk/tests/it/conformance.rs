//! The OpenAPI document as a contract, checked by an outside conformance fuzzer: schemathesis
//! generates requests from `docs/openapi.json` (valid ones and, from each schema, invalid ones)
//! and sends them to a live server with an owner's token. Every answer must be declared, match
//! its schema and content type; invalid data must be refused, valid data accepted, and no
//! request may cause a server error. `scripts/install-deps --fuzz` installs schemathesis (pinned
//! in `scripts/fuzz-requirements.txt`); `CHATDESK_SCHEMATHESIS` names another `st`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

use crate::support::{Client, Env, admin, conversation_of, generic_body, login, post_generic, serve};

/// The schemathesis command: `CHATDESK_SCHEMATHESIS`, else the one `scripts/install-deps --fuzz`
/// puts in the build cache's virtual environment.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("CHATDESK_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let installed = home.join(".cache/chatdesk/fuzz-venv/bin/st");
    assert!(
        installed.exists(),
        "schemathesis is not installed at {}: run `scripts/install-deps --fuzz` (./scripts/test does), \
         or set CHATDESK_SCHEMATHESIS to an `st` command",
        installed.display()
    );
    installed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_driven_fuzzer_finds_the_document_truthful() {
    let st = schemathesis();
    let env = Env::start().await;
    let tenant = env.tenant("owner@fuzz.test", "owner-pass-1");
    let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
    let inbox = |kind: &str| admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", kind, "--name", kind]);
    let (web, generic) = (inbox("web"), inbox("generic"));
    inbox("telegram");
    inbox("whatsapp");
    let (http, _server) = serve(&env, &[("CHATDESK_INGRESS_RATE_PER_INBOX", "1000")]).await;
    let token = login(http, "owner@fuzz.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    // Something to work on, so that operations on one conversation or inbox get past "not found".
    let body = generic_body("fuzz-1", "cust-1", "hello");
    assert_eq!(post_generic(http, &generic, &body).await.status, 200);
    let conversation = conversation_of(&Client { http, token: token.clone() }, "cust-1").await;
    let document = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let reports = tempfile::tempdir().unwrap();
    let config = reports.path().join("schemathesis.toml");
    std::fs::write(&config, include_str!("../../../../scripts/schemathesis.toml")).unwrap();

    let mut command = Command::new(&st);
    command
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(&document)
        .args(["--url", &format!("http://{http}")])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        // One seed, so a run is repeatable; CHATDESK_FUZZ_SEED explores others.
        .args(["--seed", &std::env::var("CHATDESK_FUZZ_SEED").unwrap_or_else(|_| "20261206".into())])
        // One worker: hypothesis describes its strategies by parsing their source, and CPython
        // 3.11's parser is not safe to run from two threads at once (a spurious "AST constructor
        // recursion depth mismatch").
        .args(["--workers", "1", "--no-color"])
        .args(["--report", "junit", "--report-dir"])
        .arg(reports.path())
        .env("NO_COLOR", "1")
        .env("CHATDESK_FUZZ_CONVERSATION", conversation["id"].as_str().unwrap())
        .env("CHATDESK_FUZZ_INBOX", generic["inbox_id"].as_str().unwrap())
        .env("CHATDESK_FUZZ_WEB_INBOX", web["inbox_id"].as_str().unwrap());
    let started = std::time::Instant::now();
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap_or_else(|error| {
        panic!("cannot run {}: {error}", st.display());
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    println!("schemathesis ran for {:?}", started.elapsed());
    assert!(output.status.success(), "schemathesis found the document untruthful (above)");
    // The run really tested the API: a summary with the operations it covered.
    assert!(stdout.contains("passed"), "no summary: {}", json!({"stdout": stdout, "stderr": stderr}));
}
