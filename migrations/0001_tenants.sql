-- Tenants are the unit of isolation: every tenant-owned row carries tenant_id, and every
-- stream entry carries its tenant as a routing field.
CREATE TABLE tenants (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);
