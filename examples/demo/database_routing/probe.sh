#!/bin/sh
# Health probe for the primary: prints one Ved observation.
# PGHOST and PGPORT say where the primary listens (libpq's own variables).
if pg_isready -q -h "${PGHOST:-127.0.0.1}" -p "${PGPORT:-5432}" -t 2; then
  echo '{"primary_status": "healthy"}'
else
  echo '{"primary_status": "failed"}'
fi
