-- The global, ordered log. `position` is assigned by crablet from
-- events_position_seq while the sequencing lock is held (see
-- migrations/004_append_batch.sql), so commit order equals position order.
-- `data` is bytea so that any JSON string, NUL characters included, is
-- returned byte for byte. `tags` keeps the event's tags in written order,
-- duplicates removed.
CREATE TABLE IF NOT EXISTS events (
    position    bigint      PRIMARY KEY,
    type        text        NOT NULL,
    tags        text[]      NOT NULL,
    data        bytea       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
