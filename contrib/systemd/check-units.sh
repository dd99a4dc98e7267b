#!/usr/bin/env bash
# Checks the units in contrib/systemd with `systemd-analyze verify`, as CI does (.ci/run),
# then what verify cannot see: every service alerts through OnFailure=pitr-notify@%n.service,
# every oneshot has a TimeoutStartSec=, the templates skip an instance without its
# configuration and log under their own name; and prints each service's exposure from
# `systemd-analyze security --offline=true`, which must stay at or below 3.5.
# No systemd needs to be running: the units are installed by contrib/install.sh into a
# scratch root together with a copy of this machine's own unit directory (sysinit.target and
# friends) and the built binary, so that ExecStart= resolves, and verified there with --root.
# systemd-analyze only warns (exit 0) on unknown keys and unparsable values, so any output at
# all is a failure. A deliberately broken unit must be caught too, or the check proves nothing.
#
#   contrib/systemd/check-units.sh [PITR_BIN]      (default target/debug/pitr)
set -euo pipefail

top="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-$top/target/debug/pitr}"
command -v systemd-analyze >/dev/null || { echo "systemd-analyze not found (apt-get install systemd)" >&2; exit 1; }
[[ -x "$bin" ]] || { echo "no pitr binary at $bin (cargo build first)" >&2; exit 1; }

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
sysunits=""
for d in /usr/lib/systemd/system /lib/systemd/system; do
    if [[ -e "$d/sysinit.target" ]]; then sysunits="$d"; break; fi
done
[[ -n "$sysunits" ]] || { echo "no systemd unit directory with sysinit.target on this machine" >&2; exit 1; }
mkdir -p "$root/usr/lib/systemd"
cp -a "$sysunits/." "$root/usr/lib/systemd/system/"
PITR_BIN="$bin" DESTDIR="$root" PREFIX=/usr/local "$top/contrib/install.sh" 2>/dev/null
unitdir="$root/usr/local/lib/systemd/system"
# The programs the units run besides pitr (pitr-notify@'s systemd-cat), from this machine.
for exe in $(sed -n -e 's/^ExecStart=[-@:+!]*\(\/[^ ]*\).*/\1/p' "$unitdir"/pitr-* | sort -u); do
    if [[ ! -e "$root$exe" && -x "$exe" ]]; then install -D -m 0755 "$exe" "$root$exe"; fi
done

verify() { # unit files...; prints what systemd-analyze said, fails on any output or status
    local out
    if ! out="$(cd "$root" && systemd-analyze verify --man=no --root="$root" "$@" 2>&1)" || [[ -n "$out" ]]; then
        printf '%s\n' "${out:-systemd-analyze verify failed without output}"
        return 1
    fi
}

units=()
for f in "$unitdir"/pitr-*; do
    name="$(basename "$f")"
    case "$name" in
        *@.*) units+=("$unitdir/${name/@./@main.}") ;; # a template, as instance "main"
        *) units+=("$f") ;;
    esac
done
echo "==> systemd-analyze verify ${#units[@]} units" >&2
verify "${units[@]}" || { echo "unit check failed" >&2; exit 1; }

# The same services with the encrypted repository's drop-in (contrib/systemd/encryption.conf).
dropin="$root/usr/local/share/doc/pitr/encryption.conf"
[[ -f "$dropin" ]] || { echo "install.sh did not install encryption.conf" >&2; exit 1; }
enc_units=()
for u in "${units[@]}"; do
    [[ "$u" == *.service ]] || continue
    name="$(basename "$u")"
    case "$name" in
        *@main.service) d="$unitdir/${name/@main./@.}.d" ;; # a template's drop-in
        *) d="$u.d" ;;
    esac
    mkdir -p "$d" && cp "$dropin" "$d/encryption.conf"
    enc_units+=("$u")
done
echo "==> systemd-analyze verify ${#enc_units[@]} services with encryption.conf" >&2
verify "${enc_units[@]}" || { echo "unit check with encryption.conf failed" >&2; exit 1; }
bad="$unitdir/pitr-check.service.d/zz-broken.conf"
sed -e 's|^LoadCredentialEncrypted=.*|LoadCredentialEncryptd=pitr-passphrase:/x|' "$dropin" >"$bad"
if verify "$unitdir/pitr-check.service" >/dev/null; then
    echo "the unit check did not notice a misspelt key in a drop-in: it checks nothing" >&2
    exit 1
