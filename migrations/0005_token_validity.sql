-- Agent tokens issued before this moment are no longer accepted (logout, a role change).
ALTER TABLE users ADD COLUMN tokens_valid_after timestamptz NOT NULL DEFAULT '-infinity';
