-- Fenced writes: run once on the first primary (replication carries it to the others).
--
-- baton_fence holds every fencing token a primary of this database was promoted with; its
-- highest row is the token writes must carry. The on_promote hook inserts the new token
-- after promotion and before it reports success, so a primary serves writes only once it
-- knows its own token.

CREATE TABLE baton_fence (
    token       bigint PRIMARY KEY,
    region      text NOT NULL,
    promoted_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The fence only rises: a hook that replays an old promotion cannot lower it.
CREATE FUNCTION baton_fence_only_up() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.token <= (SELECT coalesce(max(token), 0) FROM baton_fence) THEN
        RAISE EXCEPTION 'baton fence: token % is not above the highest seen', NEW.token
            USING ERRCODE = 'BT001';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER baton_fence_only_up BEFORE INSERT OR UPDATE ON baton_fence
    FOR EACH ROW EXECUTE FUNCTION baton_fence_only_up();

-- The writer's table. Each row carries the token the writer got from baton; the server
-- stamps which region accepted it and when (one clock: every region is on this host).
CREATE TABLE baton_writes (
    writer text   NOT NULL,
    seq    bigint NOT NULL,
    token  bigint NOT NULL,
    region text   NOT NULL DEFAULT '',
    at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (writer, seq)
);

-- A write commits only with exactly the token this primary was promoted with: a lower one
-- comes from a writer that has not heard of a newer primary (refused: it would be a write
-- to a fenced primary); a higher one means this server was never promoted with it (it is
-- an old primary, or its promote hook has not finished).
CREATE FUNCTION baton_fenced_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    fence bigint;
BEGIN
    -- SHARE conflicts with the hook's INSERT: a write waits for a fence being raised.
    LOCK TABLE baton_fence IN SHARE MODE;
    SELECT max(token) INTO fence FROM baton_fence;
    IF fence IS NULL OR NEW.token < fence THEN
        RAISE EXCEPTION 'baton fence: token % is stale (highest seen %)', NEW.token, fence
            USING ERRCODE = 'BT002';
    ELSIF NEW.token > fence THEN
        RAISE EXCEPTION 'baton fence: this server was not promoted with token % (it has %)',
            NEW.token, fence USING ERRCODE = 'BT003';
    END IF;
    NEW.region := current_setting('baton.region');
    NEW.at := clock_timestamp();
    RETURN NEW;
END $$;
CREATE TRIGGER baton_fenced_write BEFORE INSERT OR UPDATE ON baton_writes
    FOR EACH ROW EXECUTE FUNCTION baton_fenced_write();
