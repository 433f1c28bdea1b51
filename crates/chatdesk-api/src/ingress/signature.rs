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
        assert!(verify_secret_header("X-T", Some("abc"), "abc").is_ok());
        assert!(verify_secret_header("X-T", Some("abd"), "abc").is_err());
        assert!(verify_secret_header("X-T", Some("ab"), "abc").is_err());
    }
}
