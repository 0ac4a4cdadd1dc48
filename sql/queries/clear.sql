-- Deletes every event and its index keys in one transaction (go-crablet's
-- /cleanup). The position sequence is NOT reset: positions keep increasing,
-- so a subscriber's or a client's last position never points at a different
-- event later, and gap-free reading holds across a clear.
TRUNCATE events, event_keys
