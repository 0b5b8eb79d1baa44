#!/bin/sh
# Entry point of the stand-in `postgres:15` image that `make image-test` builds from Debian's
# postgresql-15 where no registry can be reached: the official image's contract, as far as the
# compose file uses it. POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB make the first cluster
# in PGDATA; PGPORT and POSTGRES_LISTEN_ADDRESSES (default '*') say where it listens.
set -eu
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
BIN=/usr/lib/postgresql/15/bin
export PGDATA
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" > "$pwfile"
    chown postgres "$pwfile"
    runuser -u postgres -- "$BIN/initdb" --username="${POSTGRES_USER:-postgres}" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    # The database, on a server that listens on its socket only (as the official image does).
    runuser -u postgres -- "$BIN/pg_ctl" -w -o "-c listen_addresses=''" start >/dev/null
    if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != postgres ]; then
        runuser -u postgres -- "$BIN/createdb" --username="${POSTGRES_USER:-postgres}" "$POSTGRES_DB"
    fi
    runuser -u postgres -- "$BIN/pg_ctl" -w -m fast stop >/dev/null
    echo "stand-in postgres: cluster initialised in $PGDATA"
fi
exec runuser -u postgres -- "$BIN/postgres" -c "listen_addresses=${POSTGRES_LISTEN_ADDRESSES:-*}" "$@"
