//! The store against a real PostgreSQL.

mod writer;

#[tokio::test]
async fn migrations_apply_once_and_are_idempotent() {
    let postgres = chatdesk_testkit::postgres().await;
    let pool = chatdesk_store::connect(postgres.url(), 4).await.unwrap();
    // Two processes starting together: both run the migrator, each migration applies once.
    let (first, second) = tokio::join!(chatdesk_store::migrate(&pool), chatdesk_store::migrate(&pool));
    first.unwrap();
    second.unwrap();
    chatdesk_store::migrate(&pool).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool).await.unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations")).unwrap().count() as i64;
    assert_eq!(applied, files, "every migration file applied exactly once");
    chatdesk_store::ping(&pool).await.unwrap();
}
