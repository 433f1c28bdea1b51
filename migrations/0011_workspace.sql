-- The agent's workspace: private notes, labels, canned responses, contact details and merges,
-- message search, and who works which inbox.

-- Private notes: agents' remarks in a conversation. Kept apart from `messages`, so nothing that
-- reads or sends messages (the widget's history, the sender, unread counts) can ever see one.
CREATE TABLE notes (
    event_id        uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    conversation_id uuid        NOT NULL,
    author_kind     text        NOT NULL,
    author_id       uuid,
    body            text        NOT NULL,
    mentions        uuid[]      NOT NULL DEFAULT '{}',
    stream_offset   text        NOT NULL,
    offset_ms       bigint      NOT NULL,
    offset_seq      bigint      NOT NULL,
    created_at      timestamptz NOT NULL,
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id)
);
CREATE INDEX notes_by_conversation ON notes (conversation_id, offset_ms, offset_seq);

CREATE TABLE labels (
    id         uuid        PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES tenants (id),
    name       text        NOT NULL CHECK (length(name) BETWEEN 1 AND 50),
    colour     text        NOT NULL CHECK (colour ~ '^#[0-9a-f]{6}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
CREATE UNIQUE INDEX labels_name_key ON labels (tenant_id, lower(name));

CREATE TABLE conversation_labels (
    tenant_id       uuid NOT NULL,
    conversation_id uuid NOT NULL,
    label_id        uuid NOT NULL,
    PRIMARY KEY (conversation_id, label_id),
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id),
    FOREIGN KEY (tenant_id, label_id) REFERENCES labels (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX conversation_labels_by_label ON conversation_labels (tenant_id, label_id);

CREATE TABLE canned_responses (
    id         uuid        PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES tenants (id),
    shortcode  text        NOT NULL CHECK (shortcode ~ '^[a-z0-9_-]{1,32}$'),
    body       text        NOT NULL CHECK (length(body) BETWEEN 1 AND 4096),
    -- Agents change only their own; owners and admins any.
    created_by uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, shortcode)
);

-- A merged contact stays, as an alias of the one it was merged into: its channel identity keeps
-- finding the same person.
ALTER TABLE contacts ADD COLUMN phone text, ADD COLUMN merged_into uuid;

-- Full-text search over messages; `simple` keeps every word as typed (no language's stemming
-- guessed for a tenant's customers). The vector is stored, so ranking a match does not parse its
-- text again, and the index leads with the tenant (btree_gin), so a tenant's search never reads
-- another tenant's matches.
CREATE EXTENSION IF NOT EXISTS btree_gin;
ALTER TABLE messages ADD COLUMN search tsvector GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED;
CREATE INDEX messages_search ON messages USING gin (tenant_id, search);
-- A frequent word's matches are ranked among the tenant's newest ones, found walking this.
CREATE INDEX messages_by_tenant_time ON messages (tenant_id, created_at DESC);
-- Contacts are found by any part of a name, address, phone or channel id.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX contacts_search ON contacts
    USING gin (name gin_trgm_ops, email gin_trgm_ops, phone gin_trgm_ops, external_id gin_trgm_ops);

-- Routing: which agents work an inbox, and how its new conversations find one.
ALTER TABLE inboxes
    ADD COLUMN assignment     text    NOT NULL DEFAULT 'manual' CHECK (assignment IN ('manual', 'round_robin')),
    ADD COLUMN agent_capacity integer NOT NULL DEFAULT 10 CHECK (agent_capacity BETWEEN 1 AND 1000),
    -- An agent offline this long has its unanswered conversations handed to others; NULL: never.
    ADD COLUMN reassign_after_seconds integer CHECK (reassign_after_seconds BETWEEN 1 AND 86400);

CREATE TABLE inbox_members (
    tenant_id uuid NOT NULL,
    inbox_id  uuid NOT NULL,
    user_id   uuid NOT NULL,
    PRIMARY KEY (inbox_id, user_id),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX inbox_members_by_user ON inbox_members (tenant_id, user_id);
