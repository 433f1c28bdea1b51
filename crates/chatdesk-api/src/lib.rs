//! chatdesk's HTTP surface (axum): the dashboard at `/`, liveness, readiness and Prometheus
//! metrics in every process, and the public API under `/v1`.
//!
//! - [`auth`]: agent tokens, API keys, passwords, and the [`auth::Principal`] of a request.
//! - [`login`], [`conversations`]: the `/v1` REST handlers.
//! - [`ingress`]: channel webhooks (generic, WhatsApp, Telegram) and the web widget.
//! - [`extract`]: body, path and query extractors whose errors name what is wrong.
//! - [`openapi`]: the OpenAPI document, generated from the handlers.
//! - [`ops_router`], [`api_router`] and [`finish`] build the application; [`serve`] runs it
//!   until cancelled.
//! - [`error::ApiError`]: the one error type of every handler, rendered as
//!   `{"error": {"code", "message", "details"}}` with a stable `code`.
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`metrics`]: `/metrics` and the per-request metrics middleware.

pub mod auth;
pub mod autoreply;
pub mod campaigns;
pub mod conversations;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod health;
pub mod inboxes;
pub mod ingress;
pub mod login;
pub mod metrics;
pub mod openapi;
pub mod sre;
pub mod workspace;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use chatdesk_core::KeyScheme;
use chatdesk_streams::{Producer, RedisClient};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// What handlers share. Axum clones it for every extractor and middleware of every request, so
/// it is one reference count: cloning its parts one by one cost a webhook dozens of atomic
/// increments and decrements, about a twentieth of the process's CPU under webhook load.
#[derive(Clone)]
pub struct AppState(std::sync::Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub redis: RedisClient,
    pub db: chatdesk_store::Pool,
    pub metrics: PrometheusHandle,
    pub auth: auth::TokenKey,
    pub producer: Producer,
    pub directory: chatdesk_conversations::Directory,
    pub inboxes: chatdesk_conversations::InboxCache,
    pub reply: chatdesk_conversations::Reply,
    /// Bounds password hashing (see [`login`]).
    pub logins: login::Guard,
    /// Client addresses refused for failing webhook signatures too often.
    pub signature_gate: ingress::SignatureGate,
    /// When set, `/metrics` answers only `Authorization: Bearer <this>` (`CHATDESK_METRICS_TOKEN`).
    pub metrics_token: Option<std::sync::Arc<str>>,
    pub ingress: ingress::IngressSettings,
    pub keys: KeyScheme,
    /// The bot the test chat talks to, and the loaded dialog flows ([`AppState::with_bot`]).
    pub bot: chatdesk_autoreply::Bot,
    /// The operators' tools behind `/v1/ops` ([`sre`]).
    pub ops: chatdesk_ops::Ops,
    /// The operators' tenant (`CHATDESK_OPS_TENANT`); unset: the first tenant created.
    pub ops_tenant: Option<uuid::Uuid>,
    /// Searches this process runs at once (`GET /v1/search`).
    pub searches: std::sync::Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// Everything handlers share, built from the process's connections and settings.
    pub fn new(
        redis: RedisClient,
        db: chatdesk_store::Pool,
        metrics: PrometheusHandle,
        auth: auth::TokenKey,
        keys: KeyScheme,
        streams: std::sync::Arc<chatdesk_core::StreamsConfig>,
        ingress: ingress::IngressSettings,
    ) -> Self {
        let producer = Producer::new(redis.clone(), keys.clone(), streams.clone());
        let ops = chatdesk_ops::Ops {
            redis: redis.clone(),
            db: Some(db.clone()),
            keys: keys.clone(),
            streams: streams.clone(),
        };
        let bot_redis = redis.clone();
        Self(std::sync::Arc::new(Shared {
            directory: chatdesk_conversations::Directory::new(redis.clone(), keys.clone(), streams),
            inboxes: chatdesk_conversations::InboxCache::new(db.clone(), redis.clone(), keys.clone()),
            reply: chatdesk_conversations::Reply::new(producer.clone(), redis.clone(), keys.clone(), db.clone()),
            logins: login::Guard::default(),
            metrics_token: None,
            signature_gate: ingress::SignatureGate::default(),
            redis,
            db,
            metrics,
            auth,
            producer,
            bot: chatdesk_autoreply::bot(
                bot_redis,
                keys.clone(),
                &chatdesk_autoreply::AutoReplySettings { policy: ingress.outbound.clone(), ..Default::default() },
            )
            .expect("the model endpoints' HTTP client builds"),
            ingress,
            keys,
            ops,
            ops_tenant: None,
            searches: std::sync::Arc::new(tokio::sync::Semaphore::new(4)),
        }))
    }

    /// The parts to change while the state is being built. Building goes before any router gets
    /// the state: a change to a copy would leave a router serving without it (an open `/metrics`,
    /// say), so a builder called too late panics at start-up instead.
    fn parts(&mut self) -> &mut Shared {
        std::sync::Arc::get_mut(&mut self.0).expect("the state is built before it is shared")
    }

    /// Uses the process's bot settings (its flows, budget and outbound policy).
    pub fn with_bot(mut self, settings: &chatdesk_autoreply::AutoReplySettings) -> Self {
        let bot = chatdesk_autoreply::bot(self.redis.clone(), self.keys.clone(), settings)
            .expect("the model endpoints' HTTP client builds");
        self.parts().bot = bot;
        self
    }

    /// Webhooks' messages go into the streams over `connections`, taken in turn, instead of the
    /// one shared connection (see [`chatdesk_streams::Connections`]).
    pub fn with_ingest_connections(mut self, connections: chatdesk_streams::Connections) -> Self {
        let directory =
            chatdesk_conversations::Directory::over(connections, self.keys.clone(), self.ops.streams.clone());
        self.parts().directory = directory;
        self
    }

    /// The operators' tenant (`CHATDESK_OPS_TENANT`); `None`: the first tenant created.
    pub fn with_ops_tenant(mut self, tenant: Option<uuid::Uuid>) -> Self {
        self.parts().ops_tenant = tenant;
        self
    }

    /// `/metrics` answers only `Authorization: Bearer <token>` (`CHATDESK_METRICS_TOKEN`).
    pub fn with_metrics_token(mut self, token: Option<std::sync::Arc<str>>) -> Self {
        self.parts().metrics_token = token;
        self
    }
}

