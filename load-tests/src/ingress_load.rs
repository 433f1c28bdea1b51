//! Ingress load: signed generic webhooks posted over loopback at increasing rates against a
//! `chatdesk up` started by this command (private Redis and PostgreSQL, AOF `always`, the writer
//! running), reporting the sustained requests/s and latency p50/p99/p99.9 at each rate.
//!
//! ```text
//! cargo build --release -p chatdesk
//! cargo run --release -p chatdesk-load-tests --bin ingress-load -- [--rates 250,500,1000,2000] [--seconds 10]
//! ```
//!
//! Requests are scheduled open-loop (request i at start + i/rate), and latency is measured from
//! the scheduled time, so a server that falls behind shows its queueing instead of hiding it.
//! Each rate step is bounded in time; the run stops early once p99 exceeds one second.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chatdesk_api::ingress::signature::sign;
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(about = "Sustained webhook requests/s and latency percentiles of `chatdesk up` over loopback")]
struct Args {
    /// Target request rates, per second, in order.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,2000,4000")]
    rates: Vec<u64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Distinct senders the messages come from.
    #[arg(long, default_value_t = 200)]
    senders: usize,
    /// The chatdesk binary; defaults to the one next to this benchmark (same build profile).
    #[arg(long)]
    chatdesk: Option<PathBuf>,
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    async fn open(address: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Self { reader: BufReader::new(stream) })
    }

    /// Sends one request and reads the whole response; returns the status.
    async fn post(&mut self, path: &str, signature: &str, body: &str) -> anyhow::Result<u16> {
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

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn chatdesk_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.chatdesk {
        return Ok(path.clone());
    }
    let beside = std::env::current_exe()?.with_file_name("chatdesk");
    if !beside.exists() {
        bail!("{} not found: build it first (cargo build --release -p chatdesk) or pass --chatdesk", beside.display());
    }
    Ok(beside)
}

fn admin(binary: &PathBuf, database_url: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let output =
        std::process::Command::new(binary).arg("admin").args(args).env("DATABASE_URL", database_url).output()?;
    if !output.status.success() {
        bail!("chatdesk admin {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = chatdesk_binary(&args)?;
    let data_dir = std::env::temp_dir().join(format!("chatdesk-ingress-bench-{}", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut server = tokio::process::Command::new(&binary)
        .args(["up", "--http", &address.to_string(), "--data-dir"])
        .arg(&data_dir)
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env("CHATDESK_INGRESS_RATE_PER_INBOX", "1000000")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start chatdesk up")?;
    let started = Instant::now();
    loop {
        let mut probe = Connection::open(address).await.ok();
        let ready = match probe.as_mut() {
            Some(connection) => {
                connection
                    .reader
                    .get_mut()
                    .write_all(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    .await?;
                let mut line = String::new();
                connection.reader.read_line(&mut line).await?;
                line.contains(" 200 ")
            }
            None => false,
        };
        if ready {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("chatdesk up did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let servers = std::fs::read_to_string(data_dir.join("servers.env"))?;
    let database_url =
        servers.lines().find_map(|line| line.strip_prefix("DATABASE_URL=")).context("DATABASE_URL")?.to_owned();
    let tenant = admin(
        &binary,
        &database_url,
        &["tenant", "create", "--name", "bench", "--owner-email", "owner@bench.test", "--password", "bench-pass-1"],
    )?;
    let tenant_id = tenant["tenant_id"].as_str().context("tenant_id")?.to_owned();
    let inbox = admin(
        &binary,
        &database_url,
        &["inbox", "create", "--tenant", &tenant_id, "--kind", "generic", "--name", "bench"],
    )?;
    let path = Arc::new(inbox["webhook_path"].as_str().context("webhook_path")?.to_owned());
    let secret = Arc::new(inbox["secret"].as_str().context("secret")?.to_owned());

    println!(
        "ingress-load: signed generic webhooks to `chatdesk up` (AOF always, writer on) over loopback; {} connections, {} s per rate",
        args.connections, args.seconds
    );
    println!(
        "{:>10} {:>12} {:>9} {:>10} {:>10} {:>10}",
        "target/s", "sustained/s", "errors", "p50 ms", "p99 ms", "p99.9 ms"
    );
    let mut sequence = 0u64;
    for &rate in &args.rates {
        let total = rate * args.seconds;
        let begin = Instant::now() + Duration::from_millis(200);
        let mut workers = tokio::task::JoinSet::new();
        for worker in 0..args.connections as u64 {
            let (path, secret) = (path.clone(), secret.clone());
            let (connections, senders, base) = (args.connections as u64, args.senders as u64, sequence);
            workers.spawn(async move {
                let mut connection = Connection::open(address).await?;
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut index = worker;
                while index < total {
                    let scheduled = begin + Duration::from_secs_f64(index as f64 / rate as f64);
                    tokio::time::sleep_until(scheduled.into()).await;
                    let number = base + index;
                    let body = format!(
                        r#"{{"message_id":"bench-{number}","from":{{"id":"sender-{}","name":"Bench"}},"text":"load message {number}"}}"#,
                        number % senders
                    );
                    let signature = sign(body.as_bytes(), &secret);
                    match connection.post(&path, &signature, &body).await {
                        Ok(200) => latencies.push(scheduled.elapsed()),
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            connection = Connection::open(address).await?;
                        }
                    }
                    index += connections;
                }
                anyhow::Ok((latencies, errors))
            });
        }
        let mut latencies = Vec::with_capacity(total as usize);
        let mut errors = 0;
        while let Some(joined) = workers.join_next().await {
            let (worker_latencies, worker_errors) = joined??;
            latencies.extend(worker_latencies);
            errors += worker_errors;
        }
        let elapsed = begin.elapsed();
        sequence += total;
        latencies.sort();
        let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
        let p99 = percentile(&latencies, 0.99);
        println!(
            "{:>10} {:>12.0} {:>9} {:>10.2} {:>10.2} {:>10.2}",
            rate,
            latencies.len() as f64 / elapsed.as_secs_f64(),
            errors,
            ms(percentile(&latencies, 0.50)),
            ms(p99),
            ms(percentile(&latencies, 0.999))
        );
        if p99 > Duration::from_secs(1) || errors * 100 > total {
            println!("stopping: the server no longer keeps up at {rate}/s");
            break;
        }
    }
    if let Some(pid) = server.id() {
        let _ = std::process::Command::new("kill").args(["-s", "INT", &pid.to_string()]).status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(60), server.wait()).await;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}
