#!/usr/bin/env bash
# Backup / restore / WAL-replay benchmark: pitr side by side with pg_basebackup, pgBackRest
# (zstd, process-max 2) and cp, on one pgbench cluster, in one run (issues 3 and 4, "Speed").
#
#   1. backups: pg_basebackup -Ft -X stream, pitr backup, pgbackrest backup --type=full;
#      then (cluster unchanged, after a CHECKPOINT) a 2nd pitr backup and pgbackrest --type=incr;
#      with ENCRYPTED=1 (the default) each pitr and pgbackrest row also encrypted, into a second
#      repository (pitr --encryption with a key file, pgBackRest aes-256-cbc)
#   2. restore lay-down: pitr restore --target-immediate, pgbackrest restore --type=immediate,
#      tar -xf of the pg_basebackup copy
#   3. WAL replay of ~1 GB archived WAL: pitr's restore_command vs restore_command='cp DIR/%f %p'
#
# Run as root on Debian 12 with PostgreSQL 15 (root only drops the page cache; the server and
# every timed tool run as the `postgres` user):
#
#   sudo benches/backup_restore.sh                 # SCALE=100 (~1.5 GB), 1 GiB of WAL
#   sudo SCALE=10 WAL_MB=128 benches/backup_restore.sh   # quick check (~2 min)
#
# Environment:
#   SCALE=100            pgbench -i scale of the cluster
#   WAL_MB=1024          WAL to archive and replay in step 3 (0 skips step 3)
#   REPLAY_ROUNDS=2      replay with pitr and with cp this many times each (order alternating:
#                        pitr cp, cp pitr, ...); the ratio uses the means
#   LAYDOWN_ROUNDS=2     lay down with pitr and pgBackRest this many times each (order
#                        alternating: pitr pgbr, pgbr pitr, ...); the target uses the means
#   CP_FIRST=0           1: start with cp instead of pitr
#   DROP_CACHES=1        sync + drop the page cache before every timed step (0, or when the
#                        kernel refuses: warm the cache with one throwaway pg_basebackup)
#                        Warm runs on an ext4 without a journal (this VM's): ext4 then skips
#                        inodes deleted in the last 60-360 s, so a warm run started within ~6 min
#                        of a previous run's cleanup pays that scan on every file it creates
#                        (pitr's chunks, pgBackRest's files); leave a pause between warm runs
#   VERIFY_LAYDOWN=1     pg_verifybackup -n on pitr's lay-down (untimed)
#   PITR_BIN=...         pitr binary (default <repo>/target/release/pitr, built if missing);
#                        a private copy in the work dir is what runs
#   PITR_TREE=...        note for the report on what PITR_BIN was built from (e.g. a commit)
#   PGBR_ZST_LEVEL=3     pgBackRest compress-level (its default for zst)
#   PGBR_PROCESS_MAX=2   pgBackRest process-max (backup and restore)
#   PGBR_LOG_FILE=off    pgBackRest log-level-file
#   QUIET_WAIT=0         before each timed step wait up to this many seconds for the CPUs to be
#   QUIET_BUSY=0.25      idle (busy fraction below QUIET_BUSY); the report shows the load seen
#   ENCRYPTED=1          also encrypted twins of the pitr and pgBackRest rows (issue 12): pitr
#                        `init --encryption` opened with a key file (`pitr key add --key-file`),
#                        pgBackRest repo1-cipher-type=aes-256-cbc; 0: the plain rows only
#   ENC_FIRST=0          1: each tool's encrypted backup runs before its plain one
#   PERF=1               also profile one extra full pitr backup (perf record -g; not timed)
#   KEEP=1               keep the work directory (logs, repositories)
#   OUT=FILE             results file (default benches/results/backup_restore-<date>.md)
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

WORK=$(mktemp -d /tmp/br-bench.XXXXXX)   # short: Unix socket paths are limited to ~107 bytes
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
OUT=${OUT:-$HERE/results/backup_restore-$(date +%Y-%m-%d).md}
TMP_OUT=$WORK/result.md

/usr/bin/python3 "$HERE/backup_restore.py" --workdir "$WORK" --pitr-bin "$WORK/pitr" \
    --pitr-built "$PITR_BUILT" --out "$TMP_OUT"

cp "$TMP_OUT" "$OUT"
cp "${TMP_OUT%.md}.json" "${OUT%.md}.json"
echo "results written to $OUT (raw figures in ${OUT%.md}.json)" >&2
