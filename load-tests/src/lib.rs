//! Shared pieces of the benchmarks: a private `chatdesk up`, admin commands, and a keep-alive
//! HTTP/1.1 client for loopback load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The benchmarks run chatdesk's runtime in their own process (stream and writer throughput):
/// the same allocator as the `chatdesk` binary, so they measure what it does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    pub reader: BufReader<TcpStream>,
}

impl Connection {
    pub async fn open(address: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Self { reader: BufReader::new(stream) })
    }

    /// Sends one request and reads the whole response; returns the status.
    pub async fn post(&mut self, path: &str, signature: &str, body: &str) -> anyhow::Result<u16> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nX-Chatdesk-Signature: {signature}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.reader.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.reader.read_line(&mut line).await?;
        let status: u16 = line.split_whitespace().nth(1).context("no status line")?.parse()?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).await?;
        Ok(status)
    }
}

/// The value at `fraction` (0.5 = median) of sorted durations.
pub fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The chatdesk binary: `explicit`, else the one next to this benchmark (same build profile).
pub fn chatdesk_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let beside = std::env::current_exe()?.with_file_name("chatdesk");
    if !beside.exists() {
        bail!("{} not found: build it first (cargo build --release -p chatdesk) or pass --chatdesk", beside.display());
    }
    Ok(beside)
}

/// The Node.js peer in `load-tests/peers/<name>`, its packages installed with `npm ci` when
/// missing, so every run uses the versions its `package-lock.json` pins; `None` when `node` is not
/// installed (the caller says so and goes on without the peer).
pub fn node_peer(name: &str) -> anyhow::Result<Option<PathBuf>> {
    let peer = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers").join(name);
    if std::process::Command::new("node").arg("--version").output().is_err() {
        return Ok(None);
    }
    if !peer.join("node_modules").exists() {
        let installed = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&peer)
            .status()
            .with_context(|| format!("cannot run npm to install the {name} peer"))?;
        anyhow::ensure!(installed.success(), "npm ci failed in {}", peer.display());
    }
    Ok(Some(peer))
}

