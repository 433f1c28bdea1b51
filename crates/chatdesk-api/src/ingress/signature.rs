//! Webhook authenticity, checked on the raw request bytes before anything is parsed: a body
//! re-serialised from parsed JSON differs (key order, escapes, non-ASCII) and would not verify.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::ApiError;

fn unauthorized(message: &str) -> ApiError {
    ApiError::Unauthorized { message: message.to_owned() }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|index| u8::from_str_radix(text.get(index..index + 2)?, 16).ok()).collect()
}

/// How far a timestamped signature's time may be from ours (either way): a captured request
/// replayed later than this is refused.
pub const SIGNATURE_TOLERANCE_SECONDS: u64 = 300;

/// The generic channel's signature: either `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
/// (the timestamped form: a request replayed more than [`SIGNATURE_TOLERANCE_SECONDS`] later is
/// refused) or `sha256=<hex HMAC-SHA256 of body>` (kept for existing senders: a replay is then
/// stopped only by the duplicate check on `message_id`).
pub fn verify_generic_signature(
    header_name: &str,
    header: Option<&str>,
    body: &[u8],
    secret: &str,
    now_seconds: u64,
    timestamped_only: bool,
) -> Result<(), ApiError> {
    let Some(value) = header.filter(|value| value.trim_start().starts_with("t=")) else {
        if timestamped_only {
            // The inbox's admin turned the replayable form off.
            return Err(unauthorized(&format!(
                "{header_name}: this inbox takes only timestamped signatures (t=<unix seconds>,v1=<hex>)"
            )));
        }
        return verify_hmac_header(header_name, header, body, secret);
    };
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in value.split(',').map(str::trim) {
        match part.split_once('=') {
            Some(("t", seconds)) => timestamp = seconds.parse::<u64>().ok(),
            Some(("v1", hex)) => signatures.push(hex),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(|| unauthorized(&format!("{header_name}: t= must be unix seconds")))?;
    if timestamp.abs_diff(now_seconds) > SIGNATURE_TOLERANCE_SECONDS {
        return Err(unauthorized(&format!(
            "{header_name}: the timestamp is more than {SIGNATURE_TOLERANCE_SECONDS} s from the server's time"
        )));
    }
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    let matches = signatures
        .iter()
        .filter_map(|hex| decode_hex(hex))
        .any(|candidate| chatdesk_core::auth::constant_time_eq(&candidate, &expected));
    if !matches {
        return Err(unauthorized(&format!("{header_name}: no v1 signature matches the timestamp and body")));
    }
    Ok(())
}

/// The timestamped signature of `body` at `timestamp`, as senders compute it.
pub fn sign_timestamped(body: &[u8], secret: &str, timestamp: u64) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("t={timestamp},v1={}", digest.iter().map(|byte| format!("{byte:02x}")).collect::<String>())
}

/// `sha256=<hex HMAC-SHA256 of body with secret>`, compared in constant time. Used by the generic
/// channel (`X-Chatdesk-Signature`) and WhatsApp (`X-Hub-Signature-256`).
pub fn verify_hmac_header(header_name: &str, header: Option<&str>, body: &[u8], secret: &str) -> Result<(), ApiError> {
    let header = header.ok_or_else(|| unauthorized(&format!("missing {header_name} header")))?;
    let hex =
        header.strip_prefix("sha256=").ok_or_else(|| unauthorized(&format!("{header_name} must be `sha256=<hex>`")))?;
    let expected = decode_hex(hex).ok_or_else(|| unauthorized(&format!("{header_name} is not hexadecimal")))?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| unauthorized(&format!("{header_name} does not match the body")))
}

pub use chatdesk_core::auth::sign_body as sign;

/// A shared secret header (Telegram's `X-Telegram-Bot-Api-Secret-Token`), compared in constant time.
pub fn verify_secret_header(header_name: &str, header: Option<&str>, secret: &str) -> Result<(), ApiError> {
    let header = header.ok_or_else(|| unauthorized(&format!("missing {header_name} header")))?;
    if !chatdesk_core::auth::constant_time_eq(header.as_bytes(), secret.as_bytes()) {
        return Err(unauthorized(&format!("{header_name} does not match")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_the_exact_bytes() {
        let body = br#"{"text":"ol\u00e1"}"#;
        let header = sign(body, "secret");
        assert!(verify_hmac_header("X-Sig", Some(&header), body, "secret").is_ok());
        assert!(verify_hmac_header("X-Sig", Some(&header), br#"{"text":"ol\u00e1" }"#, "secret").is_err());
        assert!(verify_hmac_header("X-Sig", Some(&header), body, "other").is_err());
        assert!(verify_hmac_header("X-Sig", None, body, "secret").is_err());
        assert!(verify_hmac_header("X-Sig", Some("sha256=zz"), body, "secret").is_err());
        assert!(verify_hmac_header("X-Sig", Some("md5=00"), body, "secret").is_err());
    }

    #[test]
    fn timestamped_signatures_expire() {
        let body = br#"{"text":"hi"}"#;
        let now = 1_763_800_000;
        let header = sign_timestamped(body, "secret", now);
        assert!(verify_generic_signature("X", Some(&header), body, "secret", now + 10, false).is_ok());
        assert!(
            verify_generic_signature("X", Some(&header), body, "secret", now + 301, false).is_err(),
            "replayed late"
        );
        assert!(verify_generic_signature("X", Some(&header), body, "other", now, false).is_err());
        assert!(verify_generic_signature("X", Some(&header), br#"{"text":"ho"}"#, "secret", now, false).is_err());
        let moved = header.replace(&format!("t={now}"), &format!("t={}", now + 5));
        assert!(verify_generic_signature("X", Some(&moved), body, "secret", now, false).is_err(), "the time is signed");
        // The untimed form still verifies.
        assert!(verify_generic_signature("X", Some(&sign(body, "secret")), body, "secret", now, false).is_ok());
        let untimed = verify_generic_signature("X", Some(&sign(body, "secret")), body, "secret", now, true);
        assert!(untimed.unwrap_err().to_string().contains("only timestamped"), "an inbox may refuse the untimed form");
        assert!(verify_generic_signature("X", Some(&header), body, "secret", now, true).is_ok());
        assert!(verify_secret_header("X-T", Some("abc"), "abc").is_ok());
        assert!(verify_secret_header("X-T", Some("abd"), "abc").is_err());
        assert!(verify_secret_header("X-T", Some("ab"), "abc").is_err());
    }
}
