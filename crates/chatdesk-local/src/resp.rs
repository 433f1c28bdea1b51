//! Just enough RESP to ask a Redis we started whether it is ready (PING, CLUSTER INFO), without
//! pulling a client library into this crate.

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Sends one command and returns a simple-string or bulk-string reply; an error reply or any
/// I/O problem is `Err(text)`.
pub async fn command(port: u16, args: &[&str]) -> Result<String, String> {
    command_as(port, None, args).await
}

/// [`command`] on a server that wants `AUTH <password>` first.
pub async fn command_as(port: u16, password: Option<&str>, args: &[&str]) -> Result<String, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|error| error.to_string())?;
        let mut request = String::new();
        if let Some(password) = password {
            encode(&mut request, &["AUTH", password]);
        }
        encode(&mut request, args);
        stream.write_all(request.as_bytes()).await.map_err(|error| error.to_string())?;
        let mut reader = BufReader::new(stream);
        if password.is_some() {
            read_reply(&mut reader).await?;
        }
        read_reply(&mut reader).await
    };
    tokio::time::timeout(Duration::from_secs(2), exchange).await.unwrap_or_else(|_| Err("timed out".to_owned()))
}

fn encode(request: &mut String, args: &[&str]) {
    request.push_str(&format!("*{}\r\n", args.len()));
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
}

async fn read_reply(reader: &mut (impl AsyncBufRead + Unpin)) -> Result<String, String> {
    let mut line = String::new();
    reader.read_line(&mut line).await.map_err(|error| error.to_string())?;
    let line = line.trim_end();
    match line.chars().next() {
        Some('+') => Ok(line[1..].to_owned()),
        Some(':') => Ok(line[1..].to_owned()),
        Some('-') => Err(line[1..].to_owned()),
        Some('$') => {
            let len: usize = line[1..].parse().map_err(|_| format!("bad bulk length {line:?}"))?;
            let mut body = vec![0u8; len + 2];
            reader.read_exact(&mut body).await.map_err(|error| error.to_string())?;
            body.truncate(len);
            String::from_utf8(body).map_err(|error| error.to_string())
        }
        _ => Err(format!("unexpected reply {line:?}")),
    }
}
