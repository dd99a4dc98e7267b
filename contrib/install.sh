#!/usr/bin/env bash
# Installs pitr: the binary, an example /etc/pitr/pitr.toml (never overwriting one), the
# systemd units (with ExecStart pointing at the installed binary), the postgresql.conf
# snippet and the docs.
#
#   contrib/install.sh                        # as root, into /usr/local and /etc
#   DESTDIR=/tmp/stage PREFIX=/usr contrib/install.sh
#
# PITR_BIN picks the binary (default target/release/pitr, built if missing); UNITDIR the
# unit directory (default $PREFIX/lib/systemd/system, which systemd reads for /usr/local
# too); SYSCONFDIR the configuration directory (default /etc).
#
# Every installed file is readable by the postgres user (archive_command runs as it): the
# binary, units and docs by everyone, the configuration 0640 root:postgres when a postgres
# group exists (also into a DESTDIR, when allowed to). The paths inside the units and the
# postgresql.conf snippet are rewritten to PREFIX and SYSCONFDIR.
set -euo pipefail
# A root umask of 0077 would make the directories install -D creates unreadable by postgres.
umask 0022

top="$(cd "$(dirname "$0")/.." && pwd)"
DESTDIR="${DESTDIR:-}"
PREFIX="${PREFIX:-/usr/local}"
SYSCONFDIR="${SYSCONFDIR:-/etc}"
UNITDIR="${UNITDIR:-$PREFIX/lib/systemd/system}"
PITR_BIN="${PITR_BIN:-$top/target/release/pitr}"

if [[ ! -x "$PITR_BIN" ]]; then
    echo "==> building $PITR_BIN" >&2
    (cd "$top" && cargo build --release --locked)
fi

install -D -m 0755 "$PITR_BIN" "$DESTDIR$PREFIX/bin/pitr"

# The configuration holds secrets or names them: readable by root and the postgres group.
conf="$DESTDIR$SYSCONFDIR/pitr/pitr.toml"
install -d -m 0755 "$DESTDIR$SYSCONFDIR/pitr"
if [[ -e "$conf" ]]; then
    echo "==> keeping $conf; the current example is $conf.example" >&2
    conf="$conf.example"
fi
install -m 0640 "$top/contrib/pitr.toml" "$conf"
if getent group postgres >/dev/null; then
    chgrp postgres "$conf" || echo "==> could not give $conf to group postgres: do it before use" >&2
else
    echo "==> no group postgres here: give $conf to the group PostgreSQL runs as (chgrp)" >&2
fi

# The installed paths, wherever the source says /usr/local and /etc.
paths() { # src dest: copy with the paths rewritten, mode 0644
    sed -e "s|/usr/local/bin/pitr|$PREFIX/bin/pitr|g" \
        -e "s|/etc/pitr/|$SYSCONFDIR/pitr/|g" \
        -e "s|/usr/local/share/doc/pitr/|$PREFIX/share/doc/pitr/|g" \
        "$1" >"$2"
    chmod 0644 "$2"
}

install -d -m 0755 "$DESTDIR$UNITDIR"
for unit in "$top"/contrib/systemd/*.service "$top"/contrib/systemd/*.timer; do
    paths "$unit" "$DESTDIR$UNITDIR/$(basename "$unit")"
done

install -d -m 0755 "$DESTDIR$PREFIX/share/doc/pitr"
install -m 0644 "$top/README.md" "$top"/docs/*.md "$DESTDIR$PREFIX/share/doc/pitr/"
# archive_command in the snippet runs the installed binary.
paths "$top/contrib/postgresql.conf.pitr" "$DESTDIR$PREFIX/share/doc/pitr/postgresql.conf.pitr"
# The drop-in for encrypted repositories (see its header): installed beside the docs, since a
# unit that loads a missing credential does not start.
install -m 0644 "$top/contrib/systemd/encryption.conf" "$DESTDIR$PREFIX/share/doc/pitr/"

echo "==> installed into ${DESTDIR:-/} (prefix $PREFIX)" >&2
if [[ -z "$DESTDIR" ]] && command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
    echo "==> enable with: systemctl enable --now pitr-backup.timer pitr-expire.timer pitr-verify.timer pitr-check.timer pitr-probe.timer" >&2
fi
