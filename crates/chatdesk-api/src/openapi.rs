//! The OpenAPI document, built from the handlers themselves (utoipa), so a route cannot exist
//! without its documentation. Served at `/v1/openapi.json`; `docs/openapi.json` is the same
//! document, kept identical by a test.

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// `{"error": {"code", "message", "details"}}`
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: unauthorized, forbidden, not_found, invalid_json, invalid_field,
    /// invalid_query, invalid_path, conflict, rate_limited, unsupported_media_type,
    /// payload_too_large, unavailable, busy, internal.
    pub code: String,
    pub message: String,
    /// More about the error, e.g. `{"field": "text"}`; `null` when there is nothing more.
    pub details: Option<serde_json::Value>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("agent token (JWT from /v1/auth/login) or API key (cdk_…)")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatdesk HTTP API",
        description = "Customer-messaging backbone. Errors are JSON: {\"error\": {\"code\", \"message\", \"details\"}}. \
                       Lists answer {\"items\": [...], \"next_cursor\": \"...\" | null}.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "operations", description = "Health, readiness and metrics, served by every process"),
        (name = "auth", description = "Agent login"),
        (name = "conversations", description = "Conversations, history and agent actions"),
        (name = "inboxes", description = "Inboxes and how they send"),
        (name = "workspace", description = "The agent's workspace: private notes, labels, canned responses, contacts, search and users"),
        (name = "ingress", description = "Channel webhooks: generic, WhatsApp Cloud API, Telegram Bot API"),
        (name = "widget", description = "The embeddable web widget's visitor sessions and messages"),
        (name = "autoreply", description = "Bots: an inbox's auto-reply (AI model or dialog flow), a test chat, flows, budget and orders"),
        (name = "ops", description = "Operators (the sre role): stream status and history, replay into one group, dead letters, claims, pruning, tasks and the audit log")
    )
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

    fn document() -> serde_json::Value {
        serde_json::to_value(crate::openapi_document()).unwrap()
    }

    /// Clients are written from docs/openapi.json: it must be exactly what the server serves.
    /// After changing the API, regenerate it with `UPDATE_OPENAPI=1 cargo test -p chatdesk-api openapi`.
    #[test]
    fn the_committed_document_is_current() {
        let generated = serde_json::to_string_pretty(&document()).unwrap() + "\n";
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(COMMITTED, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is stale: run UPDATE_OPENAPI=1 cargo test -p chatdesk-api openapi"
        );
    }

    #[test]
    fn every_route_is_documented_and_every_reference_resolves() {
        let document = document();
        let operations: BTreeSet<String> = document["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object().unwrap().keys().map(move |method| format!("{} {path}", method.to_uppercase()))
            })
            .collect();
        for expected in [
            "GET /healthz",
            "GET /readyz",
            "GET /metrics",
            "POST /v1/auth/login",
            "GET /v1/conversations",
            "GET /v1/conversations/{id}",
            "GET /v1/conversations/{id}/messages",
            "POST /v1/conversations/{id}/messages",
            "POST /v1/conversations/{id}/assign",
            "POST /v1/conversations/{id}/resolve",
            "POST /v1/conversations/{id}/reopen",
            "POST /v1/conversations/{id}/block",
            "POST /v1/webhooks/generic/{inbox_id}",
            "POST /v1/webhooks/whatsapp/{inbox_id}",
            "GET /v1/webhooks/whatsapp/{inbox_id}",
            "POST /v1/webhooks/telegram/{inbox_id}",
            "POST /v1/widget/{inbox_id}/sessions",
            "POST /v1/widget/{inbox_id}/messages",
        ] {
            assert!(operations.contains(expected), "{expected} is not documented: {operations:?}");
        }
        let text = document.to_string();
        let schemas = document["components"]["schemas"].as_object().unwrap();
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &reference[..reference.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling schema reference {name}");
        }
    }
}