/// Health, readiness, metrics, the dashboard and the widget: served by every process, whatever
/// its roles.
pub fn ops_router(state: AppState) -> Router {
    let (router, _) = ops_routes().split_for_parts();
    router.merge(dashboard::routes()).with_state(state)
}

fn ops_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::render))
}

fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login::login))
        .routes(routes!(login::logout))
        .routes(routes!(conversations::list_conversations))
        .routes(routes!(conversations::get_conversation))
        .routes(routes!(conversations::list_messages, conversations::reply))
        .routes(routes!(conversations::assign))
        .routes(routes!(conversations::resolve))
        .routes(routes!(conversations::reopen))
        .routes(routes!(conversations::block))
        .routes(routes!(workspace::create_note, workspace::list_notes))
        .routes(routes!(workspace::list_labels, workspace::create_label))
        .routes(routes!(workspace::delete_label))
        .routes(routes!(workspace::change_labels))
        .routes(routes!(workspace::list_canned, workspace::create_canned))
        .routes(routes!(workspace::update_canned, workspace::delete_canned))
        .routes(routes!(workspace::rendered_canned))
        .routes(routes!(workspace::get_contact, workspace::update_contact))
        .routes(routes!(workspace::merge_contacts))
        .routes(routes!(workspace::search))
        .routes(routes!(workspace::list_users))
        .routes(routes!(workspace::get_members, workspace::put_members))
        .routes(routes!(workspace::get_routing, workspace::put_routing))
        .routes(routes!(inboxes::list_inboxes))
        .routes(routes!(inboxes::update_inbox))
        .routes(routes!(autoreply::get_autoreply, autoreply::put_autoreply))
        .routes(routes!(autoreply::test_autoreply))
        .routes(routes!(autoreply::list_flows))
        .routes(routes!(autoreply::usage))
        .routes(routes!(autoreply::list_orders))
        .routes(routes!(sre::streams_status))
        .routes(routes!(sre::streams_history))
        .routes(routes!(sre::replay))
        .routes(routes!(sre::list_dead_letters))
        .routes(routes!(sre::show_dead_letter))
        .routes(routes!(sre::redrive))
        .routes(routes!(sre::purge))
        .routes(routes!(sre::claim))
        .routes(routes!(sre::prune))
        .routes(routes!(sre::list_tasks))
        .routes(routes!(sre::get_task))
        .routes(routes!(sre::cancel_task))
        .routes(routes!(sre::audit))
        .routes(routes!(ingress::generic::receive))
        .routes(routes!(ingress::whatsapp::receive, ingress::whatsapp::verify))
        .routes(routes!(ingress::telegram::receive))
}

