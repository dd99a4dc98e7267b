#!/usr/bin/env python3
"""Expire + garbage-collection benchmark: `pitr expire` beside `pgbackrest expire` on the same
history (issue 11).

Driven by benches/expire.sh, which checks the tools, copies the pitr binary where the
`postgres` user can run it, makes the work directory and runs this script as root. Root only
drops the page cache; PostgreSQL, pgbench, pitr and pgBackRest run as `postgres`. The cluster,
the helpers and the timing (wall, CPU, peak RSS from wait4) are backup_restore.py's.

  1. one pgbench cluster archiving to both repositories:
     archive_command = 'pitr archive-wal %p %f && pgbackrest archive-push %p'
  2. BACKUPS rounds of: pitr backup --checkpoint fast; pgbackrest backup --type=full
     (start-fast); pgbench until WAL_MB_PER_ROUND MiB of WAL were written; pg_switch_wal()
     and wait until the archiver has archived that segment (to both: the command is `&&`)
  3. page cache dropped, then timed: pitr expire --retain-full 2 --gc-grace 0s; page cache
     dropped, then timed: pgbackrest expire --repo1-retention-full=2. Repository bytes
     (du -sb) and files before and after each.
"""

import datetime
import json
import os
import shlex
import subprocess
import sys
import time

sys.dont_write_bytecode = True   # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backup_restore import (MIB, PGBIN, STANZA, Bench, log, run,  # noqa: E402
                            tool_version)


def du_sb(path):
    """Bytes as `du -sb` counts them (apparent sizes, directories included)."""
    return int(run(["du", "-sb", path], pg=False).split()[0])


def files(path):
    return sum(len(fs) for _r, _d, fs in os.walk(path))


