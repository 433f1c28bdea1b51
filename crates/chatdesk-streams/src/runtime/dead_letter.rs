//! Moving an entry to the dead-letter stream. The XADD to `dlq.<family>` and the XACK happen in
//! one Lua script on the partition's slot (the keys share a hash tag), and only while the entry
//! is still pending: an entry is never dead-lettered twice nor both dead-lettered and pending.

use chatdesk_core::PartitionKeys;
use fred::prelude::*;

const SCRIPT: &str = r#"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 then
  return 0
end
local fields = {'original_id', ARGV[2], 'group', ARGV[1], 'delivery_count', ARGV[3], 'error', ARGV[4], 'consumer', ARGV[5]}
for index = 6, #ARGV do
  fields[#fields + 1] = ARGV[index]
end
redis.call('XADD', KEYS[2], '*', unpack(fields))
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
"#;

/// One entry to dead-letter, with the fields it had in the source stream.
pub struct DeadLetter<'a> {
    pub id: &'a str,
    pub delivery_count: u64,
    pub error: &'a str,
    pub original_fields: &'a [(String, String)],
}

/// Returns whether the entry was moved (false: it was no longer pending for the group).
pub async fn dead_letter(
    client: &Client,
    keys: &PartitionKeys,
    group: &str,
    consumer: &str,
    letter: &DeadLetter<'_>,
) -> Result<bool, Error> {
    let mut args: Vec<String> = vec![
        group.to_owned(),
        letter.id.to_owned(),
        letter.delivery_count.to_string(),
        letter.error.to_owned(),
        consumer.to_owned(),
    ];
    for (field, value) in letter.original_fields {
        args.push(field.clone());
        args.push(value.clone());
    }
    let moved: i64 = client.eval(SCRIPT, vec![keys.stream.clone(), keys.dead_letters.clone()], args).await?;
    Ok(moved == 1)
}
