#!/usr/bin/env bash
# Expire + garbage-collection benchmark (issue 11): `pitr expire --retain-full 2` beside
# `pgbackrest expire --repo1-retention-full=2` on the same history: one pgbench cluster
# archiving to both, BACKUPS rounds of (pitr backup, pgbackrest full backup, pgbench writing
# WAL_MB_PER_ROUND MiB of WAL), then each expire timed once with the page cache dropped before
# it: wall, CPU, peak RSS, repository bytes (du -sb) and files before/after.
#
# Run as root on Debian 12 with PostgreSQL 15 (root only drops the page cache; the server and
# every timed tool run as the `postgres` user):
#
#   sudo benches/expire.sh                                    # SCALE=100, 10 backups, ~4 GB WAL
#   sudo SCALE=10 BACKUPS=3 WAL_MB_PER_ROUND=64 benches/expire.sh    # quick check
#
# Environment:
#   SCALE=100            pgbench -i scale of the cluster
#   BACKUPS=10           rounds of (pitr backup + pgbackrest full backup + pgbench)
#   WAL_MB_PER_ROUND=400 WAL written by pgbench after each pair of backups (10 x 400 MiB:
#                        the volume of a week of a quiet cluster; all of it minutes old)
#   PITR_BIN=...         pitr binary (default <repo>/target/release/pitr, built if missing);
#                        a private copy in the work dir is what runs
#   PITR_TREE=...        note for the report on what PITR_BIN was built from (e.g. a commit)
#   PGBR_ZST_LEVEL=3     pgBackRest compress-level (its default for zst)
#   PGBR_PROCESS_MAX=2   pgBackRest process-max
#   PGBR_LOG_FILE=off    pgBackRest log-level-file
#   QUIET_WAIT=0         before each timed step wait up to this many seconds for the CPUs to be
#   QUIET_BUSY=0.25      idle (busy fraction below QUIET_BUSY); the report shows the load seen
#   KEEP=1               keep the work directory (logs, repositories)
#   OUT=FILE             results file (default benches/results/expire-<date>.md)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin

if [[ $(id -u) -ne 0 ]]; then
    echo "run as root (PostgreSQL runs as postgres; root drops the page cache)" >&2
    exit 2
fi
[[ -x $PGBIN/postgres ]] || { echo "PostgreSQL 15 not found in $PGBIN" >&2; exit 2; }
id postgres >/dev/null 2>&1 || { echo "no postgres user" >&2; exit 2; }

need_pkgs=()
command -v pgbackrest >/dev/null || need_pkgs+=(pgbackrest)
command -v pgbench >/dev/null || need_pkgs+=(postgresql-contrib)
if ((${#need_pkgs[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
fi

PITR_BIN=${PITR_BIN:-$ROOT/target/release/pitr}
if [[ ! -x $PITR_BIN ]]; then
    echo "building pitr (cargo build --release)…" >&2
    (cd "$ROOT" && cargo build --release --bin pitr >&2)
    [[ -n ${CARGO_TARGET_DIR:-} ]] && PITR_BIN=$CARGO_TARGET_DIR/release/pitr
fi

WORK=$(mktemp -d /tmp/ex-bench.XXXXXX)   # short: Unix socket paths are limited to ~107 bytes
cleanup() {
    # stop every server an interrupted driver left running (source cluster, replay copies)
    for pid in "$WORK"/*/postmaster.pid; do
        [[ -e $pid ]] || continue
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$(dirname "$pid")" -m immediate -w stop \
            >/dev/null 2>&1 || true
    done
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

chown postgres:postgres "$WORK"
chmod 700 "$WORK"
# the postgres user may not be able to read the build tree: run a private copy
PITR_BUILT="copy of $PITR_BIN, built $(date -u -r "$PITR_BIN" '+%Y-%m-%d %H:%M UTC')"
PITR_BUILT+=", sha256 $(sha256sum "$PITR_BIN" | cut -c1-12)"
if [[ -n ${PITR_TREE:-} ]]; then
    PITR_BUILT+=", $PITR_TREE"          # e.g. PITR_TREE="built from 121bad9"
elif [[ $(realpath "$PITR_BIN") == "$ROOT"/* ]] && git -C "$ROOT" rev-parse --short HEAD >/dev/null 2>&1; then
    # built in this tree (a binary from elsewhere says nothing about this checkout)
    PITR_BUILT+=", tree at $(git -C "$ROOT" rev-parse --short HEAD)"
    [[ -z $(git -C "$ROOT" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null) ]] \
        || PITR_BUILT+=" + local changes"
fi
install -o postgres -m 755 "$PITR_BIN" "$WORK/pitr"

mkdir -p "$HERE/results"
OUT=${OUT:-$HERE/results/expire-$(date +%Y-%m-%d).md}
TMP_OUT=$WORK/result.md

/usr/bin/python3 "$HERE/expire.py" --workdir "$WORK" --pitr-bin "$WORK/pitr" \
    --pitr-built "$PITR_BUILT" --out "$TMP_OUT"

cp "$TMP_OUT" "$OUT"
cp "${TMP_OUT%.md}.json" "${OUT%.md}.json"
echo "results written to $OUT (raw figures in ${OUT%.md}.json)" >&2
