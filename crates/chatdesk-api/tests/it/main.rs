//! The HTTP surface against real Redis and PostgreSQL.

use std::net::SocketAddr;
use std::time::Duration;

use chatdesk_api::AppState;
use chatdesk_streams::{RedisConnector, RedisSettings};
use chatdesk_testkit::{RedisPersistence, http_get};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio_util::sync::CancellationToken;

async fn serve(state: AppState) -> (SocketAddr, CancellationToken) {
    let app = chatdesk_api::finish(chatdesk_api::ops_router(state.clone()).merge(chatdesk_api::api_router(state)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(chatdesk_api::serve(listener, app, cancel.clone()));
    (address, cancel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_and_errors_are_json() {
    let mut redis = chatdesk_testkit::private_redis(RedisPersistence::None).await;
    let postgres = chatdesk_testkit::postgres().await;
    let redis_client = RedisConnector::new(RedisSettings::new(redis.url())).unwrap().shared().await.unwrap();
    let keys = chatdesk_core::KeyScheme::new(chatdesk_testkit::unique_prefix()).unwrap();
    let streams = std::sync::Arc::new(
        chatdesk_core::StreamsConfig::from_toml_str("streams.toml", include_str!("../../../../streams.toml")).unwrap(),
    );
    let state = AppState::new(
        redis_client,
        chatdesk_store::connect(postgres.url(), 2).await.unwrap(),
        PrometheusBuilder::new().build_recorder().handle(),
        chatdesk_api::auth::TokenKey::new(&[1u8; 32]).unwrap(),
        keys,
        streams,
        chatdesk_api::ingress::IngressSettings::default(),
    );
    let (address, cancel) = serve(state).await;

    let (status, body) = http_get(address, "/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(http_get(address, "/healthz").await.unwrap().0, 200);
    let (status, body) = http_get(address, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("<title>chatdesk</title>"));
    let (status, body) = http_get(address, "/v1/nothing-here").await.unwrap();
    assert_eq!(status, 404);
    assert!(body.contains(r#""code":"not_found""#), "{body}");

    redis.server().unwrap().kill().await;
    chatdesk_testkit::wait_until("/readyz reports Redis down", Duration::from_secs(30), || async {
        matches!(http_get(address, "/readyz").await, Ok((503, body)) if body.contains(r#""redis":{"error""#) && body.contains(r#""status":"unready""#))
    })
    .await;
    // Liveness does not depend on Redis: restarting the process would not help.
    assert_eq!(http_get(address, "/healthz").await.unwrap().0, 200);

    redis.server().unwrap().restart().await.unwrap();
    chatdesk_testkit::wait_until("/readyz recovers", Duration::from_secs(30), || async {
        matches!(http_get(address, "/readyz").await, Ok((200, _)))
    })
    .await;
    cancel.cancel();
}
