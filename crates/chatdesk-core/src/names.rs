//! Stream-family and consumer-group names. They end up inside Redis keys and Prometheus labels,
//! so they are restricted to a small, unambiguous alphabet; the only way to build one is
//! [`StreamName::parse`] / [`GroupName::parse`].

use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters, got {len}")]
    TooLong { max: usize, len: usize },
    #[error("may only contain a-z, 0-9, '_', '-' and '.', and must start with a letter; got {0:?}")]
    BadCharacters(String),
}

const MAX_NAME_LEN: usize = 64;

fn check(raw: &str, allow_dot: bool) -> Result<(), NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { max: MAX_NAME_LEN, len: raw.len() });
    }
    let first_is_letter = raw.as_bytes()[0].is_ascii_lowercase();
    let all_allowed = raw.bytes().all(|byte| {
        byte.is_ascii_lowercase()
            || byte.is_ascii_digit()
            || byte == b'_'
            || byte == b'-'
            || (allow_dot && byte == b'.')
    });
    if !first_is_letter || !all_allowed {
        return Err(NameError::BadCharacters(raw.to_owned()));
    }
    Ok(())
}

/// A stream family such as `events`, `send` or `broadcast`. Each family has `partitions`
/// physical streams. Dots are not allowed because `dlq.<family>` names the dead-letter family.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamName(String);

impl StreamName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check(raw, false)?;
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A consumer group such as `writer` or `gateway.node-1` (dots allowed, for per-node groups).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(String);

impl GroupName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check(raw, true)?;
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names_and_refuses_the_rest() {
        assert!(StreamName::parse("events").is_ok());
        assert!(GroupName::parse("gateway.node-1").is_ok());
        assert_eq!(StreamName::parse(""), Err(NameError::Empty));
        assert!(matches!(StreamName::parse("dlq.events"), Err(NameError::BadCharacters(_))));
        assert!(matches!(StreamName::parse("Events"), Err(NameError::BadCharacters(_))));
        assert!(matches!(GroupName::parse("1writer"), Err(NameError::BadCharacters(_))));
        assert!(matches!(GroupName::parse("a{b}"), Err(NameError::BadCharacters(_))));
        assert!(matches!(GroupName::parse(&"a".repeat(65)), Err(NameError::TooLong { .. })));
    }
}
