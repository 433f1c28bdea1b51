-- Everything tenant-owned carries tenant_id. Cross-table references include tenant_id
-- (composite foreign keys), so the database itself refuses a row that points into another
-- tenant.

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    tenant_id     uuid        NOT NULL REFERENCES tenants (id),
    email         text        NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    name          text,
    role          text        NOT NULL CHECK (role IN ('owner', 'admin', 'agent', 'marketer', 'sre')),
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
-- One login per e-mail address across tenants: login takes only e-mail and password.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE api_keys (
    id          uuid        PRIMARY KEY,
    tenant_id   uuid        NOT NULL REFERENCES tenants (id),
    role        text        NOT NULL CHECK (role IN ('owner', 'admin', 'agent', 'marketer', 'sre')),
    -- SHA-256 of the key; keys are long random strings, so a fast hash is enough and lookups
    -- by hash stay an index probe.
    key_hash    bytea       NOT NULL UNIQUE,
    key_prefix  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE inboxes (
    id              uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL REFERENCES tenants (id),
    kind            text        NOT NULL CHECK (kind IN ('generic', 'whatsapp', 'telegram', 'web')),
    name            text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    webhook_secret  text        NOT NULL,
    provider_config jsonb       NOT NULL DEFAULT '{}',
    outbound_url    text,
    auto_reply      jsonb       NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);

CREATE TABLE contacts (
    id          uuid        PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    inbox_id    uuid        NOT NULL,
    external_id text        NOT NULL,
    name        text,
    email       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    UNIQUE (inbox_id, external_id),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id)
);

CREATE TABLE conversations (
    id                      uuid        PRIMARY KEY,
    tenant_id               uuid        NOT NULL,
    inbox_id                uuid        NOT NULL,
    contact_id              uuid        NOT NULL,
    status                  text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'pending', 'resolved', 'blocked')),
    assignee_id             uuid,
    last_message_id         uuid,
    last_message_text       text,
    last_message_at         timestamptz,
    last_message_offset_ms  bigint,
    last_message_offset_seq bigint,
    last_activity_at        timestamptz NOT NULL,
    -- Inbound messages since the last agent reply.
    unread_count            integer     NOT NULL DEFAULT 0,
    created_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id),
    FOREIGN KEY (tenant_id, contact_id) REFERENCES contacts (tenant_id, id),
    FOREIGN KEY (tenant_id, assignee_id) REFERENCES users (tenant_id, id)
);
-- The inbox list: a tenant's conversations by status, newest activity first.
CREATE INDEX conversations_inbox_list ON conversations (tenant_id, status, last_activity_at DESC, id DESC);
CREATE INDEX conversations_by_assignee ON conversations (tenant_id, assignee_id, last_activity_at DESC, id DESC);
CREATE INDEX conversations_by_activity ON conversations (tenant_id, last_activity_at DESC, id DESC);

CREATE TABLE messages (
    event_id            uuid        PRIMARY KEY,
    tenant_id           uuid        NOT NULL,
    conversation_id     uuid        NOT NULL,
    -- The stream entry id ("<ms>-<seq>") the message was appended under, split for ordering.
    stream_offset       text        NOT NULL,
    offset_ms           bigint      NOT NULL,
    offset_seq          bigint      NOT NULL,
    direction           text        NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    sender_kind         text        NOT NULL CHECK (sender_kind IN ('customer', 'agent', 'bot', 'system')),
    sender_id           uuid,
    body                text        NOT NULL,
    extra               jsonb,
    provider_message_id text,
    client_msg_id       text,
    -- Delivery status of outbound messages; NULL for inbound ones.
    status              text        CHECK (status IN ('queued', 'sent', 'failed', 'delivered', 'read')),
    status_rank         smallint    NOT NULL DEFAULT -1,
    failure_reason      text,
    status_at           timestamptz,
    created_at          timestamptz NOT NULL,
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id)
);
-- History paging, newest first.
CREATE INDEX messages_history ON messages (conversation_id, offset_ms DESC, offset_seq DESC);

-- Every durable event exactly once: the writer's idempotency ledger, and the source for
-- replaying a gap to a client after the stream itself was trimmed.
CREATE TABLE events (
    event_id         uuid        PRIMARY KEY,
    tenant_id        uuid        NOT NULL,
    type             text        NOT NULL,
    conversation_id  uuid,
    stream_partition smallint    NOT NULL,
    stream_offset    text        NOT NULL,
    offset_ms        bigint      NOT NULL,
    offset_seq       bigint      NOT NULL,
    occurred_at      timestamptz NOT NULL,
    payload          jsonb       NOT NULL,
    stored_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_by_conversation ON events (conversation_id, offset_ms, offset_seq) WHERE conversation_id IS NOT NULL;
CREATE INDEX events_by_tenant ON events (tenant_id, offset_ms, offset_seq);

CREATE TABLE campaigns (
    id              uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    inbox_id        uuid        NOT NULL,
    name            text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status          text        NOT NULL DEFAULT 'draft'
                                CHECK (status IN ('draft', 'running', 'paused', 'cancelled', 'completed')),
    message         jsonb       NOT NULL,
    created_by      uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id)
);

CREATE TABLE campaign_recipients (
    campaign_id uuid        NOT NULL,
    tenant_id   uuid        NOT NULL,
    external_id text        NOT NULL,
    contact_id  uuid,
    status      text        NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'queued', 'sent', 'delivered', 'read', 'failed', 'skipped')),
    event_id    uuid,
    error       text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, external_id),
    FOREIGN KEY (tenant_id, campaign_id) REFERENCES campaigns (tenant_id, id)
);
CREATE INDEX campaign_recipients_by_status ON campaign_recipients (campaign_id, status);

-- What dialog flows collect from customers.
CREATE TABLE orders (
    id              uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    conversation_id uuid        NOT NULL,
    contact_id      uuid        NOT NULL,
    items           jsonb       NOT NULL DEFAULT '[]',
    details         jsonb       NOT NULL DEFAULT '{}',
    status          text        NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'confirmed', 'cancelled')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id),
    FOREIGN KEY (tenant_id, contact_id) REFERENCES contacts (tenant_id, id)
);
