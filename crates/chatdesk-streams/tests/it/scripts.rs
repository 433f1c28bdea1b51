//! Scripts are called by SHA and survive a server that forgot them (a flush, a restart).

use chatdesk_streams::Script;
use chatdesk_streams::{RedisConnector, RedisSettings};
use fred::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_is_called_by_sha_and_reloaded_after_a_flush() {
    let redis = chatdesk_testkit::private_redis(chatdesk_testkit::RedisPersistence::None).await;
    let client = RedisConnector::new(RedisSettings::new(redis.url())).unwrap().shared().await.unwrap();
    let script = Script::new("return redis.call('INCR', KEYS[1])");
    let key = chatdesk_testkit::unique_prefix();
    let first: i64 = script.call(&client, vec![key.clone()], Vec::<String>::new()).await.unwrap();
    assert_eq!(first, 1);
    let known: Vec<bool> = client.script_exists(vec![script.sha()]).await.unwrap();
    assert_eq!(known, [true], "the first call leaves the script cached under its SHA");

    let _: () = client.script_flush(false).await.unwrap();
    let second: i64 = script.call(&client, vec![key.clone()], Vec::<String>::new()).await.unwrap();
    assert_eq!(second, 2, "NOSCRIPT is answered by running the script's text");
    let known: Vec<bool> = client.script_exists(vec![script.sha()]).await.unwrap();
    assert_eq!(known, [true]);
}
