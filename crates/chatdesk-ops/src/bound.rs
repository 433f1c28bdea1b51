//! The ends of a range as operators write them: an entry id (`1733490000000-0`, or just its
//! milliseconds), an RFC 3339 time (`2026-12-06T10:00:00Z`), or a time relative to now
//! (`-2h`, `-30m`).

use chatdesk_core::EntryId;
use chatdesk_core::duration::parse_duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::OpsError;

/// One end of a range, resolved to an entry id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub id: EntryId,
}

/// Which end a bound is: a time means the first entry of that millisecond for a start, the last
/// for an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Start,
    Finish,
}

impl Bound {
    /// Reads `raw` (what `--from` / `--to` say) at `now_ms`.
    pub fn parse(raw: &str, end: End, now_ms: u64, option: &str) -> Result<Bound, OpsError> {
        let text = raw.trim();
        let invalid = |why: &str| {
            OpsError::Invalid(format!(
                "{option} {raw:?}: {why}; write an entry id (1733490000000-0), an RFC 3339 time \
                 (2026-12-06T10:00:00Z) or a time before now (-2h)"
            ))
        };
        if text.is_empty() {
            return Err(invalid("empty"));
        }
        let at_ms = |millis: u64| match end {
            End::Start => EntryId::new(millis, 0),
            End::Finish => EntryId::new(millis, u64::MAX),
        };
        if let Some(ago) = text.strip_prefix('-') {
            let ago = parse_duration(ago).map_err(|error| invalid(&error.to_string()))?;
            let millis = now_ms.checked_sub(ago.as_millis() as u64).ok_or_else(|| invalid("before 1970"))?;
            return Ok(Bound { id: at_ms(millis) });
        }
        if text.bytes().all(|byte| byte.is_ascii_digit() || byte == b'-') {
            if let Some((millis, sequence)) = text.split_once('-') {
                let (Ok(millis), Ok(sequence)) = (millis.parse(), sequence.parse()) else {
                    return Err(invalid("not an entry id"));
                };
                return Ok(Bound { id: EntryId::new(millis, sequence) });
            }
            let millis: u64 = text.parse().map_err(|_| invalid("not an entry id"))?;
            return Ok(Bound { id: at_ms(millis) });
        }
        let time = OffsetDateTime::parse(text, &Rfc3339).map_err(|error| invalid(&format!("not a time ({error})")))?;
        let millis = time.unix_timestamp_nanos() / 1_000_000;
        let millis = u64::try_from(millis).map_err(|_| invalid("before 1970"))?;
        Ok(Bound { id: at_ms(millis) })
    }
}

/// `millis` as an RFC 3339 time, for plans and reports.
pub fn format_ms(millis: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| millis.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_765_000_000_000;

    #[test]
    fn ids_times_and_durations() {
        let id = Bound::parse("1733490000000-7", End::Start, NOW, "--from").unwrap();
        assert_eq!(id.id, EntryId::new(1_733_490_000_000, 7));
        let millis = Bound::parse("1733490000000", End::Finish, NOW, "--to").unwrap();
        assert_eq!(millis.id, EntryId::new(1_733_490_000_000, u64::MAX));
        let time = Bound::parse("2024-12-06T13:00:00Z", End::Start, NOW, "--from").unwrap();
        assert_eq!(time.id, EntryId::new(1_733_490_000_000, 0));
        let ago = Bound::parse("-2h", End::Start, NOW, "--from").unwrap();
        assert_eq!(ago.id, EntryId::new(NOW - 7_200_000, 0));
        assert_eq!(format_ms(1_733_490_000_000), "2024-12-06T13:00:00Z");
    }

    #[test]
    fn nonsense_is_refused_naming_the_option() {
        for raw in ["", "yesterday", "12-ab", "-2 fortnights", "2024-13-40T00:00:00Z", "1-2-3"] {
            let error = Bound::parse(raw, End::Start, NOW, "--from").unwrap_err().to_string();
            assert!(error.starts_with("--from"), "{raw}: {error}");
        }
    }
}
