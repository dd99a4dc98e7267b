#!/usr/bin/env python3
"""Backup / restore / WAL-replay benchmark: pitr side by side with pg_basebackup, pgBackRest
and plain cp, on one pgbench cluster, in one run.

Driven by benches/backup_restore.sh, which checks the tools, copies the pitr binary where the
`postgres` user can run it, makes the work directory and runs this script as root. Root is
needed only to drop the page cache between timed steps; every PostgreSQL, pitr, pgBackRest,
pg_basebackup and tar process runs as `postgres` (runuser).

  1. backups: pg_basebackup -Ft -X stream (no compression), pitr backup, pgbackrest backup
     --type=full (zst, process-max 2); then, cluster unchanged after a CHECKPOINT, a second
     pitr backup and pgbackrest backup --type=incr. Wall time, CPU time and peak RSS of the
     client (wait4 rusage: the largest process of the client's process tree), stored bytes.
  2. restore lay-down: pitr restore --target-immediate, pgbackrest restore --type=immediate,
     tar -xf of the pg_basebackup copy.
  3. WAL replay: ~WAL_MB of pgbench WAL archived by pitr (and copied by cp to a plain
     directory in the same archive_command); the newest pitr backup laid down twice and
     replayed to the end of the archive, once with pitr's restore_command and once with
     restore_command='cp DIR/%f %p'. Time from pg_ctl start until the server is ready after
     promotion, and the redo time from the server's log.
"""

import argparse
import datetime
import json
import os
import platform
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time

PGBIN = "/usr/lib/postgresql/15/bin"
MIB = 1024 * 1024
STANZA = "bench"
PG_USER = "postgres"
# the encrypted repositories' secrets (benchmark only)
PGBR_CIPHER_PASS = "bench-pgbackrest-cipher-passphrase-0123456789"
PITR_PASSPHRASE = "bench pitr passphrase, correct horse battery staple"
ENC = ", encrypted"            # suffix of the encrypted pitr rows
ENC_PGBR = ", aes-256-cbc"     # suffix of the encrypted pgBackRest rows


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def as_pg(cmd):
    return ["runuser", "-u", PG_USER, "--"] + [str(c) for c in cmd]


def run(cmd, pg=True, check=True, **kw):
    """Run a setup command (not timed); fail loudly with its output."""
    full = as_pg(cmd) if pg else [str(c) for c in cmd]
    kw.setdefault("cwd", "/tmp")   # a directory the postgres user can enter
    r = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if check and r.returncode != 0:
        raise SystemExit(f"command failed ({r.returncode}): {shlex.join(full)}\n{r.stdout}")
    return r.stdout


def tree_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


