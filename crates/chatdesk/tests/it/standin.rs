//! A provider stand-in: a real HTTP server on a loopback port that records every request and
//! answers as a script says (status, headers, body, and an optional delay), the way WhatsApp,
//! Telegram or a generic receiver would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub raw: String,
    pub body: Value,
}

/// What to answer.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Option<Duration>,
}

impl Answer {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![("Content-Type", "application/json".to_owned())],
            body: body.to_string(),
            delay: None,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// Decides the answer from the request and how many earlier requests had the same `key`.
pub type Script = dyn Fn(&Received, usize) -> Answer + Send + Sync;

#[derive(Clone)]
pub struct StandIn {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

struct State {
    received: Arc<Mutex<Vec<Received>>>,
    script: Box<Script>,
    key: fn(&Received) -> String,
    seen: Mutex<HashMap<String, usize>>,
}

impl StandIn {
    /// Starts the server; `key` groups requests for the script's count (e.g. by message text).
    pub async fn start(
        key: fn(&Received) -> String,
        script: impl Fn(&Received, usize) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            received: received.clone(),
            script: Box::new(script),
            key,
            seen: Mutex::new(HashMap::new()),
        });
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move { answer(state, uri, headers, body).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, received }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `check` holds for what was received (up to 60 s); checked under the lock,
    /// copied once when it holds.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        self.wait_for_within(what, Duration::from_secs(60), check).await
    }

    pub async fn wait_for_within(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        chatdesk_testkit::eventually(what, timeout, || async {
            let received = self.received.lock().unwrap();
            check(&received).then(|| received.clone())
        })
        .await
    }
}

async fn answer(state: Arc<State>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let raw = String::from_utf8_lossy(&body).into_owned();
    let request = Received {
        at: Instant::now(),
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body: serde_json::from_str(&raw).unwrap_or(Value::Null),
        raw,
    };
    state.received.lock().unwrap().push(request.clone());
    let earlier = {
        let mut seen = state.seen.lock().unwrap();
        let count = seen.entry((state.key)(&request)).or_default();
        *count += 1;
        *count - 1
    };
    let answer = (state.script)(&request, earlier);
    if let Some(delay) = answer.delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = (StatusCode::from_u16(answer.status).unwrap(), answer.body).into_response();
    for (name, value) in answer.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}
