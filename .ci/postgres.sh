# Sourced by .ci/run: a throw-away PostgreSQL cluster on 127.0.0.1 for the exam-records tests.
# start_postgres installs Debian's `postgresql` when missing, makes a cluster in a temporary folder owned
# by the `postgres` user (the server refuses to run as root), starts it on a free port with trust
# authentication for 127.0.0.1 only, and exports LIVERSCOPE_TEST_PG; stop_postgres stops it and deletes
# the folder. Where it cannot start, the tests skip and say why (tests/test_records_store.py).

_pg_as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
      || { echo "warning: could not install postgresql; the PostgreSQL records tests will be skipped"; return 0; }
  fi
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  PG_DIR=$(mktemp -d /tmp/liverscope-pg.XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres: "$PG_DIR"
  PG_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if _pg_as_owner "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres >"$PG_DIR/initdb.log" 2>&1 \
     && _pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
          -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off" start >/dev/null; then
    export LIVERSCOPE_TEST_PG="postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/postgres"
    echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT for the records tests"
  else
    echo "warning: PostgreSQL did not start (see below); the PostgreSQL records tests will be skipped"
    tail -5 "$PG_DIR"/*.log || true
  fi
}

stop_postgres() {
  if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR" ]; then
    _pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}
