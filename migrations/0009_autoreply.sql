-- Orders taken by dialog flows: which inbox and flow took them (the collected fields go to
-- `details`). An order's id is derived from the conversation and the message that completed the
-- flow, so a flow completed again by a replay or a retry inserts nothing new.
ALTER TABLE orders ADD COLUMN inbox_id uuid, ADD COLUMN flow text;
CREATE INDEX orders_by_tenant ON orders (tenant_id, created_at DESC, id DESC);

-- The bot's last handoff in a conversation (cleared when the conversation is resolved), so an
-- agent opening it sees why a human is needed.
ALTER TABLE conversations ADD COLUMN handoff_reason text, ADD COLUMN handoff_detail text, ADD COLUMN handoff_at timestamptz;
