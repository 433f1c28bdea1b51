//! An SMTP stand-in: a real SMTP server on a loopback port (RFC 5321's commands, no TLS or AUTH)
//! that records every message it is given.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// Headers and body as sent (dot-stuffing undone).
    pub data: String,
}

impl Mail {
    /// The message as its reader sees it: headers, and the body with a quoted-printable
    /// transfer encoding undone.
    pub fn text(&self) -> String {
        if !self.data.contains("Content-Transfer-Encoding: quoted-printable") {
            return self.data.clone();
        }
        let unfolded = self.data.replace("=\r\n", "").replace("=\n", "");
        let bytes = unfolded.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut index = 0;
        while index < bytes.len() {
            let hex = bytes.get(index + 1..index + 3).and_then(|pair| std::str::from_utf8(pair).ok());
            match (bytes[index], hex.and_then(|pair| u8::from_str_radix(pair, 16).ok())) {
                (b'=', Some(byte)) => {
                    out.push(byte);
                    index += 3;
                }
                (byte, _) => {
                    out.push(byte);
                    index += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[derive(Clone)]
pub struct SmtpStandIn {
    pub addr: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl SmtpStandIn {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let kept = mails.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let mails = kept.clone();
                tokio::spawn(async move {
                    let _ = session(socket, mails).await;
                });
            }
        });
        Self { addr, mails }
    }

    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// Waits until `count` messages arrived (up to 60 s); returns them all.
    pub async fn wait_for(&self, count: usize) -> Vec<Mail> {
        chatdesk_testkit::eventually(&format!("{count} e-mails"), Duration::from_secs(60), || async {
            let mails = self.mails.lock().unwrap();
            (mails.len() >= count).then(|| mails.clone())
        })
        .await
    }
}

async fn session(socket: tokio::net::TcpStream, mails: Arc<Mutex<Vec<Mail>>>) -> std::io::Result<()> {
    let (reader, mut writer) = socket.into_split();
    let mut lines = BufReader::new(reader);
    writer.write_all(b"220 standin ESMTP\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        let answer: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250-standin\r\n250 8BITMIME\r\n"
        } else if let Some(address) = upper.strip_prefix("MAIL FROM:") {
            from = command[command.len() - address.len()..].trim().to_owned();
            to.clear();
            b"250 OK\r\n"
        } else if let Some(address) = upper.strip_prefix("RCPT TO:") {
            to.push(command[command.len() - address.len()..].trim().trim_matches(['<', '>']).to_owned());
            b"250 OK\r\n"
        } else if upper == "DATA" {
            writer.write_all(b"354 end with .\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line.trim_end_matches(['\r', '\n']) == "." {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            mails.lock().unwrap().push(Mail { from: from.clone(), to: to.clone(), data });
            b"250 queued\r\n"
        } else if upper == "QUIT" {
            writer.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            b"250 OK\r\n"
        } else {
            b"502 not implemented\r\n"
        };
        writer.write_all(answer).await?;
    }
}
