//! The checks every message text passes, whichever door it came in by.

/// The longest message text, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;
/// The longest client message id, in characters.
pub const MAX_CLIENT_MSG_ID: usize = 128;

/// Why a text or id is refused; the message names the rule, for a 422 or an error frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must be 1 to {MAX_TEXT_CHARS} characters")]
    Length,
    #[error("must be 1 to {MAX_CLIENT_MSG_ID} characters, without control characters")]
    ClientMsgId,
}

/// The text as it will be stored: trimmed, 1 to [`MAX_TEXT_CHARS`] characters.
pub fn message_text(text: &str) -> Result<String, TextError> {
    // Counted as sent, as the document's `maxLength` counts it; spaces as the document means them.
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(TextError::Length);
    }
    // NUL cannot be stored: it goes before the blank check, so a text of NULs is no text.
    let cleaned = chatdesk_core::envelope::text_without_nul(text);
    let text = chatdesk_core::spaces::trim(&cleaned);
    if text.is_empty() {
        return Err(TextError::Length);
    }
    Ok(text.to_owned())
}

/// A client's own message id: 1 to [`MAX_CLIENT_MSG_ID`] bytes.
pub fn client_msg_id(id: &str) -> Result<&str, TextError> {
    if id.is_empty() || id.chars().count() > MAX_CLIENT_MSG_ID || id.chars().any(char::is_control) {
        return Err(TextError::ClientMsgId);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_trimmed_and_bounded() {
        assert_eq!(message_text("  hi \n").unwrap(), "hi");
        assert_eq!(message_text("   "), Err(TextError::Length));
        assert!(message_text(&"é".repeat(MAX_TEXT_CHARS)).is_ok());
        assert_eq!(message_text(&"é".repeat(MAX_TEXT_CHARS + 1)), Err(TextError::Length));
        assert_eq!(client_msg_id(""), Err(TextError::ClientMsgId));
        assert_eq!(client_msg_id(&"x".repeat(129)), Err(TextError::ClientMsgId));
    }

    #[test]
    fn nul_and_odd_spaces_make_no_text() {
        // NUL cannot be stored: a text of NULs (and spaces) is no text, not an empty message.
        for blank in ["\0", "\0 \0", "\0\u{feff}\0", "\u{85}", "\u{2028}\u{3000}"] {
            assert_eq!(message_text(blank), Err(TextError::Length), "{blank:?}");
        }
        assert_eq!(message_text("hi\0there").unwrap(), "hithere");
        // Ids count characters, as the document's maxLength does, and carry no control characters.
        assert!(client_msg_id(&"é".repeat(MAX_CLIENT_MSG_ID)).is_ok());
        assert_eq!(client_msg_id("a\0b"), Err(TextError::ClientMsgId));
    }
}