class ExpireBench(Bench):
    def setup(self):
        for d in (self.sock, os.path.join(self.work, "pgbr-log"),
                  os.path.join(self.work, "pgbr-lock"), os.path.join(self.work, "pgbr-spool")):
            self.mkdir(d)
        self.mkdir(self.pgbr_repo, 0o750)
        run([os.path.join(PGBIN, "initdb"), "-D", self.pgdata, "-A", "trust", "-U", "postgres",
             "--no-sync", "-E", "UTF8", "--locale", "C"])
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
        # retention-full=99: no backup expires before the timed `expire` (pgBackRest expires
        # after every backup when a retention is set); the timed run passes 2 on its command
        # line, as the README's `pitr expire --retain-full 2` does.
        self.write(self.pgbr_conf,
                   "[global]\n"
                   f"repo1-path={self.pgbr_repo}\n"
                   "repo1-retention-full=99\n"
                   "compress-type=zst\n"
                   f"compress-level={self.a.pgbr_zst_level}\n"
                   f"process-max={self.a.pgbr_process_max}\n"
                   "start-fast=y\n"
                   "archive-timeout=300\n"
                   f"log-path={self.work}/pgbr-log\n"
                   f"lock-path={self.work}/pgbr-lock\n"
                   f"spool-path={self.work}/pgbr-spool\n"
                   "log-level-console=warn\n"
                   "log-level-stderr=warn\n"
                   f"log-level-file={self.a.pgbr_log_file}\n"
                   f"\n[{STANZA}]\n"
                   f"pg1-path={self.pgdata}\n"
                   f"pg1-port={self.port}\n"
                   f"pg1-socket-path={self.sock}\n", 0o640)
        run([self.pitr, "--repo", self.repo, "init"])
        self.pg_ctl("-D", self.pgdata, "-w", "-l", os.path.join(self.work, "postgres.log"),
                    "start")
        self.running.append(self.pgdata)
        self.pgbench = [os.path.join(PGBIN, "pgbench"), "-h", self.sock, "-p", str(self.port),
                        "-U", "postgres"]
        log(f"pgbench -i -s {self.a.scale}")
        t0 = time.time()
        run(self.pgbench + ["-i", "-s", str(self.a.scale), "-q", "postgres"])
        log(f"pgbench -i took {time.time() - t0:.0f} s")
        run([os.path.join(PGBIN, "vacuumdb"), "-h", self.sock, "-p", str(self.port), "-U",
             "postgres", "--all", "--freeze", "--analyze", "-q"])
        self.psql("CHECKPOINT")
        run(self.pgbr("stanza-create"))
        self.set_archive_command(
            f"{self.pitr} -q --repo {self.repo} archive-wal %p %f"
            f" && pgbackrest --config={self.pgbr_conf} --stanza={STANZA} archive-push %p")
        self.settle_archive()
        self.db_size = int(self.psql("SELECT sum(pg_database_size(oid)) FROM pg_database"))
        log(f"cluster: {self.db_size / MIB:,.0f} MiB in databases")

    def write_wal(self, mib_wanted):
        """pgbench (-c 4 -j 2) until `mib_wanted` MiB of WAL were written; return the bytes."""
        lsn0 = self.psql("SELECT pg_current_wal_lsn()")
        want = mib_wanted * MIB
        t0 = time.time()
        seconds = 5
        while True:
            done = int(float(self.psql(
                f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{lsn0}')")))
            if done >= want:
                return done
            if time.time() - t0 > 3600:
                raise SystemExit("WAL generation took too long")
            if done > 0:   # aim the next run at what is missing, at the rate seen so far
                rate = done / (time.time() - t0)
                seconds = max(2, min(30, int((want - done) / rate) + 1))
            run(self.pgbench + ["-n", "-c", "4", "-j", "2", "-T", str(seconds), "postgres"])

    def history(self):
        self.rounds = []
        self.t_history0 = time.time()
        for i in range(1, self.a.backups + 1):
            t0 = time.time()
            out = run(self.pitr_cmd("backup", "-d", self.conninfo(), "--checkpoint", "fast"))
            pitr_id = out.strip().splitlines()[-1].strip()
            run(self.pgbr("backup", "--type=full"))
            wal = self.write_wal(self.a.wal_mb_per_round)
            last = self.settle_archive()
            self.rounds.append({"round": i, "pitr_backup": pitr_id, "wal_bytes": wal,
                                "last_archived": last, "seconds": time.time() - t0})
            log(f"round {i}/{self.a.backups}: backups + {wal / MIB:,.0f} MiB WAL, archived "
                f"to {last} ({time.time() - t0:.0f} s)")
        self.t_history = time.time() - self.t_history0

    def measure(self, repo):
        return {"du_sb": du_sb(repo), "files": files(repo)}

    def expire_row(self, tool, cmd, repo, name):
        before = self.measure(repo)
        self.drop_caches()
        busy, load = self.quiet()
        log(f"timed: {shlex.join(map(str, cmd))}")
        r = self.timed(name, cmd)
        after = self.measure(repo)
        row = {"tool": tool, "cmd": shlex.join(map(str, cmd)), "wall": r["wall"],
               "cpu": r["cpu"], "rss_kib": r["rss_kib"], "before": before, "after": after,
               "busy": busy, "busy_after": r["busy_after"], "load": load,
               "stdout_tail": r["stdout"][-2000:] if not r["stdout"].lstrip().startswith("{")
               else ""}
        if r["stdout"].lstrip().startswith("{"):
            rep = json.loads(r["stdout"])
            row["report"] = {"kept": rep["kept"], "backups": len(rep["backups"]),
                             "wal": len(rep["wal"]), "chunks": len(rep["chunks"]),
                             "staging": len(rep["staging"]),
                             "chunks_in_grace": rep["chunks_in_grace"],
                             "chunks_skipped": rep.get("chunks_skipped"),
                             "bytes_freed": rep["bytes_freed"]}
        self.expires.append(row)
        log(f"  {r['wall']:.2f} s, CPU {r['cpu']:.2f} s, peak RSS {r['rss_kib'] / 1024:.1f} MiB, "
            f"{before['du_sb'] / MIB:,.1f} -> {after['du_sb'] / MIB:,.1f} MiB, "
            f"{before['files']} -> {after['files']} files")

    def bench_expire(self):
        self.expires = []
        self.pitr_before = json.loads(run(self.pitr_cmd("list", "--json")))
        self.pgbr_before = json.loads(run(self.pgbr("--output=json", "info")))
        self.expire_row("pitr expire",
                        self.pitr_cmd("expire", "--retain-full", "2", "--gc-grace", "0s",
                                      "--json"),
                        self.repo, "pitr-expire")
        self.expire_row("pgbackrest expire", self.pgbr("expire", "--repo1-retention-full=2"),
                        self.pgbr_repo, "pgbr-expire")
        self.pitr_after = json.loads(run(self.pitr_cmd("list", "--json")))
        self.pgbr_after = json.loads(run(self.pgbr("--output=json", "info")))
        # what each repository still covers: the oldest kept backup and the archive's range
        self.notes.append(f"pitr backups kept: {[b['id'] for b in self.pitr_after]}")
        self.notes.append("pgBackRest backups kept: "
                          f"{[b['label'] for b in self.pgbr_after[0]['backup']]}; archive "
                          + ", ".join(f"{a['min']}..{a['max']}"
                                      for a in self.pgbr_after[0]['archive']))

    def report(self):
        wal_total = sum(r["wal_bytes"] for r in self.rounds)
        lines = [f"# expire + GC benchmark ({datetime.date.today().isoformat()})", "",
                 *self.machine(),
                 f"- cluster: `pgbench -i -s {self.a.scale}` (+ vacuumdb --freeze --analyze), "
                 f"{self.db_size / MIB:,.0f} MiB in databases",
                 f"- history: {self.a.backups} rounds of (pitr backup --checkpoint fast; "
                 "pgbackrest backup --type=full; `pgbench -n -c 4 -j 2` until "
                 f"{self.a.wal_mb_per_round} MiB of WAL were written; pg_switch_wal() and wait "
                 f"until archived to both), {wal_total / MIB:,.0f} MiB of WAL in all, built in "
                 f"{self.t_history / 60:.1f} min",
                 "- simulated week: the volume only. The WAL stands for a week of a quiet "
                 "cluster's changes, but all of it (and every backup) is minutes old, so "
                 "retention by count is what is measured (no `--retain-days`), and pitr's "
                 "`--gc-grace` is set to 0s (its default 1h would keep every chunk of this "
                 "history); nothing archived or backed up while expire ran",
                 "- page cache: " + ("`sync; echo 3 > /proc/sys/vm/drop_caches` before each "
                                     "expire" if self.cache_mode == "drop" else
                                     "could not be dropped (warm)"),
                 "- wall: the command from fork to exit; CPU: user+sys of its process tree; "
                 "peak RSS: the largest single process of that tree (wait4 rusage); bytes: "
                 "`du -sb` of the repository directory; files: regular files in it",
                 "- order: pitr expire first, then pgbackrest expire (one run each: expire is "
                 "destructive)",
                 "",
                 "| tool | wall s | CPU s | peak RSS MiB | repo before MiB | after MiB | freed MiB "
                 "| files before | after | busy before/after / load |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.expires:
            b, a = r["before"], r["after"]
            lines.append(
                f"| {r['tool']} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['rss_kib'] / 1024:,.1f} | "
                f"{b['du_sb'] / MIB:,.1f} | {a['du_sb'] / MIB:,.1f} | "
                f"{(b['du_sb'] - a['du_sb']) / MIB:,.1f} | {b['files']:,} | {a['files']:,} | "
                f"{r['busy']:.0%}/{r['busy_after']:.0%} / {r['load']:.1f} |")
        lines += ["", "Commands:", ""]
        lines += [f"- `{r['cmd']}`" for r in self.expires]
        p = next((r for r in self.expires if "report" in r), None)
        if p:
            rep = p["report"]
            lines += ["", f"pitr's own report: removed {rep['backups']} backups, {rep['wal']} WAL "
                      f"refs, {rep['chunks']:,} chunks, {rep['staging']} staging files, "
                      f"{rep['bytes_freed']:,} bytes freed (stored sizes); "
                      f"{rep['chunks_in_grace']} chunks in grace"
                      + (f"; chunks skipped: {rep['chunks_skipped']}" if rep["chunks_skipped"]
                         else "") + "."]
        lines += ["", "Rounds:", "", "| round | WAL MiB | last archived | s |", "|---:|---:|---|---:|"]
        for r in self.rounds:
            lines.append(f"| {r['round']} | {r['wal_bytes'] / MIB:,.0f} | {r['last_archived']} | "
                         f"{r['seconds']:.0f} |")
        try:
            lines += ["", "What each backup stored, before expire: pitr `stored_bytes` (the new "
                      "chunks it added) " + ", ".join(f"{b['stored_bytes'] / MIB:,.0f}"
                                                      for b in self.pitr_before)
                      + " MiB; pgBackRest `repository.delta` of each full "
                      + ", ".join(f"{b['info']['repository']['delta'] / MIB:,.0f}"
                                  for b in self.pgbr_before[0]["backup"]) + " MiB."]
        except (KeyError, IndexError, TypeError) as e:
            self.notes.append(f"per-backup stored sizes not read: {e!r}")
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def main(self):
        self.load_start = os.getloadavg()[0]
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError as e:
            self.cache_mode = "warm"
            log(f"cannot drop the page cache ({e})")
        try:
            self.setup()
            self.history()
            self.bench_expire()
        finally:
            for dd in list(self.running):
                self.stop_server(dd, "immediate")
        report = self.report()
        print(report)
        if self.a.out:
            with open(self.a.out, "w") as f:
                f.write(report)
            with open(os.path.splitext(self.a.out)[0] + ".json", "w") as f:
                json.dump({"expires": self.expires, "rounds": self.rounds,
                           "scale": self.a.scale, "backups": self.a.backups,
                           "wal_mb_per_round": self.a.wal_mb_per_round,
                           "db_size": self.db_size, "history_seconds": self.t_history,
                           "pgbackrest_version": tool_version(["pgbackrest", "version"]),
                           "pitr_list_before": self.pitr_before,
                           "pgbackrest_info_before": self.pgbr_before,
                           "notes": self.notes}, f, indent=1)


def parse():
    import argparse
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--pitr-bin", required=True, help="pitr binary the postgres user can run")
    p.add_argument("--pitr-built", default="", help="note on where the pitr binary came from")
    p.add_argument("--scale", type=int, default=int(env("SCALE", "100")))
    p.add_argument("--backups", type=int, default=int(env("BACKUPS", "10")))
    p.add_argument("--wal-mb-per-round", type=int, default=int(env("WAL_MB_PER_ROUND", "400")))
    p.add_argument("--pgbr-zst-level", type=int, default=int(env("PGBR_ZST_LEVEL", "3")))
    p.add_argument("--pgbr-process-max", type=int, default=int(env("PGBR_PROCESS_MAX", "2")))
    p.add_argument("--pgbr-log-file", default=env("PGBR_LOG_FILE", "off"))
    p.add_argument("--quiet-wait", type=float, default=float(env("QUIET_WAIT", "0")))
    p.add_argument("--quiet-busy", type=float, default=float(env("QUIET_BUSY", "0.25")))
    p.add_argument("--out", default="")
    a = p.parse_args()
    a.drop_caches = 1
    return a


if __name__ == "__main__":
    ExpireBench(parse()).main()
