//! Leases in Redis: a key naming its holder, with a time to live the holder renews. Stream
//! partitions of exclusive groups and campaign runners are held this way.

use std::sync::LazyLock;

use crate::Script;

/// Takes or renews `KEYS[1]` for holder `ARGV[1]` for `ARGV[2]` milliseconds. Answers 1 when
/// renewed, 2 when taken (it was free: whoever held it let it lapse or gave it back), 0 when
/// another holder has it.
pub static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"#,
    )
});

/// Gives `KEYS[1]` back if holder `ARGV[1]` has it.
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});
