-- Broadcast campaigns. A campaign's recipients are rows whose status only moves forward; the
-- campaign is finished when every recipient has a final status, never because a queue drained.

-- The first schema reserved two tables for campaigns that nothing ever wrote; they are replaced
-- by the ones below.
DROP TABLE campaign_recipients;
DROP TABLE campaigns;

-- Unique recipients a tenant's campaigns may reach per 24 hours across all its WhatsApp numbers
-- (the business's messaging limit); recipients over it wait for the window.
ALTER TABLE tenants ADD COLUMN campaign_daily_recipients integer NOT NULL DEFAULT 2000
    CHECK (campaign_daily_recipients BETWEEN 1 AND 10000000);

CREATE TABLE campaigns (
    id              uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL REFERENCES tenants (id),
    inbox_id        uuid        NOT NULL,
    name            text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    text            text        NOT NULL,
    template        jsonb,
    rate_per_sec    integer     NOT NULL CHECK (rate_per_sec BETWEEN 1 AND 1000),
    status          text        NOT NULL CHECK (status IN ('scheduled', 'running', 'paused', 'cancelled', 'finished')),
    start_at        timestamptz NOT NULL,
    expires_at      timestamptz,
    idempotency_key text,
    created_by      uuid,
    total           integer     NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id)
);
CREATE UNIQUE INDEX campaigns_idempotency ON campaigns (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX campaigns_by_tenant ON campaigns (tenant_id, created_at DESC);
-- What the broadcaster looks for: campaigns that still have work.
CREATE INDEX campaigns_active ON campaigns (start_at) WHERE status IN ('scheduled', 'running');

CREATE TABLE campaign_recipients (
    tenant_id       uuid        NOT NULL,
    campaign_id     uuid        NOT NULL,
    position        integer     NOT NULL,
    address         text        NOT NULL,
    vars            jsonb       NOT NULL DEFAULT '{}',
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN
                    ('pending', 'queued', 'deferred', 'sent', 'delivered', 'read', 'failed', 'skipped', 'expired')),
    reason          text,
    -- Hand-offs so far (a deferred recipient is tried again with a new message).
    attempt         integer     NOT NULL DEFAULT 0,
    message_id      uuid,
    not_before      timestamptz,
    sent_at         timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, position),
    FOREIGN KEY (tenant_id, campaign_id) REFERENCES campaigns (tenant_id, id)
);
CREATE UNIQUE INDEX campaign_recipients_message ON campaign_recipients (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX campaign_recipients_todo ON campaign_recipients (campaign_id, position) WHERE status IN ('pending', 'deferred');
CREATE INDEX campaign_recipients_sent ON campaign_recipients (campaign_id, sent_at) WHERE sent_at IS NOT NULL;

-- Addresses that asked not to be sent campaigns (STOP), or that blocked the bot.
CREATE TABLE opt_outs (
    tenant_id   uuid        NOT NULL,
    inbox_id    uuid        NOT NULL,
    address     text        NOT NULL,
    reason      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, inbox_id, address),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id)
);

-- Campaign messages are stored in their recipients' conversations like any outbound message.
ALTER TABLE messages DROP CONSTRAINT messages_sender_kind_check;
ALTER TABLE messages ADD CONSTRAINT messages_sender_kind_check
    CHECK (sender_kind IN ('customer', 'agent', 'bot', 'system', 'campaign'));