/// Campaigns take large bodies: a CSV of up to 100,000 recipients.
fn campaign_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(campaigns::create_campaign, campaigns::list_campaigns))
        .routes(routes!(campaigns::get_campaign))
        .routes(routes!(campaigns::list_recipients))
        .routes(routes!(campaigns::pause_campaign))
        .routes(routes!(campaigns::resume_campaign))
        .routes(routes!(campaigns::cancel_campaign))
        .layer(axum::extract::DefaultBodyLimit::max(campaigns::MAX_CAMPAIGN_BODY_BYTES))
}

/// The widget's routes answer any origin: the widget runs on customers' own sites.
fn widget_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ingress::widget::start_session))
        .routes(routes!(ingress::widget::post_message, ingress::widget::history))
        .layer(tower_http::cors::CorsLayer::permissive())
}

/// The whole OpenAPI document: every operational and `/v1` route.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut document = openapi::ApiDoc::openapi();
    document.merge(ops_routes().into_openapi());
    document.merge(api_routes().into_openapi());
    document.merge(widget_routes().into_openapi());
    document.merge(campaign_routes().into_openapi());
    declare_common_errors(&mut document);
    document
}

/// The answers every route can give before its handler runs, declared on every operation they
/// apply to: 400 for an id, query or body that cannot be read, 413 for a body over the limit and
/// 415 for a body that is not JSON. Clients generated from the document then know all of them.
fn declare_common_errors(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let error = |description: String| {
        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
        RefOr::T(ResponseBuilder::new().description(description).content("application/json", content).build())
    };
    for item in document.paths.paths.values_mut() {
        let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for operation in operations.into_iter().flatten() {
            let has_parameters = operation.parameters.as_ref().is_some_and(|parameters| !parameters.is_empty());
            let has_body = operation.request_body.is_some();
            let responses = &mut operation.responses.responses;
            // The HTTP layer answers these itself, before any route, whatever the operation.
            responses.entry("400".into()).or_insert_with(|| {
                let what = if has_parameters || has_body {
                    "A path id, query parameter or JSON body that cannot be read (invalid_path, invalid_query, invalid_json), or a malformed request"
                } else {
                    "A malformed request (for example a header value that is not valid)"
                };
                error(what.into())
            });
            responses
                .entry("414".into())
                .or_insert_with(|| error("The URI is too long; the answer may have no body".into()));
            responses
                .entry("431".into())
                .or_insert_with(|| error("Too many or too large request headers; the answer may have no body".into()));
            if has_body {
                responses.entry("413".into()).or_insert_with(|| {
                    error(format!("The body is larger than {} KiB (payload_too_large)", MAX_BODY_BYTES / 1024))
                });
                responses.entry("415".into()).or_insert_with(|| {
                    error("The body is not sent as Content-Type: application/json (unsupported_media_type)".into())
                });
            }
        }
    }
}

/// The public API under `/v1`, served by the `ingress` role, with its OpenAPI document at
/// `/v1/openapi.json`.
pub fn api_router(state: AppState) -> Router {
    let (router, _) = api_routes().merge(widget_routes()).merge(campaign_routes()).split_for_parts();
    let document = openapi_document();
    let router =
        router.route_layer(axum::middleware::from_fn_with_state(state.clone(), ingress::limit_failed_signatures));
    router
        .route("/v1", get(info).layer(tower_http::cors::CorsLayer::permissive()))
        .route("/v1/openapi.json", get(move || async move { axum::Json(document.clone()) }))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Layers every route shares: JSON 404s, request metrics and traces, a request timeout.
pub fn finish(router: Router) -> Router {
    router
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn(metrics::track_requests))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
}

