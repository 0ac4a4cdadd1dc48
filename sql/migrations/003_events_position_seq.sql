-- Positions start at 1. CACHE 1: a session never holds pre-allocated values,
-- so values are handed out in the order of the sequencing lock.
CREATE SEQUENCE IF NOT EXISTS events_position_seq AS bigint START WITH 1 CACHE 1;
