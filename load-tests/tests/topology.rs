//! The deployment as tested: `docker-compose.yml` runs the topology the chaos run starts (it reads
//! the roles and replica counts from the file) with the settings the chaos run gives its processes
//! (`ROLE_ENV`), every role with a health check on `/readyz`, Redis with AOF `always`, the
//! migrations once, and one published port whose proxy sends `/v1/ws` to the gateways.

use std::collections::BTreeSet;

use chatdesk_load_tests::{COMPOSE, ROLE_ENV, deployed_roles};

#[test]
fn compose_runs_the_topology_the_chaos_run_tests() {
    let roles = deployed_roles(COMPOSE).unwrap();
    let names: Vec<&str> = roles.iter().map(|role| role.role.as_str()).collect();
    assert_eq!(names, ["ingress", "gateway", "writer", "sender", "broadcaster", "autoreply"], "one service per role");
    for role in &roles {
        if ["ingress", "gateway", "writer", "sender"].contains(&role.role.as_str()) {
            assert!(role.replicas >= 2, "{} runs at least twice, as in the chaos run", role.service);
        }
        let env: BTreeSet<&str> = role.env.iter().map(String::as_str).collect();
        let expected: BTreeSet<&str> = ROLE_ENV.iter().copied().collect();
        assert_eq!(env, expected, "{}: the settings the chaos run gives every role", role.service);
        assert!(
            role.healthcheck.iter().any(|word| word.ends_with("/readyz")),
            "{}: health check on /readyz: {:?}",
            role.service,
            role.healthcheck
        );
    }

    let mut document: serde_yaml::Value = serde_yaml::from_str(COMPOSE).unwrap();
    document.apply_merge().unwrap();
    let services = &document["services"];
    let redis: Vec<&str> =
        services["redis"]["command"].as_sequence().unwrap().iter().filter_map(|word| word.as_str()).collect();
    assert!(redis.windows(2).any(|pair| pair == ["--appendfsync", "always"]), "{redis:?}");
    assert_eq!(services["migrate"]["command"][0].as_str(), Some("migrate"));
    let published: Vec<&serde_yaml::Value> = services
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), Some("redis" | "postgres")))
        .filter_map(|(_, service)| service.get("ports"))
        .collect();
    assert_eq!(published.len(), 1, "one published port (the proxy's), besides the servers' own");
    let proxy = include_str!("../../deploy/nginx.conf");
    assert!(proxy.contains("location = /v1/ws") && proxy.contains("set $gateway http://gateway:8080"), "{proxy}");
    assert!(proxy.contains("set $ingress http://ingress:8080"), "{proxy}");
    // The roles believe the proxy alone, and the proxy never passes on what a client claims.
    let address = services["proxy"]["networks"]["default"]["ipv4_address"].as_str().unwrap();
    let trusted = document["x-chatdesk"]["environment"]["CHATDESK_TRUSTED_PROXIES"].as_str().unwrap();
    assert_eq!(trusted, format!("{address}/32"), "trust exactly the proxy");
    assert!(!proxy.contains("$proxy_add_x_forwarded_for"), "a client's own X-Forwarded-For is replaced");
    assert!(proxy.contains("proxy_set_header X-Forwarded-For $remote_addr"), "{proxy}");
    assert!(proxy.contains("location = /metrics"), "metrics are not published through the proxy");
}
