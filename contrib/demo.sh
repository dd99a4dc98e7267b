#!/usr/bin/env bash
# End-to-end demo on a throwaway PostgreSQL: archive WAL into a local pitr repository with
# archive_command = 'pitr archive-wal %p %f', show `pitr info`, and bring every archived
# segment back with restore-wal, byte for byte. Installs PostgreSQL (apt) when missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

bindir=${PITR_PG_BINDIR:-}
if [[ -z $bindir ]]; then
  if command -v pg_config >/dev/null && [[ -x $(pg_config --bindir)/initdb ]]; then
    bindir=$(pg_config --bindir)
  else
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  fi
fi
if [[ -z $bindir || ! -x $bindir/initdb ]]; then
  echo "== installing PostgreSQL"
  apt-get update -qq && apt-get install -y -qq postgresql postgresql-contrib >/dev/null
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
fi

echo "== building pitr"
(cd "$here" && cargo build --release --quiet)
work=$(mktemp -d /tmp/pitr-demo.XXXXXX)
as_pg=()
if [[ $(id -u) == 0 ]]; then
  as_pg=(runuser -u postgres --)
  chown postgres "$work"
fi
install -m 0755 "$here/target/release/pitr" "$work/pitr"
pitr=$work/pitr
repo=$work/repo
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { "${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

"${as_pg[@]}" "$pitr" --repo "$repo" init
"${as_pg[@]}" "$bindir/initdb" -D "$work/data" -A trust -U postgres >/dev/null
cat >>"$work/data/postgresql.conf" <<CONF
port = $port
listen_addresses = ''
unix_socket_directories = '$work'
archive_mode = on
archive_command = '$pitr --repo $repo archive-wal %p %f'
CONF
"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -l "$work/server.log" -w start >/dev/null
psql=("${as_pg[@]}" "$bindir/psql" -X -q -At -h "$work" -p "$port" -U postgres -d postgres)

echo "== pgbench -i -s 5 with archive_command = pitr archive-wal"
"${as_pg[@]}" "$bindir/pgbench" -q -i -s 5 -h "$work" -p "$port" -U postgres postgres >/dev/null 2>&1
last=$("${psql[@]}" -c "select pg_walfile_name(pg_switch_wal())")
until [[ $("${psql[@]}" -c "select coalesce(last_archived_wal,'') >= '$last' from pg_stat_archiver") == t ]]; do
  [[ $("${psql[@]}" -c "select failed_count from pg_stat_archiver") == 0 ]] || { tail "$work/server.log"; exit 1; }
  sleep 0.2
done
"${psql[@]}" -c "select 'archived: ' || archived_count || ', failed: ' || failed_count from pg_stat_archiver"

echo "== pitr info"
"$pitr" --repo "$repo" info

echo "== restore-wal of every archived segment still in pg_wal, compared with cmp"
n=0
for f in "$work"/data/pg_wal/0*; do
  name=$(basename "$f")
  [[ -f $repo/wal/${name:0:8}/$name.json ]] || continue
  "$pitr" -q --repo "$repo" restore-wal "$name" "$work/restored"
  cmp "$f" "$work/restored"
  n=$((n + 1))
done
echo "$n segments restored identical"