/// Runs `script` of the Node peer in `peer` (from [`node_peer`]) with `--redis <url>` of a private
/// Redis of its own with `persistence`, then `args`; returns what it printed once it succeeded.
pub async fn run_node_peer(
    peer: &Path,
    script: &str,
    persistence: chatdesk_local::RedisPersistence,
    args: &[String],
) -> anyhow::Result<String> {
    let name = peer.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("chatdesk-bench-{name}-{}", std::process::id()));
    let mut redis = chatdesk_local::RedisServer::start(
        chatdesk_local::RedisOptions::new(dir.join("redis")).persistence(persistence),
    )
    .await?;
    let output = tokio::process::Command::new("node")
        .arg(peer.join(script))
        .args(["--redis", &redis.url()])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run the {name} peer"));
    redis.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let output = output?;
    anyhow::ensure!(output.status.success(), "the {name} peer failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `chatdesk admin <args>` and returns its JSON.
pub fn admin(binary: &Path, database_url: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let output =
        std::process::Command::new(binary).arg("admin").args(args).env("DATABASE_URL", database_url).output()?;
    if !output.status.success() {
        bail!("chatdesk admin {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// A `chatdesk up` with private servers in a throwaway data directory, stopped on drop.
pub struct Up {
    pub address: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub redis_url: String,
    pub binary: PathBuf,
    child: tokio::process::Child,
}

impl Up {
    pub async fn start(binary: PathBuf, extra_env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let data_dir = std::env::temp_dir().join(format!("chatdesk-bench-up-{}", std::process::id()));
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let child = tokio::process::Command::new(&binary)
            .args(["up", "--http", &address.to_string(), "--data-dir"])
            .arg(&data_dir)
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start chatdesk up")?;
        let started = Instant::now();
        loop {
            if let Ok(mut connection) = Connection::open(address).await {
                connection
                    .reader
                    .get_mut()
                    .write_all(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    .await?;
                let mut line = String::new();
                connection.reader.read_line(&mut line).await?;
                if line.contains(" 200 ") {
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("chatdesk up did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let servers = std::fs::read_to_string(data_dir.join("servers.env"))?;
        let value =
            |name: &str| servers.lines().find_map(|line| line.strip_prefix(&format!("{name}="))).map(str::to_owned);
        Ok(Self {
            address,
            database_url: value("DATABASE_URL").context("DATABASE_URL")?,
            redis_url: value("REDIS_URL").context("REDIS_URL")?,
            data_dir,
            binary,
            child,
        })
    }

    pub fn admin(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        admin(&self.binary, &self.database_url, args)
    }

    /// A tenant whose owner is `owner_email`; returns its id.
    pub fn tenant(&self, owner_email: &str) -> anyhow::Result<String> {
        let tenant = self.admin(&[
            "tenant",
            "create",
            "--name",
            "bench",
            "--owner-email",
            owner_email,
            "--password",
            "bench-pass-1",
        ])?;
        Ok(tenant["tenant_id"].as_str().context("tenant_id")?.to_owned())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Ctrl-C, then waits for the clean stop.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-s", "INT", &pid.to_string()]).status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The customer message the writer benchmarks store: message `index` of `contact` in
/// `conversation`.
pub fn inbound_message(
    inbox: uuid::Uuid,
    contact: uuid::Uuid,
    conversation: uuid::Uuid,
    index: usize,
) -> chatdesk_core::events::Event {
    use chatdesk_core::events::{Actor, Direction, Event, MessageCreated, SenderKind};
    Event::MessageCreated(MessageCreated {
        conversation_id: conversation,
        inbox_id: inbox,
        contact_id: contact,
        direction: Direction::Inbound,
        sender: Actor { kind: SenderKind::Customer, id: Some(contact) },
        text: format!("Hello, this is message number {index} about my order"),
        extra: None,
        provider_message_id: Some(format!("provider-{index}")),
        client_msg_id: None,
        sent_at_ms: None,
    })
}

/// One histogram of a Prometheus scrape, summed over the label sets that match: cumulative
/// bucket counts by upper bound, the sum and the count.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    /// What was recorded between `earlier` and `self`.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let before =
            |bound: f64| earlier.buckets.iter().find(|(other, _)| *other == bound).map_or(0.0, |(_, count)| *count);
        Histogram {
            buckets: self.buckets.iter().map(|(bound, count)| (*bound, count - before(*bound))).collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The `fraction` quantile, interpolated linearly inside its bucket (as Prometheus'
    /// `histogram_quantile` does).
    pub fn quantile(&self, fraction: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = fraction * self.count;
        let (mut lower, mut below) = (0.0, 0.0);
        for (bound, count) in &self.buckets {
            if *count >= rank {
                if bound.is_infinite() {
                    return Some(lower);
                }
                let inside = (count - below).max(f64::MIN_POSITIVE);
                return Some(lower + (bound - lower) * ((rank - below) / inside).clamp(0.0, 1.0));
            }
            (lower, below) = (*bound, *count);
        }
        Some(lower)
    }
}

/// Reads `/metrics` of a chatdesk process.
pub async fn scrape(address: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(address).await?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
}

/// The histogram `name` of a scrape, over the series whose labels contain every `filter`
/// (for example `stream="events"`).
pub fn histogram(scrape: &str, name: &str, filters: &[&str]) -> Histogram {
    let mut histogram = Histogram::default();
    let mut buckets: std::collections::BTreeMap<u64, (f64, f64)> = std::collections::BTreeMap::new();
    for line in scrape.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
        if !filters.iter().all(|filter| labels.contains(filter)) {
            continue;
        }
        if metric == format!("{name}_sum") {
            histogram.sum += value;
        } else if metric == format!("{name}_count") {
            histogram.count += value;
        } else if metric == format!("{name}_bucket") {
            let Some(bound) = labels.split("le=\"").nth(1).and_then(|rest| rest.split('"').next()) else { continue };
            let bound: f64 = if bound == "+Inf" { f64::INFINITY } else { bound.parse().unwrap_or(f64::INFINITY) };
            buckets.entry(bound.to_bits()).or_insert((bound, 0.0)).1 += value;
        }
    }
    histogram.buckets = buckets.into_values().collect();
    histogram.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    histogram
}

/// CPU seconds (user and system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("unexpected /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|field| field.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    let per_second = 100.0;
    Ok((ticks(11) + ticks(12)) / per_second)
}

/// CPU seconds used so far by `pid` and every process below it (`chatdesk up` runs Redis and
/// PostgreSQL as its children), by program name (`chatdesk`, `redis-server`, `postgres`).
pub fn tree_cpu_seconds(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut totals = std::collections::BTreeMap::new();
    add_tree_cpu(pid, &mut totals);
    totals
}

fn add_tree_cpu(pid: u32, totals: &mut std::collections::BTreeMap<String, f64>) {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned();
    *totals.entry(name).or_default() += cpu_seconds(pid).unwrap_or(0.0);
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace().filter_map(|child| child.parse::<u32>().ok()) {
        add_tree_cpu(child, totals);
    }
}

/// The CPU share of each program between two [`tree_cpu_seconds`] readings `seconds` apart, as
/// "name 42%" parts (100% is one core).
pub fn cpu_shares(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    seconds: f64,
) -> String {
    after
        .iter()
        .map(|(name, used)| {
            let share = (used - before.get(name).copied().unwrap_or(0.0)) / seconds * 100.0;
            format!("{name} {share:.0}%")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole machine's CPU time so far, from the `cpu` line of `/proc/stat` (every core, in
/// clock ticks): a figure whose processes add up to less than the cores may still have queued for
/// them, when something else (the kernel's interrupts, another program) took the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineCpu {
    /// Ticks running anything: user, nice, system, interrupts, soft interrupts, steal.
    pub busy: u64,
    /// Ticks idle or waiting for I/O.
    pub idle: u64,
    /// The cores the ticks are summed over (the `cpuN` lines).
    pub cores: usize,
}

impl MachineCpu {
    pub fn read() -> anyhow::Result<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat")?)
    }

    fn parse(stat: &str) -> anyhow::Result<Self> {
        let line = stat.lines().find(|line| line.starts_with("cpu ")).context("no `cpu` line in /proc/stat")?;
        let ticks = line
            .split_whitespace()
            .skip(1)
            .map(|field| field.parse::<u64>().with_context(|| format!("`{field}` in /proc/stat's cpu line")))
            .collect::<anyhow::Result<Vec<u64>>>()?;
        if ticks.len() < 4 {
            bail!("/proc/stat's cpu line has {} fields, expected at least 4", ticks.len());
        }
        let at = |index: usize| ticks.get(index).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal; guest time is already counted in user.
        let cores = stat.lines().filter(|line| line.starts_with("cpu") && !line.starts_with("cpu ")).count();
        Ok(Self { busy: at(0) + at(1) + at(2) + at(5) + at(6) + at(7), idle: at(3) + at(4), cores: cores.max(1) })
    }

    /// The share of every core's time that was busy since `earlier` (1.0: all of them, all the
    /// time).
    pub fn busy_since(&self, earlier: &MachineCpu) -> f64 {
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        let total = busy + self.idle.saturating_sub(earlier.idle) as f64;
        if total == 0.0 { 0.0 } else { busy / total }
    }
}

/// `redis-benchmark` XADD requests per second against the server on `port`, with `pipeline`
/// commands per round trip from `clients` connections.
pub fn redis_benchmark(port: u16, requests: u64, pipeline: u32, clients: u32) -> anyhow::Result<f64> {
    let program = chatdesk_local::binaries::redis_program("redis-benchmark")?;
    let output = std::process::Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-n", &requests.to_string(), "-c", &clients.to_string()])
        .args(["-P", &pipeline.to_string(), "-q", "xadd", "bench:raw", "*", "field", "value"])
        .output()
        .context("cannot run redis-benchmark")?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "xadd bench:raw * field value: 123456.79 requests per second, p50=0.215 msec"
    text.rsplit("value: ")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse::<f64>().ok())
        .with_context(|| format!("cannot read redis-benchmark's output: {text}"))
}

/// A chatdesk role service of `docker-compose.yml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployedRole {
    pub service: String,
    /// The `--roles` value of its `serve` command.
    pub role: String,
    pub replicas: usize,
    /// Its environment's variable names.
    pub env: Vec<String>,
    /// Its health check's command.
    pub healthcheck: Vec<String>,
}

/// The deployment as tested: `docker-compose.yml`'s role services, in file order. The chaos run
/// starts these roles with these replica counts; `tests/topology.rs` checks the rest of the file.
pub const COMPOSE: &str = include_str!("../../docker-compose.yml");

/// The environment every role process gets, in the chaos run as in `docker-compose.yml` (values
/// differ: addresses, secrets).
pub const ROLE_ENV: &[&str] = &[
    "REDIS_URL",
    "DATABASE_URL",
    "CHATDESK_JWT_SECRET",
    "CHATDESK_STREAMS",
    "CHATDESK_FLOWS",
    "CHATDESK_HTTP_ADDR",
    "CHATDESK_TRUSTED_PROXIES",
    "RUST_LOG",
];

/// The role services of a Compose file (those whose command is `serve --roles <role>`).
pub fn deployed_roles(compose: &str) -> anyhow::Result<Vec<DeployedRole>> {
    let mut document: serde_yaml::Value = serde_yaml::from_str(compose)?;
    document.apply_merge()?;
    let services = document.get("services").and_then(serde_yaml::Value::as_mapping).context("no services")?;
    let strings = |value: Option<&serde_yaml::Value>| -> Vec<String> {
        value
            .and_then(serde_yaml::Value::as_sequence)
            .map(|items| items.iter().filter_map(|item| item.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let mut roles = Vec::new();
    for (name, service) in services {
        let mut service = service.clone();
        service.apply_merge()?;
        let command = strings(service.get("command"));
        let Some(position) = command.iter().position(|word| word == "--roles") else { continue };
        if command.first().map(String::as_str) != Some("serve") {
            continue;
        }
        let role = command.get(position + 1).context("--roles without a value")?.clone();
        let replicas = service
            .get("deploy")
            .and_then(|deploy| deploy.get("replicas"))
            .and_then(serde_yaml::Value::as_u64)
            .unwrap_or(1) as usize;
        let env = service
            .get("environment")
            .and_then(serde_yaml::Value::as_mapping)
            .map(|env| env.keys().filter_map(|key| key.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let healthcheck = strings(service.get("healthcheck").and_then(|check| check.get("test")));
        roles.push(DeployedRole {
            service: name.as_str().unwrap_or_default().to_owned(),
            role,
            replicas,
            env,
            healthcheck,
        });
    }
    Ok(roles)
}

/// SplitMix64: a seeded, dependency-free generator (the same seed, the same draws), for the
/// benchmarks' data and the chaos run's fault schedule, which a seed must replay exactly.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A draw in [0, 1) with 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    pub fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (self.next() as f64 / u64::MAX as f64) * (high - low)
    }
}

#[cfg(test)]
mod tests {
    use super::MachineCpu;

    #[test]
    fn the_machine_cpu_is_read_from_proc_stat() {
        let stat = "cpu  100 5 50 800 40 3 2 0 7 0\ncpu0 50 2 25 400 20 1 1 0 0 0\nintr 1 2 3\n";
        let earlier = MachineCpu::parse(stat).unwrap();
        assert_eq!(earlier, MachineCpu { busy: 160, idle: 840, cores: 1 });
        let later = MachineCpu::parse("cpu  160 5 80 850 50 3 12 0 0 0\n").unwrap();
        // 100 busy ticks and 60 idle ones since.
        assert!((later.busy_since(&earlier) - 100.0 / 160.0).abs() < 1e-9);
        assert_eq!(earlier.busy_since(&earlier), 0.0);
        assert!(MachineCpu::parse("intr 1 2\n").unwrap_err().to_string().contains("no `cpu` line"));
        assert!(MachineCpu::parse("cpu  1 x 3 4\n").unwrap_err().to_string().contains("`x`"));
        assert!(MachineCpu::parse("cpu  1 2\n").unwrap_err().to_string().contains("2 fields"));
        assert!(MachineCpu::read().is_ok());
    }
}
