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
