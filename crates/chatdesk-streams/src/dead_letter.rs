//! Writing dead letters: one format ([`chatdesk_core::DeadLetter`]) for every group, written by
//! one Lua function ([`LUA_FUNCTION`]) that each script needing a dead letter embeds, so the
//! XADD to `dlq.<family>` is atomic with whatever the caller must do with it (the runtime: XACK
//! while still pending; the sender: finishing the job under its lease).

use std::sync::LazyLock;

use chatdesk_core::{DeadLetter, PartitionKeys};
use fred::prelude::*;

use crate::script::Script;

/// `dead_letter(key, from)`: XADD to `key` the dead letter whose encoded fields are
/// `ARGV[from..]`.
pub const LUA_FUNCTION: &str = r#"
local function dead_letter(key, from)
  return redis.call('XADD', key, '*', unpack(ARGV, from))
end
"#;

/// The script's arguments for `letter`, after `leading` arguments of the caller's own.
pub fn arguments(leading: Vec<String>, letter: &DeadLetter) -> Vec<String> {
    let mut args = leading;
    for (field, value) in letter.encode() {
        args.push(field);
        args.push(value);
    }
    args
}

static PENDING_TO_DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(format!(
        "{LUA_FUNCTION}
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 then
  return 0
end
dead_letter(KEYS[2], 3)
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
"
    ))
});

/// Moves a pending entry of a group to the partition's dead letters: XADD and XACK in one script,
/// only while the entry is still pending, so it is never dead-lettered twice nor both
/// dead-lettered and pending. Returns whether it moved.
pub async fn dead_letter_pending(client: &Client, keys: &PartitionKeys, letter: &DeadLetter) -> Result<bool, Error> {
    let args = arguments(vec![letter.group.clone(), letter.original_id.clone()], letter);
    let moved: i64 = PENDING_TO_DEAD.call(client, vec![keys.stream.clone(), keys.dead_letters.clone()], args).await?;
    Ok(moved == 1)
}
