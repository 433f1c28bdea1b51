//! Identifiers. An [`EntryId`] is a Redis stream entry id (`<ms>-<seq>`): it is what a client
//! resumes from, so it is parsed into numbers and compared numerically, never as text
//! (`"9-0" > "10-0"` as strings). An [`EventId`] is a UUIDv7 assigned once at ingress and is the
//! idempotency key of every effect downstream.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a stream entry id (expected <milliseconds>-<sequence>)")]
pub struct EntryIdError(pub String);

/// A stream entry id, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub millis: u64,
    pub sequence: u64,
}

impl EntryId {
    /// Lower than any real entry: `0-0`.
    pub const ZERO: EntryId = EntryId { millis: 0, sequence: 0 };

    pub fn new(millis: u64, sequence: u64) -> Self {
        Self { millis, sequence }
    }
}

impl FromStr for EntryId {
    type Err = EntryIdError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let error = || EntryIdError(raw.to_owned());
        let (millis, sequence) = raw.split_once('-').ok_or_else(error)?;
        let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
        if !all_digits(millis) || !all_digits(sequence) {
            return Err(error());
        }
        Ok(Self { millis: millis.parse().map_err(|_| error())?, sequence: sequence.parse().map_err(|_| error())? })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}-{}", self.millis, self.sequence)
    }
}

/// The id of one event, UUIDv7 so that ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(pub Uuid);

impl EventId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(raw).map(Self)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

/// A tenant (one customer organisation). Every tenant-owned row and event carries one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(pub Uuid);

impl FromStr for TenantId {
    type Err = uuid::Error;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(raw).map(Self)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_parse_and_order_numerically() {
        let small: EntryId = "9-5".parse().unwrap();
        let large: EntryId = "10-0".parse().unwrap();
        assert!(small < large);
        assert_eq!(large.to_string(), "10-0");
        assert!(EntryId::ZERO < small);
        for bad in ["", "10", "10-", "-1", "a-1", "1-2-3", "+1-0"] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn event_ids_are_version_7() {
        let id = EventId::new();
        assert_eq!(id.0.get_version_num(), 7);
        assert_eq!(id.to_string().parse::<EventId>().unwrap(), id);
    }
}
