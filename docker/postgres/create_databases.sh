#!/bin/sh
# The stack's own databases on its PostgreSQL: for each name given, a role <name> that can log in with the
# password in $<NAME>_DB_PASSWORD, and a database <name> owned by it. Run by the one-shot `databases`
# service at every `docker compose up` (PGHOST, PGUSER, PGPASSWORD name the server and its superuser), so it
# also works on a volume made before the database existed. Idempotent: an existing role gets its password
# set again (the one in .env wins), an existing database is left as it is. Nothing here prints a password.
set -eu
for name in "$@"; do
  var="$(printf '%s' "$name" | tr '[:lower:]' '[:upper:]')_DB_PASSWORD"
  eval "password=\${$var:-}"
  if [ -z "$password" ]; then
    echo "databases: $var is not set; run make secrets" >&2
    exit 1
  fi
  psql -X -q -v ON_ERROR_STOP=1 -v name="$name" -v password="$password" -d postgres <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'name')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'name') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'name', :'password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'name', :'name')
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'name') \gexec
SQL
  echo "databases: $name ready"
done
