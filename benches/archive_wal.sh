#!/usr/bin/env bash
# archive-wal / restore-wal benchmark: pitr side by side with pgBackRest (zstd), cp+fsync and zstd.
#
# Run as root on Debian 12 with PostgreSQL 15 (the server and every timed tool run as the
# `postgres` user, since PostgreSQL refuses root):
#
#   sudo benches/archive_wal.sh
#
# Environment:
#   SEGMENTS=40          number of real 16 MiB WAL segments in the corpus
#   SCALE=10             pgbench -i scale of the throwaway cluster
#   ROUNDS=3             measured rounds (every mode, fresh repositories each round)
#   WARMUP=1             one extra round first, left out of the summary (0: none)
#   MODES=cp,pitr_sync,pitr_sync_enc,pitr_sync_enc_pass,pgbr_sync,pgbr_sync_enc,pgbr_sync@1,
#         pitr_backlog,pitr_backlog_enc,pgbr_async,pgbr_async_enc,restore
#                        (a pgbr mode may carry @LEVEL: pgbr_sync@1 runs zstd level 1)
#                        _enc: an encrypted repository -- pitr `init --encryption` opened with a
#                        key file from `pitr key add --key-file` (the documented archive_command
#                        setup), pgBackRest repo1-cipher-type=aes-256-cbc; pitr_sync_enc_pass:
#                        pitr opened with the passphrase itself (one Argon2id run per call);
#                        restore: restore-wal / archive-get from every sync repository made
#   KDF_MEMORY=64        Argon2id MiB of the encrypted pitr repositories' passphrase slot
#   PITR_BIN=...         pitr binary (default ${CARGO_TARGET_DIR:-<repo>/target}/release/pitr,
#                        built with `cargo build --release` if missing; if the build fails
#                        the pitr rows are skipped; SKIP_PITR=1 skips them on purpose)
#   PGBR_ZST_LEVEL=3     pgBackRest compress-level (its default for zst is 3)
#   PGBR_PROCESS_MAX=2   pgBackRest process-max for the async rows
#   PGBR_LOG_FILE=off    pgBackRest log-level-file (its default is info)
#   QUIET_WAIT=300       before each mode wait up to this many seconds for the CPUs to be
#   QUIET_BUSY=0.25      idle (busy fraction below QUIET_BUSY); the report shows the load seen
#   RETRIES=2            redo a mode (up to this often) when the CPUs are busy right after it
#   KEEP=1               keep the work directory
#   OUT=FILE             results file (default benches/results/archive_wal-<date>.md)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin

if [[ $(id -u) -ne 0 ]]; then
    echo "run as root (the script installs packages and runs PostgreSQL as postgres)" >&2
    exit 2
fi
[[ -x $PGBIN/postgres ]] || { echo "PostgreSQL 15 not found in $PGBIN" >&2; exit 2; }

need_pkgs=()
command -v pgbackrest >/dev/null || need_pkgs+=(pgbackrest)
command -v zstd >/dev/null || need_pkgs+=(zstd)
command -v pgbench >/dev/null || need_pkgs+=(postgresql-contrib)
if ((${#need_pkgs[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
fi
# hyperfine is optional (not used by the driver; handy for ad-hoc runs)
command -v hyperfine >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine \
    >/dev/null 2>&1 || true

PITR_BIN=${PITR_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/pitr}
if [[ ${SKIP_PITR:-0} == 1 ]]; then
    PITR_BIN=""
elif [[ ! -x $PITR_BIN ]]; then
    echo "building pitr (cargo build --release)…" >&2
    if ! (cd "$ROOT" && cargo build --release --bin pitr >&2); then
        echo "pitr failed to build: running without the pitr rows" >&2
        PITR_BIN=""
    else
        PITR_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/pitr
    fi
fi

WORK=$(mktemp -d /tmp/wal-bench.XXXXXX)
cleanup() {
    # stop a cluster left running by an interrupted driver, then remove everything
    if [[ -f $WORK/pgdata/postmaster.pid ]]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pgdata" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    # a detached pgBackRest async worker (started with --config=$WORK/...) may still be
    # finishing; give it a few seconds before its files go away
    for _ in $(seq 20); do
        pgrep -u postgres -f -- "--config=$WORK/" >/dev/null || break
        sleep 0.5
    done
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT INT TERM

chown postgres:postgres "$WORK"
chmod 700 "$WORK"
if [[ -n $PITR_BIN ]]; then
    # the postgres user may not be able to read the build tree: use a private copy
    PITR_BUILT="$PITR_BIN, $(date -u -r "$PITR_BIN" '+%Y-%m-%d %H:%M UTC')"
    if git -C "$ROOT" rev-parse --short HEAD >/dev/null 2>&1; then
        PITR_BUILT+=", tree at $(git -C "$ROOT" rev-parse --short HEAD)"
        [[ -z $(git -C "$ROOT" status --porcelain -- crates Cargo.toml 2>/dev/null) ]] || PITR_BUILT+=" + local changes"
    fi
    install -o postgres -m 755 "$PITR_BIN" "$WORK/pitr"
    PITR_RUN=$WORK/pitr
else
    PITR_RUN=""
    PITR_BUILT=""
fi

mkdir -p "$HERE/results"
OUT=${OUT:-$HERE/results/archive_wal-$(date +%Y-%m-%d).md}
TMP_OUT=$WORK/result.md

runuser -u postgres -- env \
    SEGMENTS="${SEGMENTS:-40}" SCALE="${SCALE:-10}" ROUNDS="${ROUNDS:-3}" WARMUP="${WARMUP:-1}" \
    ${MODES:+MODES="$MODES"} PGBR_ZST_LEVEL="${PGBR_ZST_LEVEL:-3}" \
    PGBR_PROCESS_MAX="${PGBR_PROCESS_MAX:-2}" PGBR_LOG_FILE="${PGBR_LOG_FILE:-off}" \
    QUIET_WAIT="${QUIET_WAIT:-300}" QUIET_BUSY="${QUIET_BUSY:-0.25}" \
    RETRIES="${RETRIES:-2}" KDF_MEMORY="${KDF_MEMORY:-64}" \
    PATH="/usr/local/bin:/usr/bin:/bin" \
    /usr/bin/python3 "$HERE/archive_wal.py" --workdir "$WORK" --pitr-bin "$PITR_RUN" --pitr-built "$PITR_BUILT" --out "$TMP_OUT"

cp "$TMP_OUT" "$OUT"
cp "${TMP_OUT%.md}.json" "${OUT%.md}.json"
echo "results written to $OUT (per-call times in ${OUT%.md}.json)" >&2
