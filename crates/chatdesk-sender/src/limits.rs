//! Provider rate limits, shared by every sender process through Redis.
//!
//! Each bucket is a sliding-window log (a sorted set of send times) checked and updated by one
//! Lua script, so N processes together never exceed "`count` per `window`" in any window, not
//! just on average. A provider's own throttling answer pauses a bucket (a key with a TTL) for
//! the time it asks.
//!
//! **The limit holds where the provider counts: at arrival.** A request arrives some time after
//! its slot was taken (the process may be scheduled late, a connection may need opening). So a
//! slot is logged in the future, at `taken + IN_FLIGHT_HOLD`, and counts against the window for
//! as long as the call is in flight; when the call returns, [`Limiter::release`] moves it back
//! to the time of the answer, which is after the arrival. For any window at the provider, every
//! request that arrived in it was therefore still in the log when the last of them took its
//! slot. Only a request that takes longer than the hold to *arrive* (not to be answered) could
//! break that, and the hold is generous for that.
//!
//! **Replies go first.** Campaign sends and agents' replies share a number's bucket. A reply
//! that finds the bucket full marks it wanted for a moment; while it is, campaign sends keep out
//! of it, so a reply waits for at most one window however large the broadcast.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use chatdesk_core::KeyScheme;
use chatdesk_core::duration::parse_duration;
use chatdesk_streams::Script;
use fred::prelude::*;

/// The kinds of bucket, named as in `CHATDESK_SEND_LIMITS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BucketKind {
    /// Per WhatsApp business phone number.
    WhatsappAccount,
    /// Per WhatsApp recipient (pair rate).
    WhatsappRecipient,
    /// Per Telegram bot, all chats together.
    TelegramBot,
    /// Per Telegram private chat.
    TelegramChat,
    /// Per Telegram group chat.
    TelegramGroup,
    /// Per generic-channel inbox (its outbound URL).
    GenericAccount,
    /// Per campaign sender (an inbox) at the campaign's own rate; its limit comes with the
    /// message, not from `CHATDESK_SEND_LIMITS`.
    CampaignSender,
}

impl BucketKind {
    pub const ALL: [BucketKind; 6] = [
        BucketKind::WhatsappAccount,
        BucketKind::WhatsappRecipient,
        BucketKind::TelegramBot,
        BucketKind::TelegramChat,
        BucketKind::TelegramGroup,
        BucketKind::GenericAccount,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BucketKind::WhatsappAccount => "whatsapp.account",
            BucketKind::WhatsappRecipient => "whatsapp.recipient",
            BucketKind::TelegramBot => "telegram.bot",
            BucketKind::TelegramChat => "telegram.chat",
            BucketKind::TelegramGroup => "telegram.group",
            BucketKind::GenericAccount => "generic.account",
            BucketKind::CampaignSender => "campaign.sender",
        }
    }

    /// The providers' documented limits.
    fn default_limit(self) -> Limit {
        let limit = |count, seconds| Limit { count, window: Duration::from_secs(seconds) };
        match self {
            BucketKind::WhatsappAccount => limit(80, 1),
            // About one message per 6 s to one user, with short bursts allowed.
            BucketKind::WhatsappRecipient => limit(5, 30),
            BucketKind::TelegramBot => limit(30, 1),
            BucketKind::TelegramChat => limit(1, 1),
            BucketKind::TelegramGroup => limit(20, 60),
            BucketKind::GenericAccount => limit(50, 1),
            BucketKind::CampaignSender => limit(5, 1),
        }
    }
}

impl fmt::Display for BucketKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// `count` sends per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub count: u32,
    pub window: Duration,
}

/// How long a taken slot counts as "arriving now or later" while its call has not returned.
pub const IN_FLIGHT_HOLD: Duration = Duration::from_millis(250);

/// How long a reply that found its bucket full keeps campaign sends out of it.
const REPLY_WANTS_FOR: Duration = Duration::from_millis(1500);

/// Every bucket kind's limit; `None` turns a kind off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    limits: BTreeMap<BucketKind, Option<Limit>>,
}

impl Default for Limits {
    fn default() -> Self {
        Self { limits: BucketKind::ALL.iter().map(|&kind| (kind, Some(kind.default_limit()))).collect() }
    }
}

impl Limits {
    pub fn get(&self, kind: BucketKind) -> Option<Limit> {
        self.limits.get(&kind).copied().flatten()
    }
}

/// Overrides of the defaults: `kind=count/window` or `kind=off`, comma-separated, e.g.
/// `whatsapp.account=1000/1s,generic.account=off`.
impl FromStr for Limits {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut limits = Limits::default();
        for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected `<bucket>=<count>/<window>` or `=off`"))?;
            let kind = BucketKind::ALL.into_iter().find(|kind| kind.name() == name.trim()).ok_or_else(|| {
                let names: Vec<&str> = BucketKind::ALL.iter().map(|kind| kind.name()).collect();
                format!("{name:?}: unknown bucket; buckets are {}", names.join(", "))
            })?;
            let value = value.trim();
            let limit = if value == "off" {
                None
            } else {
                let (count, window) =
                    value.split_once('/').ok_or_else(|| format!("{name}: {value:?} is not `<count>/<window>`"))?;
                let count: u32 = count
                    .trim()
                    .parse()
                    .ok()
                    .filter(|count| *count > 0)
                    .ok_or_else(|| format!("{name}: {count:?} is not a positive whole number"))?;
                let window = parse_duration(window.trim()).map_err(|error| format!("{name}: {error}"))?;
                if window < Duration::from_millis(100) || window > Duration::from_secs(86_400) {
                    return Err(format!("{name}: the window must be between 100ms and 24h"));
                }
                Some(Limit { count, window })
            };
            limits.limits.insert(kind, limit);
        }
        Ok(limits)
    }
}

