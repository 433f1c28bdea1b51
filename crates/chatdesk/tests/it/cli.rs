//! Command-line errors are precise and exit non-zero.

use std::process::Command;

fn chatdesk() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chatdesk"))
}

#[test]
fn streams_check_accepts_the_shipped_file() {
    let output = chatdesk()
        .args(["streams", "check", concat!(env!("CARGO_MANIFEST_DIR"), "/../../streams.toml")])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok (3 stream families"));
}

#[test]
fn streams_check_names_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("streams.toml");
    std::fs::write(&file, "[streams.events]\npartitions = 0\n").unwrap();
    let output = chatdesk().args(["streams", "check"]).arg(&file).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}: streams.events.partitions: must be between 1 and 1024, got 0", file.display())),
        "{stderr}"
    );
}

#[test]
fn serve_without_servers_says_what_is_missing() {
    let output = chatdesk()
        .args(["serve", "--roles", "ingress"])
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("REDIS_URL is not set"));
}

#[test]
fn unknown_roles_are_refused_by_name() {
    let output = chatdesk().args(["serve", "--roles", "ingress,teleporter"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid value 'teleporter'"));
}

#[test]
fn admin_commands_refuse_bad_arguments_by_name() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "admin",
                "tenant",
                "create",
                "--name",
                "Acme",
                "--owner-email",
                "not-an-email",
                "--password",
                "long-enough",
            ],
            "--owner-email \"not-an-email\" is not an e-mail address",
        ),
        (
            &["admin", "tenant", "create", "--name", "Acme", "--owner-email", "a@b.co", "--password", "short"],
            "--password must be at least 8 characters",
        ),
        (
            &["admin", "agent", "create", "--tenant", "nope", "--email", "a@b.co", "--password", "long-enough"],
            "invalid value 'nope' for '--tenant <TENANT>'",
        ),
        (
            &[
                "admin",
                "inbox",
                "create",
                "--tenant",
                "0192f0c4-0000-7000-8000-000000000000",
                "--kind",
                "fax",
                "--name",
                "x",
            ],
            "invalid value 'fax' for '--kind <KIND>'",
        ),
        (
            &["admin", "apikey", "create", "--tenant", "0192f0c4-0000-7000-8000-000000000000", "--role", "king"],
            "invalid value 'king' for '--role <ROLE>'",
        ),
    ];
    for (args, message) in cases {
        let output = chatdesk().args(*args).env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none").output().unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// Runs `command` with its reader gone before the first line is written (as `| head -0`): it
/// must end as it would have, quietly.
fn into_a_closed_pipe(mut command: Command) {
    let mut child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{command:?} {:?}: {stderr}", output.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn commands_into_a_closed_pipe_end_quietly() {
    let redis = chatdesk_testkit::redis().await;
    let mut status = chatdesk();
    status
        .args(["streams", "status", "--json"])
        .env("REDIS_URL", redis.url())
        .env("CHATDESK_KEY_PREFIX", chatdesk_testkit::unique_prefix());
    into_a_closed_pipe(status);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    for args in [["streams", "check", &format!("{root}/streams.toml")], ["flows", "check", &format!("{root}/flows")]] {
        let mut check = chatdesk();
        check.args(args);
        into_a_closed_pipe(check);
    }
}

#[test]
fn commands_name_a_stopped_chatdesk_up() {
    let data_dir = tempfile::tempdir().unwrap();
    // A `servers.env` left by an earlier `chatdesk up` whose servers no longer answer.
    let closed = |_| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (redis_port, postgres_port) = (closed(0), closed(1));
    std::fs::write(
        data_dir.path().join("servers.env"),
        format!(
            "REDIS_URL=redis://127.0.0.1:{redis_port}\nDATABASE_URL=postgres://chatdesk@127.0.0.1:{postgres_port}/chatdesk\n"
        ),
    )
    .unwrap();
    for args in [
        &["migrate"][..],
        &["streams", "status"],
        &["admin", "apikey", "create", "--tenant", "0192f0c4-0000-7000-8000-000000000000", "--role", "agent"],
    ] {
        let output = chatdesk()
            .args(args)
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .env("CHATDESK_DATA_DIR", data_dir.path())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("chatdesk up is not running"), "{args:?}: {stderr}");
        assert_eq!(stderr.matches("chatdesk up is not running").count(), 1, "said once: {stderr}");
    }
}

/// Every setting the code reads is documented in the README and listed in `.env.example`.
#[test]
fn every_setting_is_documented() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let example = std::fs::read_to_string(format!("{root}/.env.example")).unwrap();
    let mut settings = std::collections::BTreeSet::new();
    let mut pending = vec![std::path::PathBuf::from(format!("{root}/crates"))];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            // Only the code that runs: tests set their own variables.
            if path.file_name().is_some_and(|name| name == "tests" || name == "chatdesk-testkit") {
                continue;
            }
            pending.extend(std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for piece in text.split("\"CHATDESK_").skip(1) {
                let name: String =
                    piece.chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
                if piece[name.len()..].starts_with('"') {
                    settings.insert(format!("CHATDESK_{name}"));
                }
            }
        }
    }
    assert!(settings.len() > 20, "{settings:?}");
    let missing: Vec<_> =
        settings.iter().filter(|name| !readme.contains(name.as_str()) || !example.contains(name.as_str())).collect();
    assert!(missing.is_empty(), "settings missing from the README or .env.example: {missing:?}");
}