/// `GET /v1`: what a client talks to.
/// `websocket_url` is where clients open the protocol (`null`: `/v1/ws` on this host).
async fn info(axum::extract::State(state): axum::extract::State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "service": "chatdesk",
        "version": env!("CARGO_PKG_VERSION"),
        "api": "v1",
        "websocket_url": state.ingress.websocket_url,
    }))
}

/// How the HTTP server treats its connections.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// A client must send a request's headers within this time: a connection that dribbles them
    /// (slowloris) or idles before its first request is closed.
    pub header_read_timeout: Duration,
    /// Connections open at once (WebSockets included); past it, new ones are closed at once.
    pub max_connections: usize,
    /// After `cancel`, how long requests in flight get to finish.
    pub shutdown_grace: Duration,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`CHATDESK_TRUSTED_PROXIES`):
    /// per-address limits then count the client, not the proxy. Empty: the header is ignored
    /// (anyone could write it).
    pub trusted_proxies: chatdesk_core::outbound::Networks,
}

/// The client a request comes from: the peer, or, when the peer is a trusted proxy, the
/// right-most address in `X-Forwarded-For` that is not itself a trusted proxy (addresses to its
/// left were written by whoever the client is, and prove nothing).
fn client_address(
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
    trusted: &chatdesk_core::outbound::Networks,
) -> SocketAddr {
    if trusted.is_empty() || !trusted.contains(peer.ip()) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in forwarded.iter().rev() {
        let Ok(ip) = hop.parse::<std::net::IpAddr>() else { return peer };
        if !trusted.contains(ip) {
            return SocketAddr::new(ip, peer.port());
        }
    }
    peer
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 50_000,
            shutdown_grace: Duration::from_secs(30),
            trusted_proxies: Default::default(),
        }
    }
}

pub const CONNECTIONS: &str = "chatdesk_http_connections";
pub const CONNECTIONS_REFUSED_TOTAL: &str = "chatdesk_http_connections_refused_total";

/// Serves `router` on `listener` until `cancel` fires, then lets requests in flight finish.
pub async fn serve(listener: TcpListener, app: Router, cancel: CancellationToken) -> std::io::Result<()> {
    serve_with(listener, app, cancel, ServeLimits::default()).await
}

/// [`serve`] with explicit limits. Each connection is HTTP/1.1 (WebSocket upgrades included),
/// knows its peer's address (for per-address limits), and must send its headers in time.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    cancel: CancellationToken,
    limits: ServeLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let address: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(address = ?address, "http server listening");
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let connections = tokio_util::task::TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ::metrics::counter!(CONNECTIONS_REFUSED_TOTAL).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // The slot goes with the socket, not with the HTTP exchange: a WebSocket keeps it after
        // the upgrade, for as long as it is open.
        let stream = Held::new(stream, slot);
        let trusted = limits.trusted_proxies.clone();
        let service = app.clone().map_request(move |mut request: axum::extract::Request<hyper::body::Incoming>| {
            let client = client_address(peer, request.headers(), &trusted);
            request.extensions_mut().insert(axum::extract::ConnectInfo(client));
            request
        });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let connection = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
        let cancel = cancel.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    if tokio::time::timeout(limits.shutdown_grace, connections.wait()).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace period");
    }
    Ok(())
}

/// A client's socket holding one of the server's connection slots until it is dropped (after an
/// upgrade, that is when the WebSocket closes).
struct Held {
    stream: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Held {
    fn new(stream: tokio::net::TcpStream, slot: tokio::sync::OwnedSemaphorePermit) -> Self {
        ::metrics::gauge!(CONNECTIONS).increment(1.0);
        Self { stream, _slot: slot }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        ::metrics::gauge!(CONNECTIONS).decrement(1.0);
    }
}

impl tokio::io::AsyncRead for Held {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(context, buffer)
    }
}

impl tokio::io::AsyncWrite for Held {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(context, buffer)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(context)
    }
}
