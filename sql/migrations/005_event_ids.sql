-- Event ids and metadata. `id` is chosen by the client (a UUID, say) and is
-- unique in the store: a retried append is recognised by its ids (see
-- migrations/004_append_batch.sql). The unique index is partial, so events
-- without an id cost it nothing. `metadata` is bytea, like `data`, so any
-- JSON string, NUL characters included, is returned byte for byte. Both are
-- nullable without a default: adding them rewrites nothing.
ALTER TABLE events ADD COLUMN IF NOT EXISTS id text;
ALTER TABLE events ADD COLUMN IF NOT EXISTS metadata bytea;
CREATE UNIQUE INDEX IF NOT EXISTS events_id ON events (id) WHERE id IS NOT NULL;
