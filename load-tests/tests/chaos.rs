//! Short seeded chaos runs (`src/chaos.rs`) in every test run: roles as separate processes,
//! SIGKILLed and restarted under load, Redis (or a Redis Cluster master) and PostgreSQL killed
//! once, a gateway paused; then nothing acknowledged may be lost or stored, delivered or shown
//! twice. The long run and its last result are in `docs/reliability.md`.

use std::process::Command;

/// Runs the chaos binary with `args`; fails with its whole output unless it counted nothing
/// lost and nothing twice. Returns what it printed.
fn chaos(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_chaos")).args(args).output().expect("the chaos binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the chaos run found a loss or a repeat (above)");
    assert!(stdout.contains("nothing lost, nothing twice"), "{stdout}");
    stdout
}

#[test]
fn a_seeded_chaos_run_loses_nothing_and_repeats_nothing() {
    let printed = chaos(&["--seconds", "40", "--seed", "7", "--tenants", "3", "--rate", "30"]);
    assert!(printed.contains("SIGKILL") && printed.contains("Redis restarted"), "faults were injected: {printed}");
}

#[test]
fn a_seeded_chaos_run_on_redis_cluster_loses_nothing_and_repeats_nothing() {
    let printed = chaos(&["--seconds", "30", "--seed", "11", "--tenants", "2", "--rate", "20", "--cluster"]);
    assert!(
        printed.contains("Redis Cluster master") && printed.contains("restarted"),
        "a master was killed: {printed}"
    );
}
