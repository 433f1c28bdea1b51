-- What a campaign's create request said (SHA-256 of its body and query), so a create that reuses
-- an Idempotency-Key with a different request is refused instead of answered with the first.
ALTER TABLE campaigns ADD COLUMN request_hash bytea;
