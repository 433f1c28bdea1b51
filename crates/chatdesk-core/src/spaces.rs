//! What counts as a space in what clients send: one definition for the server's checks and the
//! OpenAPI document's patterns, so a generated client (or a schema-driven fuzzer) and the server
//! agree on every character. The document's regular expressions use `\s` as JavaScript defines
//! it, which leaves out U+0085 and takes in U+FEFF; Rust's `char::is_whitespace` does the
//! opposite. Both count here, and patterns write `[^\s\u0085]` ([`NOT_SPACE`]).

/// A pattern character class: any character that is not a space.
pub const NOT_SPACE: &str = r"[^\s\u0085]";

pub fn is_space(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}'
}

/// Empty, or spaces only.
pub fn is_blank(text: &str) -> bool {
    text.chars().all(is_space)
}

/// `text` without leading and trailing spaces.
pub fn trim(text: &str) -> &str {
    text.trim_matches(is_space)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_definitions_of_a_space_count() {
        assert!(is_blank(" \u{85}\u{feff}\u{a0}\u{3000}\t"));
        assert!(!is_blank("\u{200b}"), "a zero-width space is no space to either");
        assert_eq!(trim("\u{feff} hi\u{85}"), "hi");
    }
}
