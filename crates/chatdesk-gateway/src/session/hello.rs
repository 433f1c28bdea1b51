//! The handshake: the client's first frame must be `hello` with a valid token and the protocol
//! version, within the hello timeout.

use axum::extract::ws::{Message, WebSocket};
use chatdesk_core::auth::{Claims, Role, verify_token, verify_visitor_token};
use futures::StreamExt;

use super::{Closing, closing};
use crate::Gateway;
use crate::channel::Identity;
use crate::metrics;
use crate::protocol::{ClientFrame, PROTOCOL_VERSION, close};

fn identify(gateway: &Gateway, token: &str) -> Result<Identity, String> {
    let tokens = &gateway.inner.tokens;
    match verify_token(tokens, token) {
        Ok(claims) => {
            let role = Role::parse(&claims.role).ok_or("the token has an unknown role")?;
            Ok(Identity::Agent { tenant: claims.tenant, user: claims.sub, role })
        }
        Err(agent_error) => match verify_visitor_token(tokens, token) {
            Ok(visitor) => Ok(Identity::Visitor { tenant: visitor.tenant, conversation: visitor.conversation }),
            Err(_) => Err(agent_error.to_string()),
        },
    }
}

/// Who is on the socket, and for an agent the token it must keep standing on.
pub(super) struct Admitted {
    pub identity: Identity,
    pub claims: Option<Claims>,
}

/// Waits for `hello`; returns who is on the socket, or why it must close.
pub(super) async fn handshake(
    gateway: &Gateway,
    stream: &mut futures::stream::SplitStream<WebSocket>,
) -> Result<Admitted, Closing> {
    let timeout = gateway.inner.settings.hello_timeout;
    let first = tokio::time::timeout(timeout, stream.next())
        .await
        .map_err(|_| closing(close::HELLO_EXPECTED, format!("no hello within {}s", timeout.as_secs())))?;
    let Some(Ok(Message::Text(text))) = first else {
        return Err(closing(close::HELLO_EXPECTED, "the first frame must be a hello text frame"));
    };
    ::metrics::counter!(metrics::FRAMES_IN_TOTAL).increment(1);
    match ClientFrame::parse(&text) {
        Ok(ClientFrame::Hello { protocol, .. }) if protocol != PROTOCOL_VERSION => Err(closing(
            close::UNSUPPORTED_PROTOCOL,
            format!("protocol {protocol} is not supported; use {PROTOCOL_VERSION}"),
        )),
        Ok(ClientFrame::Hello { token, .. }) => {
            let token = token.trim();
            let identity = identify(gateway, token).map_err(|reason| closing(close::UNAUTHORIZED, reason))?;
            let mut admitted = Admitted { identity, claims: None };
            if let Identity::Agent { .. } = admitted.identity
                && let Ok(claims) = verify_token(&gateway.inner.tokens, token)
            {
                match standing(gateway, &claims).await {
                    Some(Err(reason)) => return Err(reason),
                    None => {
                        return Err(closing(
                            close::UNAVAILABLE,
                            "the server cannot check the token now; reconnect shortly",
                        ));
                    }
                    Some(Ok(())) => admitted.claims = Some(claims),
                }
            }
            Ok(admitted)
        }
        Ok(_) => Err(closing(close::HELLO_EXPECTED, "the first frame must be hello")),
        Err(error) => Err(closing(close::HELLO_EXPECTED, format!("invalid hello: {error}"))),
    }
}

/// Whether an agent token still stands: unexpired, its user there with the same role, not
/// revoked since it was issued. `None` when PostgreSQL cannot say now.
pub(super) async fn standing(gateway: &Gateway, claims: &Claims) -> Option<Result<(), Closing>> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    if claims.exp <= now {
        return Some(Err(closing(close::UNAUTHORIZED, "the token expired; log in again")));
    }
    match chatdesk_store::directory::token_is_current(&gateway.inner.db, claims).await {
        Ok(Ok(())) => Some(Ok(())),
        Ok(Err(reason)) => Some(Err(closing(close::UNAUTHORIZED, reason))),
        Err(error) => {
            tracing::debug!(error = %error, "cannot check a token's standing");
            None
        }
    }
}
