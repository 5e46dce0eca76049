#!/usr/bin/env bash
# The PostgreSQL the tests use (tests/conftest.py: postgres@127.0.0.1:5432/test, trust auth), made if
# missing: start the cluster, wait until it answers, create the role and the database when absent.
# Idempotent; run alone or from scripts/test.sh. TEST_DB_HOST/PORT/ROLE/NAME name another one.
set -euo pipefail
HOST="${TEST_DB_HOST:-127.0.0.1}"
PORT="${TEST_DB_PORT:-5432}"
ROLE="${TEST_DB_ROLE:-postgres}"
NAME="${TEST_DB_NAME:-test}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

for what in "$ROLE" "$NAME"; do  # both end up inside SQL text: plain identifiers only
  if ! [[ "$what" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
    echo "test_db.sh: '$what' is not a plain identifier" >&2
    exit 2
  fi
done

if ! pg_isready -q -h "$HOST" -p "$PORT" 2>/dev/null; then
  if ls /etc/postgresql >/dev/null 2>&1; then
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
for _ in $(seq 1 60); do
  pg_isready -q -h "$HOST" -p "$PORT" && break
  sleep 0.5
done
if ! pg_isready -q -h "$HOST" -p "$PORT"; then
  echo "test_db.sh: PostgreSQL on $HOST:$PORT did not start within 30 s" >&2
  exit 1
fi

# the superuser over TCP where trust auth allows it, else the postgres OS user over the local socket
if psql -h "$HOST" -p "$PORT" -U postgres -d postgres -tAc "SELECT 1" >/dev/null 2>&1; then
  admin() { psql -h "$HOST" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -tA "$@"; }
else
  admin() { $SUDO runuser -u postgres -- psql -p "$PORT" -d postgres -v ON_ERROR_STOP=1 -tA "$@"; }
fi

# a concurrent run may create either first: "already exists" then counts as done
if [ "$(admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
  admin -c "CREATE ROLE \"$ROLE\" LOGIN" >/dev/null \
    || [ "$(admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" = 1 ]
  echo "test_db.sh: created role $ROLE"
fi
if [ "$(admin -c "SELECT 1 FROM pg_database WHERE datname = '$NAME'")" != 1 ]; then
  admin -c "CREATE DATABASE \"$NAME\" OWNER \"$ROLE\"" >/dev/null \
    || [ "$(admin -c "SELECT 1 FROM pg_database WHERE datname = '$NAME'")" = 1 ]
  echo "test_db.sh: created database $NAME"
fi
# the tests make a schema per test in it (tests/conftest.py postgres_url)
psql -h "$HOST" -p "$PORT" -U "$ROLE" -d "$NAME" -v ON_ERROR_STOP=1 -tAc "SELECT 1" >/dev/null
echo "test_db.sh: $ROLE@$HOST:$PORT/$NAME ready"
