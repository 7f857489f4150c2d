#!/bin/sh
# Runs once, when the Postgres volume is first initialised: creates the
# request role (NOSUPERUSER, NOBYPASSRLS, owns nothing). The `migrate`
# service grants it what it needs after each migration.
set -eu
psql -v ON_ERROR_STOP=1 -v app_password="$MOBIUS_APP_DB_PASSWORD" \
    --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE mobius_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT
    PASSWORD :'app_password';
SQL
