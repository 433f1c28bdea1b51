-- A role change ends the user's tokens for good: changing a role back must not revive the tokens
-- issued before the first change.
CREATE FUNCTION users_role_change_revokes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.tokens_valid_after := greatest(OLD.tokens_valid_after, now());
    RETURN NEW;
END;
$$;

CREATE TRIGGER users_role_change_revokes
    BEFORE UPDATE OF role ON users
    FOR EACH ROW
    WHEN (OLD.role IS DISTINCT FROM NEW.role)
    EXECUTE FUNCTION users_role_change_revokes();