/// One bucket a send must fit into: its kind and whose it is (a phone number id, a chat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub kind: BucketKind,
    pub scope: String,
    /// This send's own limit instead of the kind's (a campaign's rate).
    pub limit: Option<Limit>,
}

impl Bucket {
    pub fn new(kind: BucketKind, scope: impl Into<String>) -> Self {
        Self { kind, scope: scope.into(), limit: None }
    }

    pub fn with_limit(mut self, limit: Limit) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// Who is sending: campaign sends yield a shared bucket to replies waiting for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Reply,
    Campaign,
}

/// The slots one send took, to give back their in-flight hold when the call returns.
#[derive(Debug, Clone, Default)]
pub struct Taken {
    logs: Vec<String>,
    member: String,
}

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: log, pause, wanted. ARGV: count, window ms, member, hold ms, campaign (1/0), wanted ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then
  return paused
end
local window = tonumber(ARGV[2])
local hold = tonumber(ARGV[4])
local campaign = ARGV[5] == '1'
if campaign then
  local wanted = redis.call('PTTL', KEYS[3])
  if wanted > 0 then
    return math.min(wanted, 50)
  end
end
-- `now` is truncated to the millisecond: a slot frees only when its send is more than a whole
-- window old, so no two sends a window apart can land in one window at the provider.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window - 1)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + hold, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window + hold)
  return 0
end
if not campaign then
  redis.call('SET', KEYS[3], '1', 'PX', tonumber(ARGV[6]))
end
local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
if oldest > now then
  -- Still in flight: it moves back when its call returns.
  return math.min(oldest + window + 1 - now, 20)
end
return math.max(1, oldest + window + 1 - now)
"#,
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > now then
  redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
end
return 1
"#,
    )
});

static PAUSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', tonumber(ARGV[1]))
end
return 1
"#,
    )
});

#[derive(Clone)]
pub struct Limiter {
    redis: Client,
    keys: KeyScheme,
    limits: Limits,
}

impl Limiter {
    pub fn new(redis: Client, keys: KeyScheme, limits: Limits) -> Self {
        Self { redis, keys, limits }
    }

    fn bucket_keys(&self, bucket: &Bucket) -> (String, String, String) {
        let tag = format!("{}:{}", bucket.kind, bucket.scope);
        (
            self.keys.tagged("ratelimit", &tag),
            self.keys.tagged("ratelimit.pause", &tag),
            self.keys.tagged("ratelimit.wanted", &tag),
        )
    }

    /// Takes a slot in each bucket, in order, or returns how long to wait and the bucket that
    /// is full. `member` must be unique per call. Slots taken before a full bucket are given
    /// back, since that send does not happen now.
    pub async fn acquire(
        &self,
        buckets: &[Bucket],
        member: &str,
        priority: Priority,
    ) -> Result<Result<Taken, (Duration, BucketKind)>, Error> {
        let mut taken = Taken { logs: Vec::with_capacity(buckets.len()), member: member.to_owned() };
        for bucket in buckets {
            let Some(limit) = bucket.limit.or_else(|| self.limits.get(bucket.kind)) else { continue };
            let (log, pause, wanted) = self.bucket_keys(bucket);
            let wait: i64 = ACQUIRE
                .call(
                    &self.redis,
                    vec![log.clone(), pause, wanted],
                    vec![
                        limit.count.to_string(),
                        limit.window.as_millis().to_string(),
                        member.to_owned(),
                        IN_FLIGHT_HOLD.as_millis().to_string(),
                        if priority == Priority::Campaign { "1" } else { "0" }.to_owned(),
                        REPLY_WANTS_FOR.max(limit.window).as_millis().to_string(),
                    ],
                )
                .await?;
            if wait > 0 {
                for log in &taken.logs {
                    let _: i64 = self.redis.zrem(log, member).await?;
                }
                return Ok(Err((Duration::from_millis(wait as u64), bucket.kind)));
            }
            taken.logs.push(log);
        }
        Ok(Ok(taken))
    }

    /// The call of `taken` returned: its slots count from now, no longer from the future.
    pub async fn release(&self, taken: &Taken) -> Result<(), Error> {
        for log in &taken.logs {
            let _: i64 = RELEASE.call(&self.redis, vec![log.clone()], vec![taken.member.clone()]).await?;
        }
        Ok(())
    }

    /// Pauses `bucket` for `duration` (a provider asked us to slow down).
    pub async fn pause(&self, bucket: &Bucket, duration: Duration) -> Result<(), Error> {
        let (_, pause, _) = self.bucket_keys(bucket);
        let _: i64 = PAUSE.call(&self.redis, vec![pause], vec![duration.as_millis().max(1).to_string()]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_mistakes_are_named() {
        let limits: Limits = "generic.account=10/1s, telegram.chat=off".parse().unwrap();
        assert_eq!(limits.get(BucketKind::GenericAccount), Some(Limit { count: 10, window: Duration::from_secs(1) }));
        assert_eq!(limits.get(BucketKind::TelegramChat), None);
        assert_eq!(limits.get(BucketKind::WhatsappAccount), Some(Limit { count: 80, window: Duration::from_secs(1) }));
        assert_eq!("".parse::<Limits>().unwrap(), Limits::default());
        for (bad, says) in [
            ("sms.account=1/1s", "unknown bucket"),
            ("generic.account", "expected"),
            ("generic.account=0/1s", "positive whole number"),
            ("generic.account=10", "is not `<count>/<window>`"),
            ("generic.account=10/1ms", "between 100ms and 24h"),
            ("generic.account=10/soon", "generic.account:"),
        ] {
            let error = bad.parse::<Limits>().unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
