#!/bin/sh
# Entrypoint of the streaming replica (docker-compose.replicas.yml), run as
# root in the postgres image. On an empty data volume it clones the primary
# with `pg_basebackup -R` (which writes standby.signal and primary_conninfo),
# then it runs `postgres` as a hot standby: read-only queries are served
# while the primary's WAL is replayed.
set -eu

PGDATA="${PGDATA:-/var/lib/postgresql/data}"
mkdir -p "$PGDATA"
chown postgres:postgres "$PGDATA"
chmod 0700 "$PGDATA"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "replica: waiting for the primary at $PRIMARY_HOST:$PRIMARY_PORT"
    until pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT"; do
        sleep 1
    done
    echo "replica: cloning the primary (pg_basebackup -R)"
    # pg_basebackup removes what it wrote when it fails; start from empty.
    find "$PGDATA" -mindepth 1 -delete
    gosu postgres env PGPASSWORD="$REPLICATION_PASSWORD" pg_basebackup \
        -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER" \
        -D "$PGDATA" -R -X stream -c fast
fi

# A standby needs max_connections and max_locks_per_transaction at least
# those of the primary (docker-compose.yml's postgres command).
exec gosu postgres postgres \
    -c hot_standby=on \
    -c max_connections=200 \
    -c max_locks_per_transaction=512 \
    "$@"
