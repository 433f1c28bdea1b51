-- How many times the sender called the provider for an outbound message (sent or failed).
ALTER TABLE messages ADD COLUMN attempts smallint;
