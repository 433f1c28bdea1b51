//! A short seeded chaos run (`src/chaos.rs`) in every test run: roles as separate processes,
//! SIGKILLed and restarted under load, Redis and PostgreSQL killed once, a gateway paused; then
//! nothing acknowledged may be lost or stored, delivered or shown twice. The long run and its
//! last result are in `docs/reliability.md`.

use std::process::Command;

#[test]
fn a_seeded_chaos_run_loses_nothing_and_repeats_nothing() {
    let output = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["--seconds", "40", "--seed", "7", "--tenants", "3", "--rate", "30"])
        .output()
        .expect("the chaos binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(output.status.success(), "the chaos run found a loss or a repeat (above)");
    assert!(stdout.contains("nothing lost, nothing twice"), "{stdout}");
    assert!(stdout.contains("SIGKILL") && stdout.contains("Redis restarted"), "faults were injected: {stdout}");
}