fi
rm -f "$bad"

# The check must see a broken unit: a misspelt key, a bad value, a missing binary.
sed -e 's|^PrivateTmp=yes|PrivateTmpp=yes|' "$unitdir/pitr-check.service" >"$unitdir/broken-key.service"
sed -e 's|^ProtectSystem=strict|ProtectSystem=bogus|' "$unitdir/pitr-check.service" >"$unitdir/broken-value.service"
sed -e 's|/usr/local/bin/pitr|/usr/local/bin/no-such-pitr|' "$unitdir/pitr-check.service" >"$unitdir/broken-exec.service"
for broken in broken-key broken-value broken-exec; do
    if verify "$unitdir/$broken.service" >/dev/null; then
        echo "the unit check did not notice $broken.service: it checks nothing" >&2
        exit 1
    fi
done

# What every service must say (systemd-analyze verify accepts a unit without any of it).
requirements() { # unit file, its name as shipped; prints what is missing, fails if anything
    local f="$1" name="$2" ok=0
    has() { grep -Eq "$1" "$f" || { echo "$name: no $2" >&2; ok=1; }; }
    if grep -q '^Type=oneshot' "$f"; then
        has '^TimeoutStartSec=[0-9]' "TimeoutStartSec= (a oneshot waits forever without it)"
    fi
    has '^UMask=0077$' "UMask=0077"
    has '^SystemCallFilter=@system-service$' "SystemCallFilter=@system-service"
    has '^PrivateDevices=yes$' "PrivateDevices=yes"
    has '^ProtectProc=invisible$' "ProtectProc=invisible"
    [[ "$name" == pitr-notify@.service ]] && return "$ok" # it must not alert about itself
    has '^OnFailure=pitr-notify@%n\.service$' "OnFailure=pitr-notify@%n.service (a failure would alert nobody)"
    case "$name" in
        *@.service)
            has '^ConditionPathExists=/.*/%i\.toml$' "ConditionPathExists= for the instance's configuration"
            has '^SyslogIdentifier=.*%i' "per-instance SyslogIdentifier=" ;;
    esac
    case "$name" in
        pitr-backup*|pitr-verify*)
            has '^IOSchedulingClass=idle$' "IOSchedulingClass=idle"
            has '^Nice=[1-9]' "Nice=" ;;
    esac
    return "$ok"
}
fail=0
for f in "$unitdir"/pitr-*.service; do
    requirements "$f" "$(basename "$f")" || fail=1
done
[[ "$fail" == 0 ]] || { echo "unit check failed" >&2; exit 1; }
# ... and it must notice their absence.
grep -Ev '^(TimeoutStartSec|OnFailure)=' "$unitdir/pitr-backup@.service" >"$unitdir/broken-req.service"
if requirements "$unitdir/broken-req.service" pitr-backup@.service 2>/dev/null; then
    echo "the unit check did not notice a service without TimeoutStartSec= and OnFailure=" >&2
    exit 1
fi

# Exposure (0 safe … 10 unsafe) of each service, the templates as instance "main".
echo "==> systemd-analyze security --offline=true (exposure; at most 3.5)" >&2
rm -f "$unitdir"/broken-*.service
rm -rf "$unitdir"/*.d
for u in "${units[@]}"; do
    [[ "$u" == *.service ]] || continue
    name="$(basename "$u")"
    out="$(cd "$root" && systemd-analyze security --offline=true --no-pager --root="$root" "$u" 2>&1)" || true
    level="$(sed -n -e "s/.*Overall exposure level for $name: \([0-9.]*\).*/\1/p" <<<"$out")"
    if [[ -z "$level" ]]; then
        printf '%s\n' "$out" >&2
        echo "no exposure level for $name" >&2
        exit 1
    fi
    echo "exposure $level $name"
    if ! awk -v l="$level" 'BEGIN { exit !(l <= 3.5) }'; then
        printf '%s\n' "$out" | grep '✗' >&2 || true
        echo "$name: exposure $level is above 3.5" >&2
        fail=1
    fi
done
[[ "$fail" == 0 ]] || { echo "unit check failed" >&2; exit 1; }
echo "==> units ok (${#units[@]} units; broken ones are caught)" >&2
