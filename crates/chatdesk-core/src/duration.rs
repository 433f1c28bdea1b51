//! Human durations for configuration: an integer followed by a unit, optionally repeated
//! (`"250ms"`, `"5s"`, `"1h30m"`, `"7d"`). Bare numbers are refused on purpose: a `block = 2`
//! that silently means milliseconds in one place and seconds in another is how outages start.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("{0:?} is not a duration: write a number followed by a unit (ms, s, m, h, d), e.g. \"5s\"")]
    Malformed(String),
    #[error("{0:?} is too large")]
    Overflow(String),
}

pub fn parse_duration(raw: &str) -> Result<Duration, DurationError> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed(raw.to_owned());
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits_end == 0 {
            return Err(malformed());
        }
        let amount: u64 = rest[..digits_end].parse().map_err(|_| DurationError::Overflow(raw.to_owned()))?;
        rest = &rest[digits_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_end] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(malformed()),
        };
        rest = &rest[unit_end..];
        let part = amount.checked_mul(unit_ms).ok_or_else(|| DurationError::Overflow(raw.to_owned()))?;
        total_ms = total_ms.checked_add(part).ok_or_else(|| DurationError::Overflow(raw.to_owned()))?;
    }
    Ok(Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        let cases = [
            ("250ms", 250),
            ("5s", 5_000),
            ("2m", 120_000),
            ("1h30m", 5_400_000),
            ("7d", 604_800_000),
            (" 3s ", 3_000),
        ];
        for (raw, millis) in cases {
            assert_eq!(parse_duration(raw), Ok(Duration::from_millis(millis)), "{raw}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for raw in ["5", "s", "5 s", "5sec", "-5s", "1.5s", "5parsecs"] {
            assert!(matches!(parse_duration(raw), Err(DurationError::Malformed(_))), "{raw}");
        }
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(parse_duration("99999999999999999999d"), Err(DurationError::Overflow(_))));
    }
}
