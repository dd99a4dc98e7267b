#!/usr/bin/env bash
# The whole mission in one command, on a throwaway PostgreSQL and a local repository:
# archive WAL with pitr, take a base backup, make a change ("the mistake"), then restore to
# the moment before it with --target-time … --start and show that the change is gone.
# Installs PostgreSQL (apt) when missing. As root, PostgreSQL and pitr run as `postgres`.
# PITR_BIN=path uses an already built pitr instead of `cargo build --release`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

bindir=${PITR_PG_BINDIR:-}
if [[ -z $bindir ]]; then
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  if [[ -z $bindir ]] && command -v pg_config >/dev/null; then bindir=$(pg_config --bindir); fi
fi
if [[ -z $bindir || ! -x $bindir/initdb ]]; then
  echo "== installing PostgreSQL"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
fi

if [[ -z ${PITR_BIN:-} ]]; then
  echo "== building pitr (cargo build --release)"
  (cd "$here" && cargo build --release --quiet)
  PITR_BIN=$here/target/release/pitr
fi
work=$(mktemp -d /tmp/pitr-demo.XXXXXX)
as_pg=()
if [[ $(id -u) == 0 ]]; then
  as_pg=(runuser -u postgres --)
  chown postgres "$work"
fi
install -m 0755 "$PITR_BIN" "$work/pitr"
pitr=("${as_pg[@]}" "$work/pitr" --repo "$work/repo")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
port2=$(free_port)
cleanup() {
  for d in data restored; do
    "${as_pg[@]}" "$bindir/pg_ctl" -D "$work/$d" -m immediate stop >/dev/null 2>&1 || true
  done
  [[ -n ${PITR_DEMO_KEEP:-} ]] || rm -rf "$work"
}
trap cleanup EXIT

"${pitr[@]}" -q init
"${as_pg[@]}" "$bindir/initdb" -D "$work/data" -A trust -U postgres >/dev/null
cat >>"$work/data/postgresql.conf" <<CONF
port = $port
listen_addresses = ''
unix_socket_directories = '$work'
archive_mode = on
archive_command = '$work/pitr -q --repo $work/repo archive-wal %p %f'
CONF
"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -l "$work/server.log" -w start >/dev/null
psql() { "${as_pg[@]}" "$bindir/psql" -X -q -At -h "$work" -p "$1" -U postgres -d postgres -c "$2"; }
wait_archived() { # until the segment just switched away from is archived
  local last
  last=$(psql "$port" "select pg_walfile_name(pg_switch_wal())")
  until [[ $(psql "$port" "select coalesce(last_archived_wal,'') >= '$last' from pg_stat_archiver") == t ]]; do
    [[ $(psql "$port" "select failed_count from pg_stat_archiver") == 0 ]] || { tail "$work/server.log"; exit 1; }
    sleep 0.2
  done
}

echo "== a database with archive_command = pitr archive-wal"
psql "$port" "create table accounts(id int primary key, balance int)"
psql "$port" "insert into accounts select g, 100 from generate_series(1, 10000) g"
echo "== pitr backup"
id=$("${pitr[@]}" -q backup -d "host=$work port=$port user=postgres" --checkpoint fast)
echo "backup $id"
psql "$port" "update accounts set balance = balance + 1 where id <= 10"
before=$(psql "$port" "select clock_timestamp()")
echo "== $before: all is well (sum $(psql "$port" "select sum(balance) from accounts"))"
psql "$port" "select pg_sleep(0.2)" >/dev/null
psql "$port" "delete from accounts where id > 5000"
echo "== the mistake: half the rows deleted (count $(psql "$port" "select count(*) from accounts"))"
psql "$port" "insert into accounts values (0, 0)"   # a later commit, so recovery can stop before it
wait_archived
"${pitr[@]}" info

echo "== pitr restore --target-time '$before' --start"
"${pitr[@]}" restore --pgdata "$work/restored" --target-time "$before" --start \
  --port "$port2" --pg-option "unix_socket_directories='$work'" --pg-option "archive_mode=off"
count=$(psql "$port2" "select count(*) from accounts")
sum=$(psql "$port2" "select sum(balance) from accounts")
echo "== restored: $count rows, sum $sum"
[[ $count == 10000 && $sum == 1000010 ]] || { echo "demo FAILED: expected 10000 rows, sum 1000010"; exit 1; }
echo "demo OK: the deletion is gone, the update before it is kept"
