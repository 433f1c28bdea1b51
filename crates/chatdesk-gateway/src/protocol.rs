//! The frames of chatdesk protocol v1 (`docs/protocol.md` is the contract): JSON text frames,
//! one object per frame, tagged by `op`.

use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Hello {
        token: String,
        protocol: u32,
    },
    Subscribe {
        channel: String,
        /// The last offset the client saw on this channel.
        since: Option<String>,
        /// The epoch that offset belongs to (from `subscribed`).
        epoch: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    Ping {
        id: Option<serde_json::Value>,
    },
    /// The caller is (or stopped) typing in a conversation.
    Typing {
        conversation: String,
        typing: bool,
    },
    /// The agent has read the conversation up to `offset`.
    Read {
        conversation: String,
        offset: String,
    },
    /// An agent's reply to a conversation.
    Send {
        conversation: String,
        text: String,
        client_msg_id: String,
    },
}

/// What the server sends.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        session: String,
        node: String,
        heartbeat_ms: u64,
    },
    Subscribed {
        channel: String,
        /// `false`: the gap since `since` could not be replayed; reload through REST.
        recovered: bool,
        /// Pass back with `since` when resuming.
        epoch: String,
        /// The newest offset of the channel's partition when the subscription started.
        head: Option<String>,
        /// Events replayed from the gap.
        replayed: u64,
        /// For `inbox`: the agents of the tenant online now.
        #[serde(skip_serializing_if = "Option::is_none")]
        presence: Option<Vec<String>>,
    },
    Unsubscribed {
        channel: String,
    },
    Event {
        channel: String,
        /// `null` for ephemeral events (typing), which are never replayed.
        offset: Option<String>,
        /// The event's id (a message's id is its `message.created` event id); `null` for
        /// ephemeral events.
        event_id: Option<String>,
        #[serde(rename = "type")]
        event_type: String,
        /// The payload as stored: JSON text written out as it is, not parsed and rebuilt per
        /// socket.
        data: Box<serde_json::value::RawValue>,
    },
    Pong {
        id: Option<serde_json::Value>,
    },
    /// A `send` was appended (or had been, for a repeated `client_msg_id`).
    Ack {
        client_msg_id: String,
        event_id: String,
        offset: Option<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// The channel the error is about, if any.
        channel: Option<String>,
    },
}

/// Error-frame codes; stable for clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not an object with a known `op` and its fields.
    BadFrame,
    /// `hello` sent twice.
    AlreadyAuthenticated,
    /// The channel name is not one of the documented forms.
    UnknownChannel,
    /// The caller's role or tenant may not subscribe to the channel.
    Forbidden,
    /// The conversation does not exist (in the caller's tenant).
    NotFound,
    /// The conversation's state does not allow it (a blocked conversation takes no replies).
    Conflict,
    /// A dependency is down; try again.
    Unavailable,
    TooManySubscriptions,
}

/// WebSocket close codes (4000-4999 are the application's).
pub mod close {
    /// No `hello` within the handshake timeout, or another frame before it.
    pub const HELLO_EXPECTED: u16 = 4001;
    /// The protocol version is not supported.
    pub const UNSUPPORTED_PROTOCOL: u16 = 4002;
    /// The token is missing, malformed, forged or expired.
    pub const UNAUTHORIZED: u16 = 4003;
    /// The client fell too far behind; reconnect and resume from the last offset.
    pub const SLOW_CLIENT: u16 = 4008;
    /// No frame from the client within the idle timeout.
    pub const IDLE: u16 = 4010;
    /// The server is restarting; reconnect (to any node) and resume.
    pub const RESTARTING: u16 = 1012;
    /// The server cannot serve the socket now (Redis is unreachable); reconnect after a pause.
    pub const UNAVAILABLE: u16 = 1013;
    /// A text frame that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A frame or message larger than the 64 KiB the protocol allows.
    pub const TOO_BIG: u16 = 1009;
    /// Any other violation of the WebSocket protocol itself.
    pub const PROTOCOL_ERROR: u16 = 1002;
}

impl ClientFrame {
    /// Parses a text frame; the error says what is wrong, for an error frame.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|error| {
            let message = error.to_string();
            match message.find(" at line ") {
                Some(index) => message[..index].to_owned(),
                None => message,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_and_render() {
        assert_eq!(
            ClientFrame::parse(r#"{"op":"hello","token":"t","protocol":1}"#),
            Ok(ClientFrame::Hello { token: "t".into(), protocol: 1 })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"op":"subscribe","channel":"inbox","since":"1-0"}"#),
            Ok(ClientFrame::Subscribe { channel: "inbox".into(), since: Some("1-0".into()), epoch: None })
        );
        let event = ServerFrame::Event {
            channel: "inbox".into(),
            offset: Some("1-0".into()),
            event_id: Some("e".into()),
            event_type: "message.created".into(),
            data: serde_json::value::to_raw_value(&serde_json::json!({"text": "hi"})).unwrap(),
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({"op": "event", "channel": "inbox", "offset": "1-0", "event_id": "e", "type": "message.created", "data": {"text": "hi"}})
        );
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        assert!(ClientFrame::parse("not json").unwrap_err().contains("expected"));
        assert!(ClientFrame::parse(r#"{"op":"teleport"}"#).unwrap_err().contains("unknown variant `teleport`"));
        assert!(ClientFrame::parse(r#"{"op":"subscribe"}"#).unwrap_err().contains("missing field `channel`"));
        assert!(ClientFrame::parse(r#"{"op":"ping","extra":1}"#).unwrap_err().contains("unknown field `extra`"));
    }
}
