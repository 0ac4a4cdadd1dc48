#!/bin/sh
# Run once by the postgres image when it initializes an empty data volume
# (/docker-entrypoint-initdb.d, docker-compose.replicas.yml): the role the
# streaming replica connects as, and the pg_hba.conf line that lets it
# replicate over the compose network. The primary's command line
# (docker-compose.replicas.yml) sets wal_level=replica and max_wal_senders.
#
# On a volume initialized before, run the same by hand once, as the
# superuser:
#   CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '...';
# then append the pg_hba.conf line below and SELECT pg_reload_conf().
set -eu

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v user="$REPLICATION_USER" -v password="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE :"user" WITH REPLICATION LOGIN PASSWORD :'password';
SQL

echo "host    replication    $REPLICATION_USER    all    scram-sha-256" >> "$PGDATA/pg_hba.conf"
