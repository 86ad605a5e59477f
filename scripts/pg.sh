#!/usr/bin/env bash
# A private PostgreSQL cluster for the demo and benchmarks: its own data
# directory, a Unix socket in a directory of its own, no TCP listener.
#   scripts/pg.sh start DIR    # initdb (once) and start
#   scripts/pg.sh url DIR      # the connection string for database "fleet"
#   scripts/pg.sh stop DIR     # stop and remove DIR
# initdb refuses root, so as root the server runs as the postgres user.
# The tests start their own clusters (flashgate_fleet::cluster).
set -euo pipefail
cmd=${1:?start|url|stop}
dir=${2:?DIR}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/pg_ctl" ] || { echo "PostgreSQL is not installed; run scripts/setup.sh" >&2; exit 2; }
as=()
[ "$(id -u)" -eq 0 ] && as=(runuser -u postgres --)
case "$cmd" in
  start)
    mkdir -p "$dir/socket"
    dir=$(cd "$dir" && pwd)
    [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      (cd / && "${as[@]}" "$bin/initdb" -D "$dir/data" -U flashgate -A trust -E UTF8 --locale=C --no-sync >/dev/null)
    fi
    (cd / && "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses='' -c unix_socket_directories='$dir/socket'" start >/dev/null)
    (cd / && "${as[@]}" "$bin/createdb" -h "$dir/socket" -U flashgate fleet 2>/dev/null) || true
    ;;
  url)
    dir=$(cd "$dir" && pwd)
    echo "host=$dir/socket user=flashgate dbname=fleet"
    ;;
  stop)
    if [ -d "$dir" ]; then
      dir=$(cd "$dir" && pwd)
      (cd / && "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1) || true
      rm -rf "$dir"
    fi
    ;;
  *) echo "usage: scripts/pg.sh start|url|stop DIR" >&2; exit 2 ;;
esac
