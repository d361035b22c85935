#!/bin/sh
# The prediction record's own database and user on the stack's PostgreSQL (docker-compose.yml, service
# postgres): database "predictions" owned by user "predictions", whose password is PREDICTION_DB_PASSWORD
# (`make secrets` generates it); the api reaches it as PREDICTION_DB_URL and creates its tables itself.
#
# The postgres image runs this once, when it initialises a new data volume (/docker-entrypoint-initdb.d).
# A stack whose volume predates it runs it once by hand:
#   docker compose exec postgres sh /docker-entrypoint-initdb.d/20-predictions.sh
# It is safe to run again: it creates what is missing and sets the password to PREDICTION_DB_PASSWORD.
set -eu
: "${PREDICTION_DB_PASSWORD:?PREDICTION_DB_PASSWORD is not set; run make secrets}"

# the password travels as a psql variable and is quoted by psql (:'password'), never by the shell
psql -v ON_ERROR_STOP=1 -v password="$PREDICTION_DB_PASSWORD" \
  --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" <<'SQL'
SELECT 'CREATE ROLE predictions LOGIN'
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'predictions')\gexec
ALTER ROLE predictions WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'password';
SELECT 'CREATE DATABASE predictions OWNER predictions'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'predictions')\gexec
REVOKE ALL ON DATABASE predictions FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE predictions TO predictions;
SQL
