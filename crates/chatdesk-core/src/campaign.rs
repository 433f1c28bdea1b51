//! What a campaign's text and addresses must be, shared by the API (which checks them when the
//! campaign is made) and the broadcaster (which fills the text in per recipient).

use std::collections::BTreeSet;

/// What senders and runners need of a campaign's status, as kept in Redis under
/// `KeyScheme::campaign_state`: `running` (or scheduled), `paused`, or `cancelled` (also finished:
/// nothing more may be sent), followed by `:<version>` so that of two changes written at once
/// the later one stays.
pub fn state_of_status(status: &str) -> &'static str {
    match status {
        "paused" => "paused",
        "cancelled" | "finished" => "cancelled",
        _ => "running",
    }
}

/// The state in a stored value (`paused:1764662400000000` → `paused`).
pub fn state_in(value: &str) -> &str {
    value.split(':').next().unwrap_or(value)
}

/// Whether `name` can be a variable: letters, digits and `_` (a CSV column names one).
pub fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|character| character.is_alphanumeric() || character == '_')
}

/// The `{{name}}` placeholders of `text`, in order of first use (an empty one as "").
pub fn placeholders(text: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = after[..end].trim().to_owned();
        if seen.insert(name.clone()) {
            names.push(name);
        }
        rest = &after[end + 2..];
    }
    names
}

/// Why a recipient's text cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no value for the variable {0:?}")]
pub struct MissingVariable(pub String);

/// `text` with every `{{name}}` replaced by the recipient's `vars[name]` (a string or number).
pub fn render(text: &str, vars: &serde_json::Value) -> Result<String, MissingVariable> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push_str(&rest[..start]);
        let name = after[..end].trim();
        match vars.get(name) {
            Some(serde_json::Value::String(value)) => out.push_str(value),
            Some(serde_json::Value::Number(value)) => out.push_str(&value.to_string()),
            Some(serde_json::Value::Bool(value)) => out.push_str(&value.to_string()),
            _ => return Err(MissingVariable(name.to_owned())),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The channel kinds a campaign can send on, and what an address there looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// E.164 digits, with or without `+` (WhatsApp's `wa_id`).
    Phone,
    /// A Telegram chat id: an integer, negative for groups.
    TelegramChat,
    /// The generic channel: any id without control characters, up to 256 bytes.
    Generic,
}

/// `address` as the channel knows it, or why it is not one. Phone numbers lose `+`, spaces,
/// dashes, dots and parentheses, so one person written two ways is one recipient.
pub fn normalise_address(kind: AddressKind, address: &str) -> Result<String, String> {
    let trimmed = address.trim();
    if trimmed.is_empty() {
        return Err("is empty".to_owned());
    }
    match kind {
        AddressKind::Phone => {
            let digits: String =
                trimmed.chars().filter(|character| !matches!(character, '+' | ' ' | '-' | '.' | '(' | ')')).collect();
            if !digits.chars().all(|character| character.is_ascii_digit()) {
                return Err(format!("{trimmed:?} is not a phone number (digits in international format)"));
            }
            if !(8..=15).contains(&digits.len()) || digits.starts_with('0') {
                return Err(format!(
                    "{trimmed:?} is not an international phone number (8 to 15 digits, country code first)"
                ));
            }
            Ok(digits)
        }
        AddressKind::TelegramChat => match trimmed.parse::<i64>() {
            Ok(id) if id != 0 => Ok(id.to_string()),
            _ => Err(format!("{trimmed:?} is not a Telegram chat id (a non-zero integer)")),
        },
        AddressKind::Generic => {
            if trimmed.len() > 256 {
                return Err("is longer than 256 bytes".to_owned());
            }
            if trimmed.chars().any(char::is_control) {
                return Err("contains control characters".to_owned());
            }
            Ok(trimmed.to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn variables_are_filled_and_missing_ones_named() {
        assert_eq!(placeholders("Hi {{name}}, {{ code }} for {{name}}"), vec!["name", "code"]);
        assert_eq!(placeholders("A{{}}B"), vec![""]);
        assert!(is_variable_name("first_name") && !is_variable_name("") && !is_variable_name("a.b"));
        assert_eq!(render("Hi {{name}}, {{n}}!", &json!({"name": "Ana", "n": 3})).unwrap(), "Hi Ana, 3!");
        assert_eq!(render("Hi {{name}}", &json!({})).unwrap_err(), MissingVariable("name".into()));
        assert_eq!(render("no vars {{", &json!({})).unwrap(), "no vars {{");
    }

    #[test]
    fn addresses_are_normalised_or_refused_with_a_reason() {
        assert_eq!(normalise_address(AddressKind::Phone, "+1 (650) 555-1234").unwrap(), "16505551234");
        assert!(normalise_address(AddressKind::Phone, "call me").unwrap_err().contains("not a phone number"));
        assert!(normalise_address(AddressKind::Phone, "12345").unwrap_err().contains("8 to 15 digits"));
        assert_eq!(normalise_address(AddressKind::TelegramChat, " -100123 ").unwrap(), "-100123");
        assert!(normalise_address(AddressKind::TelegramChat, "@user").is_err());
        assert!(normalise_address(AddressKind::Generic, "a\u{7}b").is_err());
        assert!(normalise_address(AddressKind::Generic, "  ").is_err());
    }
}