def cpu_busy(interval=1.0):
    """Fraction of all CPU time that was busy (not idle/iowait) over `interval` seconds."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]
    t0, i0 = snap()
    time.sleep(interval)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool_version(cmd):
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True).stdout.strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001
        return f"unknown ({e})"


def mib(n):
    return "-" if n is None else f"{n / MIB:,.1f}"


def secs(n):
    return "-" if n is None else f"{n:.2f}"


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = os.path.abspath(a.workdir)
        self.pw = pwd.getpwnam(PG_USER)
        self.pgdata = os.path.join(self.work, "pgdata")
        self.sock = os.path.join(self.work, "s")
        self.port = free_port()
        self.pitr = a.pitr_bin
        self.repo = os.path.join(self.work, "repo-pitr")
        self.pgbr_repo = os.path.join(self.work, "repo-pgbr")
        self.pgbr_conf = os.path.join(self.work, "pgbackrest.conf")
        # encrypted twins: pitr `init --encryption` opened with a key file, pgBackRest
        # repo1-cipher-type=aes-256-cbc (own config, repository, lock and spool paths)
        self.enc = bool(a.encrypted)
        self.repo_enc = os.path.join(self.work, "repo-pitr-enc")
        self.passfile = os.path.join(self.work, "pitr-passphrase")
        self.keyfile = os.path.join(self.work, "pitr-archive.key")
        self.pgbr_repo_enc = os.path.join(self.work, "repo-pgbr-enc")
        self.pgbr_conf_enc = os.path.join(self.work, "pgbackrest-enc.conf")
        self.plain = os.path.join(self.work, "wal-plain")
        self.pgbb = os.path.join(self.work, "pgbb")
        self.running = []          # data directories of servers this script started
        self.backups = []          # rows of table 1
        self.restores = []         # rows of table 2
        self.replays = []          # rows of table 3
        self.notes = []
        self.data_bytes = None     # base.tar size: the denominator of every MiB/s
        self.cache_mode = "drop"   # or "warm" when drop_caches is not allowed

    # ---- small helpers ---------------------------------------------------------------------
    def mkdir(self, path, mode=0o700):
        os.makedirs(path, mode=mode, exist_ok=True)
        os.chmod(path, mode)
        os.chown(path, self.pw.pw_uid, self.pw.pw_gid)

    def write(self, path, text, mode=0o600):
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        os.chown(path, self.pw.pw_uid, self.pw.pw_gid)

    def append(self, path, text):
        with open(path, "a") as f:
            f.write(text)

    def psql(self, sql, port=None, sock=None):
        return run([os.path.join(PGBIN, "psql"), "-h", sock or self.sock, "-p",
                    str(port or self.port), "-U", "postgres", "-X", "-A", "-t", "-q",
                    "-v", "ON_ERROR_STOP=1", "-c", sql, "postgres"]).strip()

    def pg_ctl(self, *args):
        return run([os.path.join(PGBIN, "pg_ctl")] + list(args))

    def pgbr(self, *args, enc=False):
        return ["pgbackrest", f"--config={self.pgbr_conf_enc if enc else self.pgbr_conf}",
                f"--stanza={STANZA}", *args]

    def pitr_cmd(self, *args, enc=False):
        if enc:   # the key file, as archive_command and a scheduled backup would use
            return [self.pitr, "--repo", self.repo_enc, "--passphrase-file", self.keyfile, *args]
        return [self.pitr, "--repo", self.repo, *args]

    def conninfo(self):
        return f"host={self.sock} port={self.port} user=postgres"

    def drop_caches(self):
        """Write back dirty pages, then empty the page cache (when allowed), so that every
        timed step starts from the same (cold) cache and no earlier writeback lands on it."""
        subprocess.run(["sync"])
        if self.cache_mode == "drop":
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        time.sleep(0.5)

    def quiet(self):
        """Optionally wait for other processes to leave the CPUs idle; return the CPU busy
        fraction and the 1-minute load average seen just before the step."""
        deadline = time.time() + self.a.quiet_wait
        while True:
            busy = cpu_busy()
            if busy <= self.a.quiet_busy or time.time() >= deadline:
                break
            log(f"machine busy ({busy:.0%} CPU used by others); waiting")
        return busy, os.getloadavg()[0]

    def timed(self, name, cmd, cwd=None):
        """Run one timed client as postgres; return wall s, CPU s (user+sys of the whole
        process tree), peak RSS KiB (largest process of the tree) and its stdout."""
        out_path = os.path.join(self.work, f"out-{name}.txt")
        err_path = os.path.join(self.work, f"err-{name}.txt")
        with open(out_path, "w") as out, open(err_path, "w") as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(as_pg(cmd), cwd=cwd or self.work, stdout=out, stderr=err)
            _pid, status, ru = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise SystemExit(f"timed command failed ({p.returncode}): {shlex.join(map(str, cmd))}\n"
                             + open(err_path).read()[-4000:])
        stdout = open(out_path).read()
        # other work that started while the step ran is usually still running: look once more
        return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss_kib": ru.ru_maxrss,
                "stdout": stdout, "busy_after": cpu_busy(0.5)}

    # ---- cluster ---------------------------------------------------------------------------
    def setup(self):
        for d in (self.sock, self.plain, self.pgbb, os.path.join(self.work, "pgbr-log"),
                  os.path.join(self.work, "pgbr-lock"), os.path.join(self.work, "pgbr-spool")):
            self.mkdir(d)
        self.mkdir(self.pgbr_repo, 0o750)
        run([os.path.join(PGBIN, "initdb"), "-D", self.pgdata, "-A", "trust", "-U", "postgres",
             "--no-sync", "-E", "UTF8", "--locale", "C"])
        # archive_command starts as `true`: the WAL of pgbench -i is not needed by any backup
        # taken after it, and archiving ~1.3 GB three times would only slow the setup down.
        self.append(os.path.join(self.pgdata, "postgresql.auto.conf"),
                    f"port = {self.port}\n"
                    "listen_addresses = ''\n"
                    f"unix_socket_directories = '{self.sock}'\n"
                    "wal_level = replica\n"
                    "archive_mode = on\n"
                    "archive_command = '/bin/true'\n"
                    "max_wal_size = '2GB'\n"
                    "shared_buffers = '256MB'\n"
                    "synchronous_commit = off\n"
                    "log_line_prefix = '%m [%p] '\n"
                    "log_checkpoints = on\n")
        for enc in ((False, True) if self.enc else (False,)):
            self.write_pgbr_conf(enc)
        run([self.pitr, "--repo", self.repo, "init"])
        if self.enc:
            self.write(self.passfile, PITR_PASSPHRASE + "\n", 0o600)
            run([self.pitr, "--repo", self.repo_enc, "--passphrase-file", self.passfile, "init",
                 "--encryption"])
            run([self.pitr, "--repo", self.repo_enc, "--passphrase-file", self.passfile, "key",
                 "add", "--key-file", self.keyfile, "--label", "bench"])
            info = json.loads(run(self.pitr_cmd("-q", "info", "--json", enc=True)))
            if info.get("encrypted") is not True:
                raise SystemExit(f"pitr info --json does not say encrypted: {info}")
            self.pitr_cipher = info.get("cipher")
        self.setup_cluster()

    def write_pgbr_conf(self, enc):
        sfx = "-enc" if enc else ""
        if enc:
            for d in ("pgbr-lock-enc", "pgbr-spool-enc"):
                self.mkdir(os.path.join(self.work, d))
            self.mkdir(self.pgbr_repo_enc, 0o750)
        self.write(self.pgbr_conf_enc if enc else self.pgbr_conf,
                   "[global]\n"
                   f"repo1-path={self.pgbr_repo_enc if enc else self.pgbr_repo}\n"
                   + ("repo1-cipher-type=aes-256-cbc\n"
                      f"repo1-cipher-pass={PGBR_CIPHER_PASS}\n" if enc else "") +
                   "repo1-retention-full=99\n"
                   "compress-type=zst\n"
                   f"compress-level={self.a.pgbr_zst_level}\n"
                   f"process-max={self.a.pgbr_process_max}\n"
                   "start-fast=y\n"
                   "archive-timeout=300\n"
                   f"log-path={self.work}/pgbr-log\n"
                   f"lock-path={self.work}/pgbr-lock{sfx}\n"
                   f"spool-path={self.work}/pgbr-spool{sfx}\n"
                   "log-level-console=warn\n"
                   "log-level-stderr=warn\n"
                   f"log-level-file={self.a.pgbr_log_file}\n"
                   f"\n[{STANZA}]\n"
                   f"pg1-path={self.pgdata}\n"
                   f"pg1-port={self.port}\n"
                   f"pg1-socket-path={self.sock}\n", 0o640)

    def setup_cluster(self):
        self.pg_ctl("-D", self.pgdata, "-w", "-l", os.path.join(self.work, "postgres.log"),
                    "start")
        self.running.append(self.pgdata)
        pgbench = [os.path.join(PGBIN, "pgbench"), "-h", self.sock, "-p", str(self.port),
                   "-U", "postgres"]
        self.pgbench = pgbench
        log(f"pgbench -i -s {self.a.scale}")
        t0 = time.time()
        run(pgbench + ["-i", "-s", str(self.a.scale), "-q", "postgres"])
        log(f"pgbench -i took {time.time() - t0:.0f} s")
        run([os.path.join(PGBIN, "vacuumdb"), "-h", self.sock, "-p", str(self.port), "-U",
             "postgres", "--all", "--freeze", "--analyze", "-q"])
        self.psql("CHECKPOINT")
        self.set_archive_command(
            f"{self.pitr} -q --repo {self.repo} archive-wal %p %f"
            + (f" && {self.pitr} -q --repo {self.repo_enc} --passphrase-file {self.keyfile}"
               " archive-wal %p %f" if self.enc else "")
            + f" && pgbackrest --config={self.pgbr_conf} --stanza={STANZA} archive-push %p"
            + (f" && pgbackrest --config={self.pgbr_conf_enc} --stanza={STANZA} archive-push %p"
               if self.enc else "")
            + f" && cp %p {self.plain}/%f")
        run(self.pgbr("stanza-create"))
        if self.enc:
            run(self.pgbr("stanza-create", enc=True))
            info = json.loads(run(self.pgbr("--output=json", "info", enc=True)))
            ciphers = {r.get("cipher") for r in info[0].get("repo", [])}
            if ciphers != {"aes-256-cbc"}:
                raise SystemExit(f"pgbackrest info of the encrypted repository: cipher {ciphers}")
        self.settle_archive()
        self.db_size = int(self.psql("SELECT sum(pg_database_size(oid)) FROM pg_database"))
        log(f"cluster: {self.db_size / MIB:,.0f} MiB in databases")

    def set_archive_command(self, cmd):
        self.psql("ALTER SYSTEM SET archive_command = " + "'" + cmd.replace("'", "''") + "'")
        self.psql("SELECT pg_reload_conf()")
        time.sleep(0.5)

    def settle_archive(self, timeout=1800):
        """Switch WAL and wait until the archiver has archived everything up to there."""
        last = self.psql("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.time() + timeout
        while True:
            row = self.psql("SELECT coalesce(last_archived_wal, ''), failed_count,"
                            " coalesce(last_failed_wal, '') FROM pg_stat_archiver")
            done, failed, failed_wal = row.split("|")
            if done and done[:24] >= last and not done.endswith(".history"):
                return last
            if time.time() > deadline:
                raise SystemExit(f"archiving did not reach {last} (last {done}, failed "
                                 f"{failed} x, last failed {failed_wal}); see postgres.log")
            time.sleep(0.2)

    def stop_server(self, datadir, mode="fast"):
        if datadir in self.running:
            subprocess.run(as_pg([os.path.join(PGBIN, "pg_ctl"), "-D", datadir, "-w", "-m",
                                  mode, "stop"]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.running.remove(datadir)

    # ---- 1. backups ------------------------------------------------------------------------
    def backup_row(self, step, tool, cmd, stored_fn, name):
        self.drop_caches()
        busy, load = self.quiet()
        log(f"{step}: {tool}")
        r = self.timed(name, cmd)
        stored = stored_fn(r)
        row = {"step": step, "tool": tool, "cmd": shlex.join(map(str, cmd)), "wall": r["wall"],
               "cpu": r["cpu"], "rss_kib": r["rss_kib"], "stored": stored, "busy": busy,
               "busy_after": r["busy_after"], "load": load}
        self.backups.append(row)
        log(f"  {r['wall']:.2f} s, CPU {r['cpu']:.2f} s, peak RSS {r['rss_kib'] / 1024:.0f} MiB,"
            f" stored {mib(stored)} MiB")
        return r

    def pitr_backup_stored(self, r, enc=False):
        bid = r["stdout"].strip().splitlines()[-1].strip()
        backups = json.loads(run(self.pitr_cmd("list", "--json", enc=enc)))
        for b in backups:
            if b["id"] == bid:
                self.pitr_size_bytes = b.get("size_bytes")
                return b["stored_bytes"]
        raise SystemExit(f"pitr list --json has no backup {bid!r}")

    def pgbr_last_backup_dir(self, enc=False):
        info = json.loads(run(self.pgbr("--output=json", "info", enc=enc)))
        label = info[0]["backup"][-1]["label"]
        return os.path.join(self.pgbr_repo_enc if enc else self.pgbr_repo, "backup", STANZA, label)

    def bench_backups(self):
        if self.cache_mode == "warm":
            # No page-cache drop here: read the cluster once so every tool finds it cached.
            log("warming the page cache with a throwaway pg_basebackup")
            tmp = os.path.join(self.work, "pgbb-warm")
            run([os.path.join(PGBIN, "pg_basebackup"), "-h", self.sock, "-p", self.port,
                 "-U", "postgres", "-D", tmp, "-Ft", "-X", "stream", "-c", "fast"])
            shutil.rmtree(tmp)
        pgbb_cmd = [os.path.join(PGBIN, "pg_basebackup"), "-h", self.sock, "-p", self.port,
                    "-U", "postgres", "-D", self.pgbb, "-Ft", "-X", "stream", "-c", "fast"]
        shutil.rmtree(self.pgbb)

        def pgbb_stored(_r):
            self.data_bytes = os.path.getsize(os.path.join(self.pgbb, "base.tar"))
            return tree_bytes(self.pgbb)
        self.backup_row("full", "pg_basebackup -Ft -X stream", pgbb_cmd, pgbb_stored, "pgbb")
        # With ENCRYPTED=1 each tool's encrypted twin runs right after (ENC_FIRST=1: right
        # before) its plain row, into its own repository.
        encs = (False, True) if self.enc else (False,)
        if self.a.enc_first:
            encs = encs[::-1]
        for enc in encs:
            self.backup_row("full", "pitr backup" + (ENC if enc else ""),
                            self.pitr_cmd("backup", "-d", self.conninfo(), "--checkpoint", "fast",
                                          enc=enc),
                            lambda r, e=enc: self.pitr_backup_stored(r, e),
                            "pitr-full" + ("-enc" if enc else ""))
        for enc in encs:
            self.backup_row("full", "pgbackrest backup --type=full" + (ENC_PGBR if enc else ""),
                            self.pgbr("backup", "--type=full", enc=enc),
                            lambda _r, e=enc: tree_bytes(self.pgbr_last_backup_dir(e)),
                            "pgbr-full" + ("-enc" if enc else ""))
        self.psql("CHECKPOINT")
        for enc in encs:
            self.backup_row("unchanged", "pitr backup (2nd)" + (ENC if enc else ""),
                            self.pitr_cmd("backup", "-d", self.conninfo(), "--checkpoint", "fast",
                                          enc=enc),
                            lambda r, e=enc: self.pitr_backup_stored(r, e),
                            "pitr-2nd" + ("-enc" if enc else ""))
        for enc in encs:
            self.backup_row("unchanged", "pgbackrest backup --type=incr" + (ENC_PGBR if enc else ""),
                            self.pgbr("backup", "--type=incr", enc=enc),
                            lambda _r, e=enc: tree_bytes(self.pgbr_last_backup_dir(e)),
                            "pgbr-incr" + ("-enc" if enc else ""))

    def profile_backup(self):
        """PERF=1: one more full pitr backup, into a fresh repository, under `perf record -g`
        (not in the tables); the flat profile goes into the report."""
        repo = os.path.join(self.work, "repo-perf")
        run([self.pitr, "--repo", repo, "init"])
        data = os.path.join(self.work, "perf-backup.data")
        self.drop_caches()
        log("profile: pitr backup (full, fresh repository) under perf record -g")
        t0 = time.perf_counter()
        r = subprocess.run(["perf", "record", "-g", "-F", "999", "-o", data, "--"]
                           + as_pg([self.pitr, "--repo", repo, "backup", "-d", self.conninfo(),
                                    "--checkpoint", "fast"]),
                           cwd=self.work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            self.notes.append(f"perf record of pitr backup failed: {r.stderr.strip()[-300:]}")
            return
        rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                              "--sort", "comm,dso,symbol", "-g", "none", "--percent-limit", "0.7"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
        body = [re.sub(r"(\s+-)+\s*$", "", l).rstrip() for l in rep.splitlines()
                if l.strip() and not l.startswith("#")][:40]
        self.profile = (wall, body)
        shutil.rmtree(repo, ignore_errors=True)

    # ---- 2. restore lay-down ---------------------------------------------------------------
    def restore_row(self, tool, cmd, dest, name):
        shutil.rmtree(dest, ignore_errors=True)
        self.mkdir(dest)
        self.drop_caches()
        busy, load = self.quiet()
        log(f"lay-down: {tool}")
        r = self.timed(name, cmd)
        row = {"tool": tool, "cmd": shlex.join(map(str, cmd)), "wall": r["wall"],
               "cpu": r["cpu"], "rss_kib": r["rss_kib"], "bytes": tree_bytes(dest),
               "busy": busy, "busy_after": r["busy_after"], "load": load}
        self.restores.append(row)
        log(f"  {r['wall']:.2f} s, CPU {r['cpu']:.2f} s, {row['bytes'] / MIB:,.0f} MiB laid down")
        return row

    def bench_restores(self):
        def laydown(name):
            return os.path.join(self.work, f"laydown-{name}")

        def pitr(d):
            return ("pitr restore --target-immediate",
                    self.pitr_cmd("restore", "--pgdata", d, "--target-immediate"), "pitr-restore")

        def pgbr(d):
            return ("pgbackrest restore --type=immediate",
                    self.pgbr("restore", f"--pg1-path={d}", "--type=immediate"), "pgbr-restore")

        def pitr_enc(d):
            return ("pitr restore --target-immediate" + ENC,
                    self.pitr_cmd("restore", "--pgdata", d, "--target-immediate", enc=True),
                    "pitr-restore-enc")

        def pgbr_enc(d):
            return ("pgbackrest restore --type=immediate" + ENC_PGBR,
                    self.pgbr("restore", f"--pg1-path={d}", "--type=immediate", enc=True),
                    "pgbr-restore-enc")
        makers = (pitr, pitr_enc, pgbr, pgbr_enc) if self.enc else (pitr, pgbr)
        # Every lay-down goes into its own directory and none is deleted before the last one
        # is timed. This VM's ext4 has no journal, and without one ext4 will not reuse an
        # inode deleted in the last 60 s (360 s while its inode-table block is still dirty):
        # every file created after a big delete scans past those inodes (perf: half the time
        # in find_inode_bit / recently_deleted / find_get_block_common) as long as the inode
        # table is in the buffer cache -- so it hit warm runs only, whoever came after a
        # rmtree. A journalled ext4 (the usual production setup) never makes that check.
        #
        # Untimed warm-up lay-down first. This VM hands memory the guest has left free for a
        # while back to its host (virtio free page reporting); the first process that then
        # writes 1.5 GB into the page cache pays a host fault per page (perf: ~50% of the
        # time in copy_folio_from_iter_atomic), whichever tool it is. Rounds then alternate
        # the order (pitr first, then pgBackRest first, ...).
        warm = laydown("warmup")
        self.mkdir(warm)
        run(["tar", "-xf", os.path.join(self.pgbb, "base.tar"), "-C", warm], pg=False)
        dirs = [warm]
        first = {}
        for i in range(self.a.laydown_rounds):
            for make in (makers if i % 2 == 0 else makers[::-1]):
                d = laydown(f"{make.__name__}-{i + 1}")
                tool, cmd, name = make(d)
                dirs.append(d)
                self.restore_row(tool, cmd, d, f"{name}-{i + 1}")
                if name.startswith("pitr-restore"):
                    first.setdefault(name, d)
        if self.a.verify_laydown:
            for name, d in first.items():
                out = run([os.path.join(PGBIN, "pg_verifybackup"), "-n", d], check=False)
                self.notes.append(f"pg_verifybackup -n on pitr's lay-down ({name}): "
                                  + (out.strip().splitlines() or ["(no output)"])[-1])
        if self.a.laydown_rounds > 1:
            for tool in [m("")[0] for m in makers]:
                rows = [r for r in self.restores if r["tool"] == tool]
                mean = {k: sum(r[k] for r in rows) / len(rows)
                        for k in ("wall", "cpu", "rss_kib", "bytes", "busy", "busy_after", "load")}
                self.restores.append({**rows[0], **mean, "tool": f"**mean of {len(rows)}** {tool}",
                                      "mean_of": tool})
        base = os.path.join(self.pgbb, "base.tar")
        walt = os.path.join(self.pgbb, "pg_wal.tar")
        d = laydown("tar")
        dirs.append(d)
        row = self.restore_row(
            "tar -xf (pg_basebackup copy)",
            ["sh", "-c", f"tar -xf {base} -C {d} && tar -xf {walt} -C {d}/pg_wal"], d, "tar")
        # tar writes into the page cache; pitr and pgBackRest fsync what they write. Time
        # the writeback too (syncfs of the filesystem, as its own process, right after).
        r = self.timed("tar-sync", ["sync", "-f", d])
        self.restores.append({**row, "tool": "tar -xf + sync -f (writeback)",
                              "wall": row["wall"] + r["wall"], "cpu": row["cpu"] + r["cpu"]})
        log(f"  + sync -f: {r['wall']:.2f} s")
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)

    # ---- 3. WAL replay ---------------------------------------------------------------------
    def generate_wal(self):
        self.set_archive_command(f"{self.pitr} -q --repo {self.repo} archive-wal %p %f"
                                 f" && cp %p {self.plain}/%f")
        want = self.a.wal_mb * MIB
        lsn0 = self.psql("SELECT pg_current_wal_lsn()")
        t0 = time.time()
        seconds = 10
        while True:
            done = int(float(self.psql(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{lsn0}')")))
            log(f"WAL generated: {done / MIB:,.0f} / {self.a.wal_mb} MiB")
            if done >= want:
                break
            if time.time() - t0 > 3600:
                raise SystemExit("WAL generation took too long")
            if done > 0:   # aim the next run at what is missing, at the rate seen so far
                rate = done / (time.time() - t0)
                seconds = max(2, min(20, int((want - done) / rate) + 1))
            run(self.pgbench + ["-n", "-c", "4", "-j", "2", "-T", str(seconds), "postgres"])
        last = self.settle_archive()
        log(f"WAL archived up to {last} ({time.time() - t0:.0f} s)")
        self.stop_server(self.pgdata)
        return last

    def replay(self, mode):
        d = os.path.join(self.work, f"replay-{mode}")
        sock = os.path.join(self.work, "s2")
        self.mkdir(sock)
        shutil.rmtree(d, ignore_errors=True)
        run(self.pitr_cmd("restore", "--pgdata", d))
        port = free_port()
        extra = (f"# benchmark overrides\n"
                 f"port = {port}\n"
                 "listen_addresses = ''\n"
                 f"unix_socket_directories = '{sock}'\n"
                 "archive_mode = off\n"
                 "log_line_prefix = '%m [%p] '\n")
        if mode == "cp":
            extra += (f"restore_command = 'cp {self.plain}/%f %p'\n"
                      "recovery_end_command = ''\n")
        self.append(os.path.join(d, "postgresql.auto.conf"), extra)
        conf = open(os.path.join(d, "postgresql.auto.conf")).read()
        restore_command = re.findall(r"^restore_command = '(.*)'$", conf, re.M)[-1]
        logf = os.path.join(self.work, f"replay-{mode}.log")
        if os.path.exists(logf):
            os.unlink(logf)
        self.drop_caches()
        busy, load = self.quiet()
        log(f"replay: {mode} (restore_command = {restore_command})")
        t0 = time.time()
        run([os.path.join(PGBIN, "pg_ctl"), "-D", d, "-l", logf, "-W", "start"])   # no wait
        self.running.append(d)
        ready_ts = None
        deadline = t0 + 7200
        text = ""
        while ready_ts is None:
            time.sleep(0.05)
            try:
                text = open(logf).read()
            except FileNotFoundError:
                text = ""
            m = re.search(r"^(\S+ \S+) \S+ \[\d+\] LOG:  database system is ready to accept "
                          r"connections", text[text.find("archive recovery complete"):], re.M) \
                if "archive recovery complete" in text else None
            if m:
                ready_ts = self.log_ts(m.group(1))
            bad = re.search(r"^.*\b(FATAL|PANIC):.*$", text, re.M)
            if bad:
                raise SystemExit(f"replay with {mode}: {bad.group(0)} (log {logf})")
            if time.time() > deadline:
                raise SystemExit(f"replay with {mode} did not finish (log {logf})")
        detected = time.time()
        busy_after = cpu_busy(0.5)
        in_rec = self.psql("SELECT pg_is_in_recovery()", port=port, sock=sock)
        if in_rec != "f":
            raise SystemExit(f"replay with {mode}: server still in recovery")
        start_ts = self.find_ts(text, r"redo starts at")
        done = re.search(r"^(\S+ \S+) \S+ \[\d+\] LOG:  redo done at (\S+) system usage: "
                         r"CPU: user: ([\d.]+) s, system: ([\d.]+) s, elapsed: ([\d.]+) s", text, re.M)
        if not done:
            raise SystemExit(f"no 'redo done' line in {logf}")
        last_tx = re.search(r"last completed transaction was at log time (.*)$", text, re.M)
        row = {"mode": mode, "restore_command": restore_command,
               "total": ready_ts - t0, "detected": detected - t0,
               "redo_log": self.log_ts(done.group(1)) - start_ts,
               "redo_elapsed": float(done.group(5)),
               "startup_cpu": float(done.group(3)) + float(done.group(4)),
               "redo_done_lsn": done.group(2),
               "last_tx": last_tx.group(1) if last_tx else None,
               "busy": busy, "busy_after": busy_after, "load": load}
        self.replays.append(row)
        log(f"  ready after {row['total']:.2f} s; redo {row['redo_elapsed']:.2f} s"
            f" (startup CPU {row['startup_cpu']:.2f} s), done at {row['redo_done_lsn']}")
        self.stop_server(d)
        # pitr's prefetch worker may still be exiting: let it go before removing its spool
        time.sleep(1)
        shutil.rmtree(d, ignore_errors=True)
        return row

    @staticmethod
    def log_ts(s):
        return datetime.datetime.strptime(s, "%Y-%m-%d %H:%M:%S.%f").replace(
            tzinfo=datetime.timezone.utc).timestamp()

    def find_ts(self, text, what):
        m = re.search(r"^(\S+ \S+) \S+ \[\d+\] LOG:  " + what, text, re.M)
        if not m:
            raise SystemExit(f"no '{what}' line in the replay log")
        return self.log_ts(m.group(1))

    def bench_replay(self):
        last = self.generate_wal()
        backups = json.loads(run(self.pitr_cmd("list", "--json")))
        first = backups[-1]["wal_start"]
        segs = sorted(n for n in os.listdir(self.plain) if len(n) == 24 and first <= n <= last)
        self.replay_wal = (len(segs), first, segs[-1] if segs else None)
        modes = ["pitr", "cp"] if not self.a.cp_first else ["cp", "pitr"]
        for i in range(self.a.replay_rounds):
            # alternate the order (A B, B A, ...) so that neither always runs first
            for m in (modes if i % 2 == 0 else modes[::-1]):
                self.replay(m)
        lsns = {r["redo_done_lsn"] for r in self.replays}
        if len(lsns) != 1:
            self.notes.append(f"WARNING: replays ended at different LSNs: {sorted(lsns)}")

    # ---- report ----------------------------------------------------------------------------
    def machine(self):
        cpu = "?"
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        fs = run(["df", "-T", self.work], pg=False).splitlines()[-1].split()
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return [
            f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
            f"- machine: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, kernel {platform.release()}",
            f"- work dir (every repository, the cluster, the lay-downs): {fs[1]} on {fs[0]} ({self.work})",
            f"- PostgreSQL: {tool_version([os.path.join(PGBIN, 'postgres'), '--version'])}",
            f"- pgBackRest: {tool_version(['pgbackrest', 'version'])}, compress-type=zst "
            f"compress-level={self.a.pgbr_zst_level}, process-max={self.a.pgbr_process_max}, "
            f"start-fast=y, log-level-file={self.a.pgbr_log_file}, posix repo",
            f"- pitr: {tool_version([self.pitr, '--version'])} ({self.a.pitr_built})",
        ]

    def report(self):
        d = self.data_bytes
        lines = [f"# backup / restore / WAL replay benchmark ({datetime.date.today().isoformat()})",
                 "", *self.machine(),
                 f"- cluster: `pgbench -i -s {self.a.scale}` (+ vacuumdb --freeze --analyze), "
                 f"{self.db_size / MIB:,.0f} MiB in databases, base.tar {mib(d)} MiB "
                 "(the data size every MiB/s below is computed from)",
                 "- page cache: " + ("`sync; echo 3 > /proc/sys/vm/drop_caches` before every "
                                     "timed step (cold reads)" if self.cache_mode == "drop" else
                                     "could not be dropped: one throwaway pg_basebackup first "
                                     "warmed it for every tool (warm reads)"),
                 f"- load average (1 min) at the start: {self.load_start:.2f}; at the end: "
                 f"{os.getloadavg()[0]:.2f}; each row shows the CPU busy fraction of the machine "
                 "in the second before and the half second after the step, and the load average "
                 "just before it: well above 0% before means other work competed with the step "
                 "(the figure is pessimistic); after may also be the step's own aftermath (the "
                 "archiver archiving a backup's last segment, kernel writeback)",
                 *(["- encrypted rows (`, encrypted`, `, aes-256-cbc`): pitr `init --encryption` "
                    "(AES-256-GCM per object, keyed BLAKE3 chunk IDs; `pitr info --json`: cipher "
                    f"{getattr(self, 'pitr_cipher', '?')}), every call opened with a "
                    "key file from `pitr key add --key-file` (`--passphrase-file KEY`: HKDF, no "
                    "Argon2id); pgBackRest with repo1-cipher-type=aes-256-cbc and a "
                    "repo1-cipher-pass, otherwise the same configuration; each into its own "
                    "repository, archive_command archiving to all four; each encrypted backup "
                    "runs right " + ("before" if self.a.enc_first else "after")
                    + " the same tool's plain one"] if self.enc else []),
                 "- wall: the client process from fork to exit; CPU: user+sys of the client's "
                 "process tree (server side not included); peak RSS: the largest single process "
                 "of that tree (wait4 rusage)",
                 "",
                 "## 1. Backups",
                 "",
                 "| backup | tool | wall s | data MiB/s | CPU s | peak RSS MiB | stored MiB "
                 "| stored / data | busy before/after / load |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.backups:
            lines.append(
                f"| {r['step']} | {r['tool']} | {r['wall']:.2f} | "
                f"{d / MIB / r['wall']:,.0f} | {r['cpu']:.2f} | {r['rss_kib'] / 1024:,.1f} | "
                f"{mib(r['stored'])} | {100 * r['stored'] / d:.2f}% | "
                f"{r['busy']:.0%}/{r['busy_after']:.0%} / {r['load']:.1f} |")
        lines += ["",
                  "stored: pg_basebackup = base.tar + pg_wal.tar + backup_manifest; pitr = "
                  "`stored_bytes` of the backup in `pitr list --json` (new chunks this backup "
                  "added); pgBackRest = its backup directory (repo/backup/bench/LABEL).",
                  "",
                  "## 2. Restore lay-down",
                  "",
                  "| tool | wall s | data MiB/s | CPU s | peak RSS MiB | laid down MiB | busy before/after / load |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in self.restores:
            lines.append(f"| {r['tool']} | {r['wall']:.2f} | {d / MIB / r['wall']:,.0f} | "
                         f"{r['cpu']:.2f} | {r['rss_kib'] / 1024:,.1f} | {r['bytes'] / MIB:,.0f} | "
                         f"{r['busy']:.0%}/{r['busy_after']:.0%} / {r['load']:.1f} |")
        lines += ["",
                  "pitr restores its newest backup (the 2nd, same content), pgBackRest its "
                  "incremental (files from the full), tar the pg_basebackup copy (base.tar, then "
                  "pg_wal.tar into pg_wal/). pitr and pgBackRest fsync what they write; tar does "
                  "not, so the next row adds a `sync -f` of the filesystem right after it.",
                  ""]
        if self.replays:
            n, first, lastseg = self.replay_wal
            cp = [r for r in self.replays if r["mode"] == "cp"]
            lines += ["## 3. WAL replay",
                      "",
                      f"{n} archived segments ({n * 16:,} MiB, {first} .. {lastseg}) from "
                      f"`pgbench -c 4 -j 2` after the newest pitr backup; that backup laid down "
                      "by `pitr restore` (no target: replay to the end of the archive, then "
                      "promote), the server started with `pg_ctl start` (archive_mode=off).",
                      "",
                      "| restore_command | start → ready s | ratio to cp | redo s (server) | "
                      "ratio to cp | redo WAL MiB/s | startup CPU s | busy before/after / load |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            cp_total = sum(c["total"] for c in cp) / len(cp) if cp else None
            cp_redo = sum(c["redo_elapsed"] for c in cp) / len(cp) if cp else None
            rows = list(self.replays)
            if len(cp) > 1:   # several rounds: a mean row per mode
                for mode in ("pitr", "cp"):
                    rs = [r for r in self.replays if r["mode"] == mode]
                    if not rs:
                        continue
                    avg = {k: sum(r[k] for r in rs) / len(rs)
                           for k in ("total", "redo_elapsed", "startup_cpu", "busy", "busy_after",
                                     "load")}
                    rows.append({**avg, "mode": f"**mean of {len(rs)}** {mode}",
                                 "restore_command": rs[0]["restore_command"]})
            for r in rows:
                lines.append(
                    f"| {r['mode']}: `{r['restore_command']}` | {r['total']:.2f} | "
                    + (f"{r['total'] / cp_total:.2f}x" if cp else "-") + " | "
                    f"{r['redo_elapsed']:.2f} | "
                    + (f"{r['redo_elapsed'] / cp_redo:.2f}x" if cp else "-") + " | "
                    f"{n * 16 / r['redo_elapsed']:,.0f} | {r['startup_cpu']:.2f} | "
                    f"{r['busy']:.0%}/{r['busy_after']:.0%} / {r['load']:.1f} |")
            lines += ["",
                      "start → ready: from `pg_ctl start` to the log's \"database system is ready "
                      "to accept connections\" after \"archive recovery complete\" (includes the "
                      "startup's fsync of the whole data directory and the end-of-recovery "
                      "checkpoint, the same work for both); redo s: the server's own \"redo done ... "
                      "elapsed\"; startup CPU: CPU time of the startup process (replay itself; "
                      "restore_command runs in child processes); runs in the order listed. Every run ended at "
                      + ", ".join(sorted({r['redo_done_lsn'] for r in self.replays})) + ".",
                      ""]
        lines += [f"## Targets (issues 3{', 4 and 12' if self.enc else ' and 4'})", ""]
        lines += self.targets()
        if getattr(self, "profile", None):
            wall, body = self.profile
            lines += ["", f"## Profile: a full pitr backup under `perf record -g` ({wall:.2f} s, "
                      "fresh repository, cold cache; on-CPU samples of pitr, by thread, "
                      "library and symbol)", "", "```", *body, "```"]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def targets(self):
        out = []
        b = {r["tool"]: r for r in self.backups}
        pf, pbb = b.get("pitr backup"), b.get("pg_basebackup -Ft -X stream")
        pgf, p2 = b.get("pgbackrest backup --type=full"), b.get("pitr backup (2nd)")
        pgi = b.get("pgbackrest backup --type=incr")

        def mark(ok):
            return "met" if ok else "**missed**"
        if pf and pbb and pgf:
            out.append(f"- first pitr backup faster than pg_basebackup and pgBackRest full: "
                       f"{pf['wall']:.2f} s vs {pbb['wall']:.2f} s / {pgf['wall']:.2f} s — "
                       f"{mark(pf['wall'] < min(pbb['wall'], pgf['wall']))}")
        if p2 and pgi and pf:
            out.append(f"- second pitr backup faster than pgBackRest incr: {p2['wall']:.2f} s vs "
                       f"{pgi['wall']:.2f} s — {mark(p2['wall'] < pgi['wall'])}")
            frac = p2["stored"] / pf["stored"] if pf["stored"] else 0
            out.append(f"- second backup stores < 1% of the first: {100 * frac:.3f}% — "
                       f"{mark(frac < 0.01)}")
        rs = {r.get("mean_of", r["tool"]): r for r in self.restores
              if "mean_of" in r or self.a.laydown_rounds <= 1}
        pr, gr = rs.get("pitr restore --target-immediate"), rs.get("pgbackrest restore --type=immediate")
        if pr and gr:
            out.append(f"- lay-down at least as fast as pgBackRest: {pr['wall']:.2f} s vs "
                       f"{gr['wall']:.2f} s — {mark(pr['wall'] <= gr['wall'])}")
        if self.enc:
            out += self.enc_targets(b, rs)
        pitr = [r for r in self.replays if r["mode"] == "pitr"]
        cp = [r for r in self.replays if r["mode"] == "cp"]
        if pitr and cp:
            tp = sum(r["total"] for r in pitr) / len(pitr)
            tc = sum(r["total"] for r in cp) / len(cp)
            rp = sum(r["redo_elapsed"] for r in pitr) / len(pitr)
            rc = sum(r["redo_elapsed"] for r in cp) / len(cp)
            out.append(f"- replay with pitr within 1.2x of cp: start → ready {tp:.2f} s vs "
                       f"{tc:.2f} s = {tp / tc:.2f}x — {mark(tp / tc <= 1.2)}; redo alone "
                       f"{rp:.2f} s vs {rc:.2f} s = {rp / rc:.2f}x — {mark(rp / rc <= 1.2)}")
        return out

    def enc_targets(self, b, rs):
        """Issue 12: encrypted pitr within 1.15x of plain pitr, and faster than pgBackRest
        with repo1-cipher-type=aes-256-cbc (wall time of the same step, same run)."""
        out = []

        def mark(ok):
            return "met" if ok else "**missed**"
        pairs = [("first backup", b, "pitr backup", "pgbackrest backup --type=full"),
                 ("second backup (unchanged)", b, "pitr backup (2nd)",
                  "pgbackrest backup --type=incr"),
                 ("lay-down", rs, "pitr restore --target-immediate",
                  "pgbackrest restore --type=immediate")]
        for what, rows, pitr_t, pgbr_t in pairs:
            p, pe, ge = rows.get(pitr_t), rows.get(pitr_t + ENC), rows.get(pgbr_t + ENC_PGBR)
            if not (p and pe):
                continue
            ratio = pe["wall"] / p["wall"]
            line = (f"- {what}, encrypted pitr within 1.15x of plain pitr: {pe['wall']:.2f} s vs "
                    f"{p['wall']:.2f} s = {ratio:.2f}x (CPU {pe['cpu']:.2f} s vs {p['cpu']:.2f} s)"
                    f" — {mark(ratio <= 1.15)}")
            if ge:
                line += (f"; faster than pgBackRest aes-256-cbc: {pe['wall']:.2f} s vs "
                         f"{ge['wall']:.2f} s — {mark(pe['wall'] < ge['wall'])}")
            out.append(line)
        return out

    def main(self):
        self.load_start = os.getloadavg()[0]
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError as e:
            self.cache_mode = "warm"
            log(f"cannot drop the page cache ({e}); warming it instead")
        if not self.a.drop_caches:
            self.cache_mode = "warm"
        try:
            self.setup()
            self.bench_backups()
            if self.a.perf:
                self.profile_backup()
            self.bench_restores()
            if self.a.wal_mb > 0:
                self.bench_replay()
        finally:
            for dd in list(self.running):
                self.stop_server(dd, "immediate")
        report = self.report()
        print(report)
        if self.a.out:
            with open(self.a.out, "w") as f:
                f.write(report)
            with open(os.path.splitext(self.a.out)[0] + ".json", "w") as f:
                json.dump({"backups": self.backups, "restores": self.restores,
                           "replays": self.replays, "data_bytes": self.data_bytes,
                           "scale": self.a.scale, "notes": self.notes}, f, indent=1)


def parse():
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--pitr-bin", required=True, help="pitr binary the postgres user can run")
    p.add_argument("--pitr-built", default="", help="note on where the pitr binary came from")
    p.add_argument("--scale", type=int, default=int(env("SCALE", "100")))
    p.add_argument("--wal-mb", type=int, default=int(env("WAL_MB", "1024")),
                   help="WAL to generate and replay in step 3 (0 skips step 3)")
    p.add_argument("--replay-rounds", type=int, default=int(env("REPLAY_ROUNDS", "2")),
                   help="replay with pitr and with cp this many times each, order alternating")
    p.add_argument("--laydown-rounds", type=int, default=int(env("LAYDOWN_ROUNDS", "2")),
                   help="lay down with pitr and pgBackRest this many times each, order alternating")
    p.add_argument("--cp-first", type=int, default=int(env("CP_FIRST", "0")),
                   help="1: replay with cp first in the first round")
    p.add_argument("--drop-caches", type=int, default=int(env("DROP_CACHES", "1")),
                   help="0: never drop the page cache (warm it with a throwaway pg_basebackup)")
    p.add_argument("--verify-laydown", type=int, default=int(env("VERIFY_LAYDOWN", "1")),
                   help="run pg_verifybackup on pitr's lay-down (untimed)")
    p.add_argument("--pgbr-zst-level", type=int, default=int(env("PGBR_ZST_LEVEL", "3")))
    p.add_argument("--pgbr-process-max", type=int, default=int(env("PGBR_PROCESS_MAX", "2")))
    p.add_argument("--pgbr-log-file", default=env("PGBR_LOG_FILE", "off"))
    p.add_argument("--quiet-wait", type=float, default=float(env("QUIET_WAIT", "0")),
                   help="seconds to wait, before each timed step, for the CPUs to be idle")
    p.add_argument("--quiet-busy", type=float, default=float(env("QUIET_BUSY", "0.25")))
    p.add_argument("--perf", type=int, default=int(env("PERF", "0")),
                   help="1: profile one extra full pitr backup with perf record -g")
    p.add_argument("--encrypted", type=int, default=int(env("ENCRYPTED", "1")),
                   help="1: also encrypted pitr (key file) and pgBackRest (aes-256-cbc) rows")
    p.add_argument("--enc-first", type=int, default=int(env("ENC_FIRST", "0")),
                   help="1: each tool's encrypted backup before its plain one")
    p.add_argument("--out", default="")
    return p.parse_args()


if __name__ == "__main__":
    Bench(parse()).main()
