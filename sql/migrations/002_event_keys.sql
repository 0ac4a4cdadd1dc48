-- Side index of the log: one row per (tag or type key, position). Keys are
-- 64-bit hashes computed by crablet (dcb/footprint.rs), the same keys the
-- writers take as advisory locks. Every lookup is a B-tree range scan of
-- (key, position): no GIN pending list, no plan that walks the whole log.
-- A hash collision only adds rows that the join with `events` filters out.
CREATE TABLE IF NOT EXISTS event_keys (
    key      bigint NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (key, position)
);
