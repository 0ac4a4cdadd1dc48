-- POST /project: every projector's state and the head, from one snapshot
-- (see migrations/008_project.sql).
SELECT event_position, event_type, event_tags, event_data, event_id, event_metadata,
       event_recorded_at, projector, state
FROM crablet_project($1)
