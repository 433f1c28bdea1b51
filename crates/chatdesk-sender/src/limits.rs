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
//!
//! **One script per delivery.** A delivery's buckets (its inbox's account, its recipient or
//! chat, its campaign) are checked and taken by one script, all or none: the limits cost one
//! round trip however many buckets there are, and a full bucket never holds a slot in another.
//! For that, all of an inbox's buckets live in one Redis Cluster slot, the slot of its
//! account-wide bucket ([`BucketKind::is_account`]; for a web inbox, which has none, its
//! campaign bucket). That bucket's keys are `<prefix>:ratelimit:{<kind>:<inbox>}` (and
//! `ratelimit.pause`, `ratelimit.wanted` alike); the keys of the inbox's other buckets are
//! those followed by `:<kind>:<scope>`. The account-wide keys are named as when every bucket had a
//! slot of its own, so during an upgrade old and new senders still share the per-number limit;
//! the per-recipient, per-chat and campaign logs of the old senders are not seen by the new
//! ones until the old ones stop.

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

    /// A limit on the whole account (a phone number, a bot, a receiver's URL), one per inbox:
    /// its bucket's slot holds the inbox's other buckets too (see the module docs).
    pub fn is_account(self) -> bool {
        matches!(self, BucketKind::WhatsappAccount | BucketKind::TelegramBot | BucketKind::GenericAccount)
    }

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

/// Every bucket of one delivery, in order, all or none.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: per bucket, its log, pause and wanted keys (one slot). ARGV: member, hold ms,
-- campaign (1/0), then per bucket: count, window ms, wanted ms.
-- Answers {0, 0} when every bucket took a slot, else {ms to wait, the full bucket's position}
-- and no bucket took one.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local member = ARGV[1]
local hold = tonumber(ARGV[2])
local campaign = ARGV[3] == '1'
local buckets = #KEYS / 3
for index = 1, buckets do
  local log, pause, wanted = KEYS[index * 3 - 2], KEYS[index * 3 - 1], KEYS[index * 3]
  local count, window = tonumber(ARGV[index * 3 + 1]), tonumber(ARGV[index * 3 + 2])
  local paused = redis.call('PTTL', pause)
  if paused > 0 then
    return {paused, index}
  end
  if campaign then
    local wanted_for = redis.call('PTTL', wanted)
    if wanted_for > 0 then
      return {math.min(wanted_for, 50), index}
    end
  end
  -- `now` is truncated to the millisecond: a slot frees only when its send is more than a whole
  -- window old, so no two sends a window apart can land in one window at the provider.
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window - 1)
  if redis.call('ZCARD', log) >= count then
    if not campaign then
      redis.call('SET', wanted, '1', 'PX', tonumber(ARGV[index * 3 + 3]))
    end
    local oldest = tonumber(redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')[2])
    if oldest > now then
      -- Still in flight: it moves back when its call returns.
      return {math.min(oldest + window + 1 - now, 20), index}
    end
    return {math.max(1, oldest + window + 1 - now), index}
  end
end
for index = 1, buckets do
  redis.call('ZADD', KEYS[index * 3 - 2], now + hold, member)
  redis.call('PEXPIRE', KEYS[index * 3 - 2], tonumber(ARGV[index * 3 + 2]) + hold)
end
return {0, 0}
"#,
    )
});

/// KEYS: the logs a send took a slot in (one slot). ARGV: its member.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, log in ipairs(KEYS) do
  local score = redis.call('ZSCORE', log, ARGV[1])
  if score and tonumber(score) > now then
    redis.call('ZADD', log, 'XX', now, ARGV[1])
  end
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

    /// The hash tag of the slot `buckets` (one delivery's) live in: their inbox's account-wide
    /// bucket's, else (a web inbox's campaign) the first one's.
    fn slot(buckets: &[Bucket]) -> Option<String> {
        let anchor = buckets.iter().find(|bucket| bucket.kind.is_account()).or_else(|| buckets.first())?;
        Some(format!("{}:{}", anchor.kind, anchor.scope))
    }

    /// A bucket's log, pause and wanted keys, in the slot tagged `slot`.
    fn bucket_keys(&self, slot: &str, bucket: &Bucket) -> (String, String, String) {
        let own = format!("{}:{}", bucket.kind, bucket.scope);
        let key = |name: &str| {
            let tagged = self.keys.tagged(name, slot);
            // The slot's own bucket keeps the key it has always had; the others follow the tag.
            if own == slot { tagged } else { format!("{tagged}:{own}") }
        };
        (key("ratelimit"), key("ratelimit.pause"), key("ratelimit.wanted"))
    }

    /// Takes a slot in every bucket (one delivery's), or returns how long to wait and the first
    /// bucket, in order, that is full or paused; then it takes none. One script: one round trip.
    /// `member` must be unique per call.
    pub async fn acquire(
        &self,
        buckets: &[Bucket],
        member: &str,
        priority: Priority,
    ) -> Result<Result<Taken, (Duration, BucketKind)>, Error> {
        let mut taken = Taken { logs: Vec::with_capacity(buckets.len()), member: member.to_owned() };
        let Some(slot) = Self::slot(buckets) else { return Ok(Ok(taken)) };
        let mut kinds = Vec::with_capacity(buckets.len());
        let mut script_keys = Vec::with_capacity(buckets.len() * 3);
        let mut args = vec![
            member.to_owned(),
            IN_FLIGHT_HOLD.as_millis().to_string(),
            if priority == Priority::Campaign { "1" } else { "0" }.to_owned(),
        ];
        for bucket in buckets {
            let Some(limit) = bucket.limit.or_else(|| self.limits.get(bucket.kind)) else { continue };
            let (log, pause, wanted) = self.bucket_keys(&slot, bucket);
            taken.logs.push(log.clone());
            script_keys.extend([log, pause, wanted]);
            args.extend([
                limit.count.to_string(),
                limit.window.as_millis().to_string(),
                REPLY_WANTS_FOR.max(limit.window).as_millis().to_string(),
            ]);
            kinds.push(bucket.kind);
        }
        if kinds.is_empty() {
            return Ok(Ok(taken));
        }
        let (wait, position): (i64, i64) = ACQUIRE.call(&self.redis, script_keys, args).await?;
        if wait <= 0 {
            return Ok(Ok(taken));
        }
        let full = usize::try_from(position - 1).ok().and_then(|index| kinds.get(index).copied()).unwrap_or(kinds[0]);
        Ok(Err((Duration::from_millis(wait as u64), full)))
    }

    /// The call of `taken` returned: its slots count from now, no longer from the future.
    pub async fn release(&self, taken: &Taken) -> Result<(), Error> {
        if taken.logs.is_empty() {
            return Ok(());
        }
        let _: i64 = RELEASE.call(&self.redis, taken.logs.clone(), vec![taken.member.clone()]).await?;
        Ok(())
    }

    /// Pauses `bucket`, one of the delivery's `buckets`, for `duration` (a provider asked us to
    /// slow down).
    pub async fn pause(&self, buckets: &[Bucket], bucket: &Bucket, duration: Duration) -> Result<(), Error> {
        let slot = Self::slot(buckets).unwrap_or_else(|| format!("{}:{}", bucket.kind, bucket.scope));
        let (_, pause, _) = self.bucket_keys(&slot, bucket);
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
