//! The handshake: the client's first frame must be `hello` with a valid token and the protocol
//! version, within the hello timeout.

use axum::extract::ws::{Message, WebSocket};
use chatdesk_core::auth::{Role, verify_token, verify_visitor_token};
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

/// Waits for `hello`; returns who is on the socket, or why it must close.
pub(super) async fn handshake(
    gateway: &Gateway,
    stream: &mut futures::stream::SplitStream<WebSocket>,
) -> Result<Identity, Closing> {
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
            if let Identity::Agent { .. } = identity
                && let Ok(claims) = verify_token(&gateway.inner.tokens, token)
            {
                match chatdesk_store::directory::token_is_current(&gateway.inner.db, &claims).await {
                    Ok(Ok(())) => {}
                    Ok(Err(reason)) => return Err(closing(close::UNAUTHORIZED, reason)),
                    Err(_) => {
                        return Err(closing(
                            close::UNAVAILABLE,
                            "the server cannot check the token now; reconnect shortly",
                        ));
                    }
                }
            }
            Ok(identity)
        }
        Ok(_) => Err(closing(close::HELLO_EXPECTED, "the first frame must be hello")),
        Err(error) => Err(closing(close::HELLO_EXPECTED, format!("invalid hello: {error}"))),
    }
}
