#!/bin/sh
# The stack's own databases on its PostgreSQL: for each argument NAME[:VARIABLE], a role NAME that can log in
# (no superuser, no createdb, no createrole) with the password in $VARIABLE (default $<NAME>_DB_PASSWORD), and
# a database NAME owned by it that no other role may connect to. Run by the one-shot `databases` service at
# every `docker compose up` (PGHOST, PGUSER, PGPASSWORD name the server and its superuser), so it also works
# on a volume made before the database existed. Idempotent: an existing role gets its password set again (the
# one in .env wins), an existing database is left as it is. Nothing here prints a password; the password
# travels as a psql variable and is quoted by psql (%L), never by the shell.
set -eu
for arg in "$@"; do
  name="${arg%%:*}"
  var="${arg#*:}"
  [ "$var" != "$arg" ] || var="$(printf '%s' "$name" | tr '[:lower:]' '[:upper:]')_DB_PASSWORD"
  case "$var" in *[!A-Z0-9_]* | "") echo "databases: bad variable name in '$arg'" >&2; exit 1 ;; esac
  eval "password=\${$var:-}"
  if [ -z "$password" ]; then
    echo "databases: $var is not set; run make secrets" >&2
    exit 1
  fi
  psql -X -q -v ON_ERROR_STOP=1 -v name="$name" -v password="$password" -d postgres <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'name')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'name') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', :'name', :'password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'name', :'name')
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'name') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'name') \gexec
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', :'name', :'name') \gexec
SQL
  echo "databases: $name ready"
done
