//! Extractors whose rejections speak the API's error shape and name what is wrong: the JSON
//! path of a bad field, the path or query parameter that does not parse.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. Wrong content type: 415. Not JSON: 400 with line and column. JSON of the
/// wrong shape: 422 naming the field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType { message: "expected Content-Type: application/json".into() });
        }
        let body = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { message: "request body too large".into() }
            } else {
                ApiError::BadRequest { code: "invalid_body", message: rejection.body_text(), details: None }
            }
        })?;
        parse_json(&body).map(ApiJson)
    }
}

pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Ok(value) => Ok(value),
        Err(error) => {
            let path = error.path().to_string();
            let inner = error.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return Err(ApiError::BadRequest {
                    code: "invalid_json",
                    message: format!("malformed JSON: {inner}"),
                    details: Some(serde_json::json!({ "line": inner.line(), "column": inner.column() })),
                });
            }
            let field = match (missing_field(&inner.to_string()), path.as_str()) {
                (Some(missing), ".") => missing,
                (Some(missing), parent) => format!("{parent}.{missing}"),
                (None, _) => path,
            };
            Err(ApiError::Unprocessable {
                code: "invalid_field",
                message: format!("{field}: {}", strip_position(&inner.to_string())),
                details: Some(serde_json::json!({ "field": field })),
            })
        }
    }
}

/// serde reports a missing field at the parent's path; name the field itself.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

/// Path parameters; a value that does not parse is a 400 naming the parameter.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state).await.map(|path| ApiPath(path.0)).map_err(
            |rejection| ApiError::BadRequest { code: "invalid_path", message: rejection.body_text(), details: None },
        )
    }
}

/// Query parameters; a value that does not parse is a 400 naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer).map(ApiQuery).map_err(|error| {
            let parameter = error.path().to_string();
            ApiError::BadRequest {
                code: "invalid_query",
                message: format!("query parameter {parameter}: {}", error.inner()),
                details: Some(serde_json::json!({ "parameter": parameter })),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Reply {
        text: String,
        count: u32,
    }

    #[test]
    fn errors_name_the_field() {
        let error = parse_json::<Reply>(br#"{"count": 1}"#).unwrap_err();
        assert_eq!(error.status(), 422);
        assert!(error.to_string().starts_with("text: missing field"), "{error}");
        let error = parse_json::<Reply>(br#"{"text": "hi", "count": "many"}"#).unwrap_err();
        assert!(error.to_string().starts_with("count: invalid type"), "{error}");
        let error = parse_json::<Reply>(br#"{"text": "hi""#).unwrap_err();
        assert_eq!(error.status(), 400);
        assert_eq!(error.code(), "invalid_json");
    }
}
