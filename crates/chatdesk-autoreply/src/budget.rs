//! A tenant's daily ceiling on model use, set by the operator: calls and tokens per UTC day,
//! counted in Redis across every process. A call is counted before it is made, by one script, so
//! concurrent conversations never overshoot the call ceiling; tokens are counted when the answer
//! comes, so the token ceiling can be passed by the calls already in flight.

use chatdesk_core::{KeyScheme, TenantId};
use chatdesk_streams::{RedisClient, Script};
use fred::prelude::*;
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Model calls per tenant per UTC day; 0: no limit.
    pub daily_calls: u64,
    /// Tokens (prompt and completion) per tenant per UTC day; 0: no limit.
    pub daily_tokens: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { daily_calls: 5_000, daily_tokens: 2_000_000 }
    }
}

/// Today's use and what is left (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub calls_used: u64,
    pub calls_limit: Option<u64>,
    pub tokens_used: u64,
    pub tokens_limit: Option<u64>,
}

#[derive(Clone)]
pub struct Budget {
    redis: RedisClient,
    keys: KeyScheme,
    pub limits: Limits,
}

fn today() -> u64 {
    chatdesk_core::envelope::now_ms() / 86_400_000
}

/// ARGV: daily calls, daily tokens (0: no limit), key TTL. Returns 1 when the call is counted.
static TAKE_CALL: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
local calls_limit, tokens_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if tokens_limit > 0 and tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0') >= tokens_limit then return 0 end
if calls_limit > 0 and tonumber(redis.call('HGET', KEYS[1], 'calls') or '0') >= calls_limit then return 0 end
redis.call('HINCRBY', KEYS[1], 'calls', 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"#,
    )
});

/// Two days: a key outlives its day even across time-zone confusion, then goes.
const KEY_TTL_SECONDS: i64 = 2 * 86_400;

impl Budget {
    pub fn new(redis: RedisClient, keys: KeyScheme, limits: Limits) -> Self {
        Self { redis, keys, limits }
    }

    fn key(&self, tenant: Uuid) -> String {
        self.keys.autoreply_budget(&TenantId(tenant), today())
    }

    /// Counts one call; `false` (and nothing counted) when the day's calls or tokens are spent.
    /// One script: the check and the count are one step, so concurrent conversations never
    /// overshoot the call limit.
    pub async fn take_call(&self, tenant: Uuid) -> Result<bool, Error> {
        let args = vec![
            self.limits.daily_calls.to_string(),
            self.limits.daily_tokens.to_string(),
            KEY_TTL_SECONDS.to_string(),
        ];
        let taken: i64 = TAKE_CALL.call(&self.redis, vec![self.key(tenant)], args).await?;
        Ok(taken == 1)
    }

    pub async fn spend_tokens(&self, tenant: Uuid, tokens: u64) -> Result<(), Error> {
        if tokens == 0 {
            return Ok(());
        }
        let _: i64 = self.redis.hincrby(self.key(tenant), "tokens", tokens as i64).await?;
        Ok(())
    }

    pub async fn usage(&self, tenant: Uuid) -> Result<Usage, Error> {
        let (calls, tokens): (Option<u64>, Option<u64>) =
            self.redis.hmget(self.key(tenant), vec!["calls", "tokens"]).await?;
        let limit = |value: u64| (value > 0).then_some(value);
        Ok(Usage {
            calls_used: calls.unwrap_or(0),
            calls_limit: limit(self.limits.daily_calls),
            tokens_used: tokens.unwrap_or(0),
            tokens_limit: limit(self.limits.daily_tokens),
        })
    }
}
