#!/usr/bin/env python3
"""archive-wal / restore-wal benchmark: pitr side by side with pgBackRest, cp+fsync and zstd.

Driven by benches/archive_wal.sh, which installs pgBackRest, builds pitr, creates the
work directory and runs this script as the `postgres` user. It can also be run by hand as
a non-root user that may run PostgreSQL:

    python3 benches/archive_wal.py --workdir /tmp/wal-bench --pitr-bin target/release/pitr

Every timed call is one process, run synchronously, one after the other, exactly as the
PostgreSQL archiver (archive_command) and the startup process (restore_command) call them.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time

PGBIN = "/usr/lib/postgresql/15/bin"
SEG_SIZE = 16 * 1024 * 1024
MIB = 1024 * 1024
STANZA = "bench"
# the repositories' secrets (benchmark only): pgBackRest's repo1-cipher-pass, pitr's passphrase
PGBR_CIPHER_PASS = "bench-pgbackrest-cipher-passphrase-0123456789"
PITR_PASSPHRASE = "bench pitr passphrase, correct horse battery staple"
# mode suffixes of the encrypted rows
ENC_KEY = ", encrypted (key file)"
ENC_PASS = ", encrypted (passphrase, Argon2id per call)"
ENC_PGBR = ", aes-256-cbc"


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    """Run a setup command (not timed); fail loudly with its output."""
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stdout}")
    return r.stdout


# CPU seconds (user+sys) of every timed call since the last Bench.record(), which takes them
PENDING_CPU = []


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd, cwd=None):
    """Run one timed call; return wall seconds (its CPU time goes to PENDING_CPU: user+sys of
    the process and the children it waited for; a detached worker is not counted).
    Non-zero exit aborts the benchmark."""
    c0 = children_cpu()
    t0 = time.perf_counter_ns()
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = (time.perf_counter_ns() - t0) / 1e9
    PENDING_CPU.append(children_cpu() - c0)
    if r.returncode != 0:
        raise SystemExit(
            f"timed command failed ({r.returncode}): {' '.join(map(str, cmd))}\n"
            f"{r.stderr.decode(errors='replace')}")
    return dt


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


def is_segment(name):
    return len(name) == 24 and all(c in "0123456789ABCDEF" for c in name)


def tree_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tool_version(cmd):
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True).stdout.strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001
        return f"unknown ({e})"


# ----------------------------------------------------------------------------------------------
# Corpus: real 16 MiB segments from a pgbench run on a throwaway cluster
# ----------------------------------------------------------------------------------------------
class Cluster:
    def __init__(self, work, scale):
        self.work = work
        self.scale = scale
        self.data = os.path.join(work, "pgdata")
        # Unix socket paths are limited to ~107 bytes: the work dir is short (/tmp/wal-bench.X).
        self.sock = os.path.join(work, "s")
        os.makedirs(self.sock, exist_ok=True)
        self.port = free_port()
        self.corpus = os.path.join(work, "corpus")
        self.running = False

    def pg(self, prog):
        return os.path.join(PGBIN, prog)

    def start(self):
        os.makedirs(self.corpus, exist_ok=True)
        run([self.pg("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync",
             "-E", "UTF8", "--locale", "C"])
        with open(os.path.join(self.data, "postgresql.auto.conf"), "a") as f:
            f.write(
                f"port = {self.port}\n"
                f"listen_addresses = ''\n"
                f"unix_socket_directories = '{self.sock}'\n"
                "wal_level = replica\n"
                "archive_mode = on\n"
                f"archive_command = 'cp %p {self.corpus}/%f'\n"
                "max_wal_size = '2GB'\n"
                "shared_buffers = '256MB'\n"
                "synchronous_commit = off\n"
                "full_page_writes = on\n")
        run([self.pg("pg_ctl"), "-D", self.data, "-w", "-l",
             os.path.join(self.work, "postgres.log"), "start"])
        self.running = True

    def psql(self, sql):
        return run([self.pg("psql"), "-h", self.sock, "-p", str(self.port), "-U", "postgres",
                    "-X", "-A", "-t", "-c", sql, "postgres"]).strip()

    def archived(self):
        return sorted(n for n in os.listdir(self.corpus) if is_segment(n))

    def generate(self, want):
        pgbench = [self.pg("pgbench"), "-h", self.sock, "-p", str(self.port), "-U", "postgres"]
        log(f"pgbench -i -s {self.scale}")
        run(pgbench + ["-i", "-s", str(self.scale), "-q", "postgres"])
        # Run OLTP traffic until enough segments have been archived; the newest `want`
        # full segments (before the final switch) are used, so the corpus is mostly
        # steady-state pgbench WAL with full-page images after checkpoints.
        deadline = time.time() + 1800
        while len(self.archived()) < want + 2:
            if time.time() > deadline:
                raise SystemExit("corpus generation took too long")
            log(f"pgbench -T 15 (archived so far: {len(self.archived())})")
            run(pgbench + ["-n", "-c", "4", "-j", "2", "-T", "15", "postgres"])
            self.psql("CHECKPOINT")
        last = self.psql("SELECT pg_walfile_name(pg_switch_wal())")
        for _ in range(600):
            if os.path.exists(os.path.join(self.corpus, last)):
                break
            time.sleep(0.1)
        self.stop()
        segs = [n for n in self.archived() if n < last]
        segs = segs[-want:]
        for n in segs:
            if os.path.getsize(os.path.join(self.corpus, n)) != SEG_SIZE:
                raise SystemExit(f"segment {n} has the wrong size")
        log(f"corpus: {len(segs)} segments {segs[0]} .. {segs[-1]}")
        return segs

    def stop(self):
        if self.running:
            subprocess.run([self.pg("pg_ctl"), "-D", self.data, "-w", "-m", "fast", "stop"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.running = False


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.a = args
        self.work = os.path.abspath(args.workdir)
        self.corpus = os.path.join(self.work, "corpus")
        self.rows = []          # result rows for the table
        self.notes = []
        self.segs = []
        self.pgdata = os.path.join(self.work, "pgdata")
        self.n = 0
        self.round = 1
        self.busy = 0.0

    # ---- helpers ----------------------------------------------------------------------------
    def seg_path(self, name):
        return os.path.join(self.corpus, name)

    def fake_datadir(self, tag, backlog):
        """A data directory stand-in: global/pg_control from the corpus cluster (pgBackRest
        checks its version and system identifier) and pg_wal/. With backlog=True every corpus
        segment is in pg_wal with an archive_status/<name>.ready file, as after an archiver
        outage, so that look-ahead (pgBackRest async, pitr) has something to find."""
        d = os.path.join(self.work, f"data-{tag}")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(os.path.join(d, "global"))
        os.makedirs(os.path.join(d, "pg_wal", "archive_status"))
        shutil.copy2(os.path.join(self.pgdata, "global", "pg_control"),
                     os.path.join(d, "global", "pg_control"))
        shutil.copy2(os.path.join(self.pgdata, "PG_VERSION"), os.path.join(d, "PG_VERSION"))
        os.chmod(d, 0o700)
        if backlog:
            for n in self.segs:
                shutil.copyfile(self.seg_path(n), os.path.join(d, "pg_wal", n))
                open(os.path.join(d, "pg_wal", "archive_status", n + ".ready"), "w").close()
        return d

    @staticmethod
    def stats(times):
        q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times
        total = sum(times)
        return {
            "n": len(times),
            "median_ms": statistics.median(times) * 1e3,
            "p90_ms": q[-1] * 1e3,
            "mean_ms": statistics.fmean(times) * 1e3,
            "max_ms": max(times) * 1e3,
            "total_s": total,
            "mibs": len(times) * SEG_SIZE / MIB / total,
        }

    def record(self, tool, mode, times, repo=None):
        cpu = PENDING_CPU[:] if len(PENDING_CPU) == len(times) else None
        PENDING_CPU.clear()
        row = {"tool": tool, "mode": mode, "round": self.round, "busy_before": self.busy,
               "loadavg_after": os.getloadavg()[0], **self.stats(times),
               "cpu_median_ms": statistics.median(cpu) * 1e3 if cpu else None,
               "stored": None, "ratio": None,
               "times_ms": [round(t * 1e3, 3) for t in times],
               "cpu_ms": [round(c * 1e3, 3) for c in cpu] if cpu else None}
        if repo is not None:
            stored = tree_bytes(repo)
            row["stored"] = stored
            row["ratio"] = len(times) * SEG_SIZE / stored if stored else None
        self.rows.append(row)
        log(f"{tool:10s} {mode:28s} median {row['median_ms']:8.2f} ms  p90 {row['p90_ms']:8.2f} ms"
            f"  {row['mibs']:8.1f} MiB/s"
            + (f"  CPU {row['cpu_median_ms']:6.2f} ms" if cpu else ""))
        return row

    # ---- pgBackRest ---------------------------------------------------------------------------
    def pgbr_conf(self, tag, datadir, async_, level, enc=False):
        repo = os.path.join(self.work, f"repo-pgbr-{tag}")
        shutil.rmtree(repo, ignore_errors=True)
        os.makedirs(repo, mode=0o750)
        conf = os.path.join(self.work, f"pgbackrest-{tag}.conf")
        # A fresh spool every run: async archive-push returns at once for any segment whose
        # spool/archive/<stanza>/out/<name>.ok is left from an earlier round.
        shutil.rmtree(os.path.join(self.work, f"spool-{tag}"), ignore_errors=True)
        for sub in ("log", "lock", f"spool-{tag}"):
            os.makedirs(os.path.join(self.work, sub), exist_ok=True)
        with open(conf, "w") as f:
            f.write(
                "[global]\n"
                f"repo1-path={repo}\n"
                "repo1-retention-full=1\n"
                "compress-type=zst\n"
                f"compress-level={level}\n"
                f"log-path={self.work}/log\n"
                "log-level-console=warn\n"
                "log-level-stderr=warn\n"
                f"log-level-file={self.a.pgbr_log_file}\n"
                f"lock-path={self.work}/lock\n"
                f"spool-path={self.work}/spool-{tag}\n"
                f"archive-async={'y' if async_ else 'n'}\n"
                f"process-max={self.a.pgbr_process_max}\n"
                "archive-timeout=120\n"
                + ("repo1-cipher-type=aes-256-cbc\n"
                   f"repo1-cipher-pass={PGBR_CIPHER_PASS}\n" if enc else "")
                + f"\n[{STANZA}]\n"
                f"pg1-path={datadir}\n")
        os.chmod(conf, 0o600)   # it may hold the cipher passphrase
        base = ["pgbackrest", f"--config={conf}", f"--stanza={STANZA}"]
        # The corpus cluster is stopped by now, so the stanza is created from pg_control
        # (--no-online) instead of a live connection; archive-push never connects anyway.
        run(base + ["--no-online", "stanza-create"])
        if enc:
            info = json.loads(run(base + ["--output=json", "info"]))
            ciphers = {r.get("cipher") for r in info[0].get("repo", [])}
            if ciphers != {"aes-256-cbc"}:
                raise SystemExit(f"{repo}: pgbackrest info shows cipher {ciphers}")
        return base, repo

    # ---- modes ---------------------------------------------------------------------------------
    def bench_cp(self):
        dest = os.path.join(self.work, "cp-dest")
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        times = []
        for n in self.segs:
            d = os.path.join(dest, n)
            c0 = children_cpu()
            t0 = time.perf_counter_ns()
            timed_ok = subprocess.run(["cp", self.seg_path(n), d]).returncode == 0 and \
                subprocess.run(["sync", d]).returncode == 0
            times.append((time.perf_counter_ns() - t0) / 1e9)
            PENDING_CPU.append(children_cpu() - c0)
            if not timed_ok:
                raise SystemExit("cp/sync failed")
        self.record("cp+sync", "floor: cp FILE; sync FILE", times, dest)
        shutil.rmtree(dest, ignore_errors=True)

    # -- pgBackRest: plain, and encrypted (repo1-cipher-type=aes-256-cbc) with the suffix _enc
    def bench_pgbr_sync(self, level=None, enc=False):
        level = self.a.pgbr_zst_level if level is None else level
        datadir = self.fake_datadir("pgbr-sync", backlog=False)
        base, repo = self.pgbr_conf(f"sync{level}{'-enc' if enc else ''}", datadir, async_=False,
                                    level=level, enc=enc)
        times = [timed(base + ["archive-push", self.seg_path(n)]) for n in self.segs]
        self.record("pgBackRest", f"archive-push sync zst:{level}" + (ENC_PGBR if enc else ""),
                    times, repo)
        attr = "pgbr_sync_enc" if enc else "pgbr_sync"
        if level == self.a.pgbr_zst_level or not getattr(self, attr, None):
            setattr(self, attr, (base, repo))

    def bench_pgbr_sync_enc(self, level=None):
        self.bench_pgbr_sync(level, enc=True)

    def bench_pgbr_async(self, level=None, enc=False):
        level = self.a.pgbr_zst_level if level is None else level
        datadir = self.fake_datadir("pgbr-async", backlog=True)
        base, repo = self.pgbr_conf(f"async{level}{'-enc' if enc else ''}", datadir, async_=True,
                                    level=level, enc=enc)
        times = self.backlog_loop(datadir, lambda n: base + ["archive-push", f"pg_wal/{n}"])
        # The async worker may still be exiting; wait for its lock before measuring the repo.
        self.wait_quiet(repo)
        self.record("pgBackRest",
                    f"archive-push async backlog p{self.a.pgbr_process_max} zst:{level}"
                    + (ENC_PGBR if enc else ""), times, repo)

    def bench_pgbr_async_enc(self, level=None):
        self.bench_pgbr_async(level, enc=True)

    # -- pitr: plain; encrypted with a key file (_enc, the documented archive_command setup);
    #    encrypted with the passphrase itself (_enc_pass: one Argon2id run per call)
    def pitr_repo(self, tag, enc=None):
        """A fresh pitr repository; returns (repo, the global options every call needs)."""
        repo = os.path.join(self.work, f"repo-pitr-{tag}")
        shutil.rmtree(repo, ignore_errors=True)
        if enc is None:
            run([self.a.pitr_bin, "--repo", repo, "init"])
            return repo, []
        run([self.a.pitr_bin, "--repo", repo, "--passphrase-file", self.passfile, "init",
             "--encryption", "--kdf-memory", str(self.a.kdf_memory)])
        if enc == "pass":
            return repo, ["--passphrase-file", self.passfile]
        key = os.path.join(self.work, f"key-{tag}.key")
        if os.path.exists(key):
            os.unlink(key)
        run([self.a.pitr_bin, "--repo", repo, "--passphrase-file", self.passfile, "key", "add",
             "--key-file", key, "--label", "archive"])
        info = json.loads(run([self.a.pitr_bin, "--repo", repo, "--passphrase-file", key, "-q",
                               "info", "--json"]))
        if info.get("encrypted") is not True:
            raise SystemExit(f"{repo}: pitr info --json does not say encrypted: {info}")
        return repo, ["--passphrase-file", key]

    def bench_pitr_sync(self, enc=None):
        tag = "sync" + {None: "", "key": "-enc", "pass": "-enc-pass"}[enc]
        repo, opts = self.pitr_repo(tag, enc)
        # cwd: a data dir with no backlog, so look-ahead (if any) finds nothing to do.
        datadir = self.fake_datadir("pitr-sync", backlog=False)
        times = [timed([self.a.pitr_bin, "--repo", repo, *opts, "archive-wal", self.seg_path(n), n],
                       cwd=datadir) for n in self.segs]
        self.record("pitr", "archive-wal sync" + {None: "", "key": ENC_KEY, "pass": ENC_PASS}[enc],
                    times, repo)
        if enc is None:
            self.pitr_sync = repo
        elif enc == "key":
            self.pitr_sync_enc = (repo, opts)

    def bench_pitr_sync_enc(self):
        self.bench_pitr_sync(enc="key")

    def bench_pitr_sync_enc_pass(self):
        self.bench_pitr_sync(enc="pass")

    def bench_pitr_backlog(self, enc=None):
        repo, opts = self.pitr_repo("backlog" + ("-enc" if enc else ""), enc)
        datadir = self.fake_datadir("pitr-backlog", backlog=True)
        times = self.backlog_loop(
            datadir,
            lambda n: [self.a.pitr_bin, "--repo", repo, *opts, "archive-wal", f"pg_wal/{n}", n])
        self.wait_quiet(repo)
        self.record("pitr", "archive-wal backlog (look-ahead)" + (ENC_KEY if enc else ""),
                    times, repo)

    def bench_pitr_backlog_enc(self):
        self.bench_pitr_backlog(enc="key")

    def backlog_loop(self, datadir, cmd_for):
        """Mimic the archiver: call archive_command for the oldest .ready segment with the data
        directory as cwd, and on success rename .ready -> .done (outside the timing)."""
        status = os.path.join(datadir, "pg_wal", "archive_status")
        times = []
        for n in self.segs:
            times.append(timed(cmd_for(n), cwd=datadir))
            os.rename(os.path.join(status, n + ".ready"), os.path.join(status, n + ".done"))
        return times

    def wait_quiet(self, repo, quiet_s=1.0, limit_s=60):
        last, stable_since, t_end = -1, time.time(), time.time() + limit_s
        while time.time() < t_end:
            cur = tree_bytes(repo)
            if cur != last:
                last, stable_since = cur, time.time()
            elif time.time() - stable_since >= quiet_s:
                return
            time.sleep(0.2)

    # ---- restore side --------------------------------------------------------------------------
    def restore_loop(self, cmd_for, label_tool, label_mode, check=True):
        dest_dir = os.path.join(self.work, "restore")
        shutil.rmtree(dest_dir, ignore_errors=True)
        os.makedirs(dest_dir)
        # Like PostgreSQL, restore into pg_wal/RECOVERYXLOG-style fixed name, removed after.
        dest = os.path.join(dest_dir, "RECOVERYXLOG")
        times = []
        for n in self.segs:
            times.append(timed(cmd_for(n, dest), cwd=self.restore_cwd))
            if check and sha256(dest) != self.hashes[n]:
                raise SystemExit(f"{label_tool}: restored {n} differs from the original")
            os.unlink(dest)
        self.record(label_tool, label_mode, times)

    def bench_restore(self):
        self.hashes = {n: sha256(self.seg_path(n)) for n in self.segs}
        self.restore_cwd = self.fake_datadir("restore", backlog=False)
        if getattr(self, "pitr_sync", None):
            repo = self.pitr_sync
            self.restore_loop(lambda n, d: [self.a.pitr_bin, "--repo", repo, "restore-wal", n, d],
                              "pitr", "restore-wal")
        if getattr(self, "pitr_sync_enc", None):
            repo_e, opts = self.pitr_sync_enc
            self.restore_loop(
                lambda n, d: [self.a.pitr_bin, "--repo", repo_e, *opts, "restore-wal", n, d],
                "pitr", "restore-wal" + ENC_KEY)
        if getattr(self, "pgbr_sync", None):
            base, _repo = self.pgbr_sync
            self.restore_loop(lambda n, d: base + ["archive-get", n, d],
                              "pgBackRest", "archive-get sync")
        if getattr(self, "pgbr_sync_enc", None):
            base_e, _repo = self.pgbr_sync_enc
            self.restore_loop(lambda n, d: base_e + ["archive-get", n, d],
                              "pgBackRest", "archive-get sync" + ENC_PGBR)
        zdir = os.path.join(self.work, "zst")
        shutil.rmtree(zdir, ignore_errors=True)
        os.makedirs(zdir)
        for n in self.segs:
            run(["zstd", "-1", "-q", self.seg_path(n), "-o", os.path.join(zdir, n + ".zst")])
        zbytes = tree_bytes(zdir)
        row_count = len(self.rows)
        self.restore_loop(
            lambda n, d: ["zstd", "-d", "-q", "-f", os.path.join(zdir, n + ".zst"), "-o", d],
            "zstd", "zstd -d (floor, level-1 input)")
        self.rows[row_count]["stored"] = zbytes
        self.rows[row_count]["ratio"] = len(self.segs) * SEG_SIZE / zbytes

    # ---- report --------------------------------------------------------------------------------
    def wait_quiet_cpu(self):
        """This benchmark wants the machine to itself: wait (up to --quiet-wait seconds) until
        other processes leave the CPUs mostly idle. Returns the busy fraction last seen, which
        the report shows next to each row."""
        deadline = time.time() + self.a.quiet_wait
        while True:
            busy = cpu_busy()
            if busy <= self.a.quiet_busy or time.time() >= deadline:
                break
            log(f"machine busy ({busy:.0%} CPU used by others); waiting")
        if busy > self.a.quiet_busy:
            log(f"WARNING: starting anyway with {busy:.0%} CPU busy")
        return busy

    def measured(self):
        return [r for r in self.rows if r["round"] > 0]   # round 0 is the warm-up

    def table(self):
        """One row per (tool, mode): every measured call of every round pooled."""
        groups = {}
        for r in self.measured():
            groups.setdefault((r["tool"], r["mode"]), []).append(r)
        out = [
            "| tool | mode | calls | median ms/seg | p90 ms | mean ms | max ms | MiB/s "
            "| median CPU ms/seg | stored MiB | ratio |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for (tool, mode), rs in groups.items():
            st = self.stats([t / 1e3 for r in rs for t in r["times_ms"]])
            stored = [r["stored"] for r in rs if r["stored"] is not None]
            ratio = [r["ratio"] for r in rs if r["ratio"]]
            cpu = [c for r in rs for c in (r.get("cpu_ms") or [])]
            out.append(
                f"| {tool} | {mode} | {st['n']} | {st['median_ms']:.1f} | {st['p90_ms']:.1f} |"
                f" {st['mean_ms']:.1f} | {st['max_ms']:.1f} | {st['mibs']:.0f} |"
                f" {f'{statistics.median(cpu):.1f}' if cpu else '-'} |"
                f" {f'{statistics.median(stored) / MIB:.1f}' if stored else '-'} |"
                f" {f'{statistics.median(ratio):.2f}x' if ratio else '-'} |")
        return "\n".join(out)

    def round_table(self):
        """Median ms/segment and MiB/s of each round, to show the spread between rounds."""
        rounds = sorted({r["round"] for r in self.rows})
        keys = []
        for r in self.rows:
            if (r["tool"], r["mode"]) not in keys:
                keys.append((r["tool"], r["mode"]))
        by = {(r["tool"], r["mode"], r["round"]): r for r in self.rows}
        head = " | ".join("warm-up" if n == 0 else f"round {n}" for n in rounds)
        out = [f"| tool | mode | {head} |", "|---|---|" + "---:|" * len(rounds)]
        for tool, mode in keys:
            cells = []
            for n in rounds:
                r = by.get((tool, mode, n))
                cells.append(f"{r['median_ms']:.1f} ms, {r['mibs']:.0f} MiB/s"
                             f" ({r['busy_before']:.0%}/{r.get('busy_after', 0):.0%})" if r else "-")
            out.append(f"| {tool} | {mode} | " + " | ".join(cells) + " |")
        return "\n".join(out)

    def machine(self):
        cpu = "?"
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        fs = run(["df", "-T", self.work]).splitlines()[-1].split()
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return [
            f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
            f"- machine: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, kernel {platform.release()}",
            f"- work dir filesystem: {fs[1]} on {fs[0]} ({self.work})",
            f"- PostgreSQL: {tool_version([os.path.join(PGBIN, 'postgres'), '--version'])}",
            f"- pgBackRest: {tool_version(['pgbackrest', 'version'])}",
            f"- pitr: {self.a.pitr_bin if self.a.pitr_bin else 'not run'}"
            + (f" ({tool_version([self.a.pitr_bin, '--version'])}, binary sha256 "
               f"{sha256(self.a.pitr_bin)[:12]}"
               + (f", copy of {self.a.pitr_built}" if self.a.pitr_built else "") + ")"
               if self.a.pitr_bin else ""),
            f"- zstd: {tool_version(['zstd', '--version'])}",
        ]

    def main(self):
        os.makedirs(self.work, exist_ok=True)
        cluster = Cluster(self.work, self.a.scale)
        try:
            cluster.start()
            self.segs = cluster.generate(self.a.segments)
        finally:
            cluster.stop()
        self.n = len(self.segs)
        # pitr's passphrase for the encrypted repositories (0600: pitr refuses a
        # world-readable one); the key files are generated next to it by `pitr key add`
        self.passfile = os.path.join(self.work, "pitr-passphrase")
        with open(os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(PITR_PASSPHRASE + "\n")
        corpus_bytes = self.n * SEG_SIZE
        wanted = [m.strip() for m in self.a.modes.split(",") if m.strip()]
        first = 0 if self.a.warmup else 1
        for rnd in range(first, self.a.rounds + 1):
            self.round = rnd
            log("warm-up round (not in the summary)" if rnd == 0 else f"round {rnd}/{self.a.rounds}")
            for m in wanted:
                if m.startswith("pitr") and not self.a.pitr_bin:
                    log(f"skipping {m}: no pitr binary")
                    continue
                # Let the previous mode's dirty pages reach the disk so that its writeback
                # does not land on the next mode's fsyncs.
                subprocess.run(["sync"])
                name, _, level = m.partition("@")   # pgbr_sync@1: another zstd level
                fn = getattr(self, "bench_" + name.replace("-", "_"))
                for attempt in range(1 + self.a.retries):
                    self.busy = self.wait_quiet_cpu()
                    PENDING_CPU.clear()
                    mark = len(self.rows)
                    if level:
                        fn(level=int(level))
                    else:
                        fn()
                    # Work that started while the mode ran is usually still running: look
                    # once more, and redo the mode when the machine is busy now.
                    after = cpu_busy()
                    for r in self.rows[mark:]:
                        r["busy_after"] = after
                    if after <= self.a.quiet_busy:
                        break
                    if attempt < self.a.retries:
                        log(f"{m}: machine became busy ({after:.0%}) during the run; redoing it")
                        del self.rows[mark:]
        max_busy = max((max(r["busy_before"], r.get("busy_after", 0.0)) for r in self.measured()),
                       default=0.0)
        text = [
            f"# archive-wal / restore-wal benchmark ({datetime.date.today().isoformat()})",
            "",
            *self.machine(),
            f"- corpus: {self.n} real 16 MiB WAL segments ({corpus_bytes / MIB:.0f} MiB) from "
            f"`pgbench -i -s {self.a.scale}` + `pgbench -c 4 -T 15` rounds (newest full segments), "
            f"{self.segs[0]} .. {self.segs[-1]}; all segments in page cache",
            f"- rounds: {self.a.rounds} measured"
            + (" after 1 warm-up round" if self.a.warmup else "")
            + "; modes run in the order of the table within each round, each round with fresh "
            "repositories; a global `sync` before each mode, which starts once the CPUs are idle "
            "(1 s sample; a mode is redone when they are busy right after it)",
            "- every row: one process per segment, called synchronously one after the other, "
            "wall time around the call (Python subprocess, fork+exec included); CPU: user+sys "
            "of the call's process and the children it waited for (getrusage RUSAGE_CHILDREN; "
            "pgBackRest's detached async worker is not counted)",
            "- encrypted rows: pitr `init --encryption` (AES-256-GCM per object, keyed BLAKE3 "
            f"chunk IDs; passphrase slot Argon2id {self.a.kdf_memory} MiB, 3 passes), opened "
            "by a key file from `pitr key add --key-file` (`--passphrase-file KEY`, the "
            "documented archive_command setup) or, in the row marked passphrase, by the "
            "passphrase itself (one Argon2id run per call); pgBackRest with "
            "repo1-cipher-type=aes-256-cbc and a repo1-cipher-pass",
            f"- pgBackRest: posix repo on the same filesystem, compress-type=zst compress-level="
            f"{self.a.pgbr_zst_level} (its default; rows marked zst:N use level N), "
            f"log-level-file={self.a.pgbr_log_file}, async rows "
            f"process-max={self.a.pgbr_process_max}; stanza-create --no-online",
            "- backlog rows: all segments in a data dir's pg_wal with archive_status/*.ready "
            "(an archiver backlog); the driver renames .ready -> .done after each success, "
            "like the archiver, outside the timing",
            "- cp+sync: `cp SEG DEST && sync DEST` (two processes, fsync of the file only)",
            "- zstd: `zstd -d -q -f SEG.zst -o DEST` of a `zstd -1` copy; restores are checked "
            "byte for byte against the original (outside the timing)",
            "- stored MiB: bytes of all files in the repository after the run; "
            "ratio = corpus bytes / stored bytes",
            f"- CPU busy with other work just before or after a mode: max {max_busy:.0%}"
            + (" -- WARNING: the machine was not idle, figures are pessimistic"
               if max_busy > self.a.quiet_busy else " (idle machine)"),
            "",
            "## Summary (all measured rounds pooled)",
            "",
            self.table(),
            "",
            "## Per round (median ms/segment, MiB/s; in brackets: CPU busy with other work "
            "in the second before / after the mode)",
            "",
            self.round_table(),
            "",
        ]
        report = "\n".join(text)
        print(report)
        if self.a.out:
            with open(self.a.out, "w") as f:
                f.write(report)
            with open(os.path.splitext(self.a.out)[0] + ".json", "w") as f:
                json.dump({"segments": self.segs, "machine": self.machine(), "rows": self.rows},
                          f, indent=1)
            log(f"wrote {self.a.out} (+ .json with every call's time)")


DEFAULT_MODES = ("cp,pitr_sync,pitr_sync_enc,pitr_sync_enc_pass,pgbr_sync,pgbr_sync_enc,pgbr_sync@1,"
                 "pitr_backlog,pitr_backlog_enc,pgbr_async,pgbr_async_enc,restore")


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--pitr-bin", default="", help="pitr binary; empty skips the pitr rows")
    p.add_argument("--segments", type=int, default=int(os.environ.get("SEGMENTS", "40")))
    p.add_argument("--scale", type=int, default=int(os.environ.get("SCALE", "10")))
    p.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", "3")))
    p.add_argument("--warmup", type=int, default=int(os.environ.get("WARMUP", "1")),
                   help="1: run one extra, unreported round first (disk writeback settles)")
    p.add_argument("--modes", default=os.environ.get("MODES", DEFAULT_MODES))
    p.add_argument("--kdf-memory", type=int, default=int(os.environ.get("KDF_MEMORY", "64")),
                   help="Argon2id MiB of the encrypted pitr repositories' passphrase slot")
    p.add_argument("--pgbr-zst-level", type=int, default=int(os.environ.get("PGBR_ZST_LEVEL", "3")))
    p.add_argument("--pgbr-process-max", type=int, default=int(os.environ.get("PGBR_PROCESS_MAX", "2")))
    p.add_argument("--pgbr-log-file", default=os.environ.get("PGBR_LOG_FILE", "off"))
    p.add_argument("--quiet-wait", type=float, default=float(os.environ.get("QUIET_WAIT", "300")),
                   help="seconds to wait, before each mode, for the CPUs to be idle")
    p.add_argument("--quiet-busy", type=float, default=float(os.environ.get("QUIET_BUSY", "0.25")),
                   help="CPU busy fraction below which the machine counts as idle")
    p.add_argument("--retries", type=int, default=int(os.environ.get("RETRIES", "2")),
                   help="redo a mode up to this many times when the machine got busy during it")
    p.add_argument("--pitr-built", default="", help="note on where the pitr binary came from")
    p.add_argument("--out", default="")
    return p.parse_args()


if __name__ == "__main__":
    Bench(parse()).main()
