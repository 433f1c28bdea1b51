-- Every action an operator takes on the streams (replay, dead-letter redrive and purge, claim,
-- prune), from the CLI or REST: who, when, what, and how many entries it touched. Kept apart from
-- tenants' data: these actions are deployment-wide.
CREATE TABLE ops_audit (
    id       bigserial   PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    -- "cli", or the e-mail of the user (or "api key <id>") behind a REST call
    actor    text        NOT NULL,
    action   text        NOT NULL,
    -- stream family and group, filters, range: what the action was aimed at
    target   jsonb       NOT NULL,
    -- entries re-delivered, moved, purged or claimed (for a task: when it finished)
    entries  bigint      NOT NULL DEFAULT 0,
    outcome  text        NOT NULL,
    detail   text        NOT NULL DEFAULT ''
);
CREATE INDEX ops_audit_by_time ON ops_audit (at DESC, id DESC);
