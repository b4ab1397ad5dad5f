#!/usr/bin/env python3
"""Benchmarks: orchestrator against supervisord, s6 and runit, on the same machine in
the same run, for the workloads of BENCHMARKS.md. Prints one table of figures and ratios
(orchestrator / best anchor), plus the scale curve of orchestrator.

Every workload runs in a fresh temp dir and kills, by PID, every process it started.
Standard library only. Run through `make bench` (bench/run.sh installs what is missing).
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ORCH = os.path.join(ROOT, "target", "release", "orchestrator")
SLEEP_ARG = "86399.5"  # a marker: only our services run `sleep 86399.5`
HZ = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- /proc helpers

def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def stat_fields(pid):
    s = read(f"/proc/{pid}/stat")
    if not s:
        return None
    close = s.rfind(")")
    return [s[: s.find(" ")], s[s.find("(") + 1 : close]] + s[close + 2 :].split()


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def children_map():
    kids = {}
    for pid in all_pids():
        f = stat_fields(pid)
        if f:
            kids.setdefault(int(f[3]), []).append(pid)
    return kids


def descendants(root):
    kids, out, todo = children_map(), [], [root]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid):
    return read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()


def count_sleepers():
    n = 0
    for pid in all_pids():
        c = read(f"/proc/{pid}/cmdline")
        if c.endswith(SLEEP_ARG + "\0") and "sleep" in c:
            f = stat_fields(pid)
            if f and f[2] != "Z":
                n += 1
    return n


def sleepers():
    return [p for p in all_pids() if read(f"/proc/{p}/cmdline").endswith(SLEEP_ARG + "\0")]


def pss_rss_kb(pids):
    pss = rss = 0
    for p in pids:
        for line in read(f"/proc/{p}/smaps_rollup").splitlines():
            if line.startswith("Pss:"):
                pss += int(line.split()[1])
            elif line.startswith("Rss:"):
                rss += int(line.split()[1])
    return pss, rss


def threads(pids):
    return sum(len(os.listdir(f"/proc/{p}/task")) for p in pids if os.path.isdir(f"/proc/{p}/task"))


def ctx_switches(pids):
    n = 0
    for p in pids:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            for line in read(f"/proc/{p}/task/{t}/status").splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    n += int(line.split()[1])
    return n


def cpu_seconds(pids):
    t = 0
    for p in pids:
        f = stat_fields(p)
        if f:
            t += int(f[13]) + int(f[14])
    return t / HZ


def wait_exit(proc, timeout):
    """Blocks in waitpid until `proc` exits (Popen.wait with a timeout polls with sleeps of
    up to 50 ms, which would blur every shutdown figure); kills it after `timeout`."""
    import threading
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        proc.wait()
    finally:
        timer.cancel()


def wait_for(cond, timeout, step=0.005):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def in_dir(pid, work):
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        cwd = ""
    return cwd.startswith(work) or work in cmdline(pid)


def kill_tree(root_pids, work=None):
    """SIGKILL the roots first (so nothing respawns), then everything below them, every
    process working in or naming `work`, and stray marked sleepers; until none is left."""
    for r in root_pids:
        try:
            os.kill(r, signal.SIGKILL)
        except OSError:
            pass
    for _ in range(20):
        victims = set(sleepers())
        for r in root_pids:
            victims.update(descendants(r))
        if work:
            victims.update(p for p in all_pids() if p != os.getpid() and in_dir(p, work))
        if not victims:
            break
        for p in victims:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)
    wait_for(lambda: count_sleepers() == 0, 5)


# ---------------------------------------------------------------- helpers in C

STAMP_C = r"""
#include <stdio.h>
#include <time.h>
int main(int c, char **v) {
    struct timespec t; clock_gettime(CLOCK_REALTIME, &t);
    FILE *f = fopen(v[1], "a");
    if (f) { fprintf(f, "%lld\n", (long long)t.tv_sec * 1000000000LL + t.tv_nsec); fclose(f); }
    return 1;
}
"""

LINES_C = r"""
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
int main(int c, char **v) {
    long n = atol(v[1]);
    char buf[64];
    for (long i = 1; i <= n; i++) {
        /* 61 bytes with the newline, one write each */
        int len = snprintf(buf, sizeof buf, "line %010ld xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", i);
        buf[60] = '\n';
        if (write(1, buf, 61) != 61) return 2;
        (void)len;
    }
    pause();
    return 0;
}
"""


def build_helpers(work):
    out = {}
    for name, src in [("stamp", STAMP_C), ("lines", LINES_C)]:
        c = os.path.join(work, name + ".c")
        with open(c, "w") as f:
            f.write(src)
        exe = os.path.join(work, name)
        subprocess.run(["cc", "-O2", "-o", exe, c], check=True)
        out[name] = exe
    return out


# ---------------------------------------------------------------- supervisors

def write_exec(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)


class Supervisor:
    """One supervisor set up in `work` for `services`: {name: shell body}."""

    name = "?"

    def __init__(self, work):
        self.work = work
        self.proc = None

    def start(self):
        raise NotImplementedError

    def top(self):
        return self.proc.pid

    def pids(self):
        """The supervisor's own processes (not the services)."""
        return [self.proc.pid]

    def stop(self, timeout):
        self.proc.send_signal(signal.SIGTERM)
        wait_exit(self.proc, timeout)

    def cleanup(self):
        if self.proc:
            kill_tree([self.proc.pid], self.work)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass


# `--watch`: orchestrator runs with its services_dir watcher on.
WATCH = False


class Orch(Supervisor):
    name = "orchestrator"
    # `--baseline PATH` adds a column for another build, measured in the same run.
    binary = ORCH

    def setup(self, services, stop_timeout_ms=2000, log_file=None, keys=None):
        sdir = os.path.join(self.work, "services")
        os.makedirs(sdir)
        for n, body in services.items():
            os.makedirs(os.path.join(sdir, n))
            write_exec(os.path.join(sdir, n, n), "#!/bin/sh\n" + body + "\n")
        cfg = {
            "orchestrator": {
                "services_dir": sdir,
                "control_socket": os.path.join(self.work, "ctl.sock"),
                "initial_backoff_ms": 0,
                "max_backoff_ms": 0,
                "backoff_jitter": 0,
                "max_restart_attempts": 0,
                "stop_timeout_ms": stop_timeout_ms,
                "shutdown_timeout_ms": stop_timeout_ms + 30000,
                "log_level": "info" if log_file else "warn",
            },
            "services": {n: {"pass_service_args": False, **(keys or {})} for n in services},
        }
        if WATCH:
            cfg["orchestrator"]["watch_services_dir"] = True
        self.cfg = os.path.join(self.work, "orchestrator.json")
        with open(self.cfg, "w") as f:
            json.dump(cfg, f)
        self.log_file = log_file

    def cleanup(self):
        # A clean stop removes the service cgroups; a killed orchestrator would leave
        # them to a successor that never comes for this temporary socket.
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        super().cleanup()
        remove_cgroups(os.path.join(self.work, "ctl.sock"))

    def start(self):
        err = open(self.log_file, "w") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen([self.binary, "run", "--config", self.cfg], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def remove_cgroups(socket):
    """Removes what a killed orchestrator left in cgroupfs for `socket` (its cgroups are
    named orchestrator-<FNV-1a of the socket path>)."""
    h = 0xCBF29CE484222325
    for b in socket.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    name = f"orchestrator-{h:016x}"
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        if name in dirs:
            base = os.path.join(root, name)
            for d in os.listdir(base):
                if os.path.isdir(os.path.join(base, d)):
                    try:
                        os.rmdir(os.path.join(base, d))
                    except OSError:
                        pass
            try:
                os.rmdir(base)
            except OSError:
                pass
        if root.count(os.sep) >= 6:
            dirs[:] = []


class Supervisord(Supervisor):
    name = "supervisord"

    def setup(self, services, stop_timeout_ms=2000, log_file=None):
        conf = [
            "[supervisord]", "nodaemon=true", f"logfile={self.work}/supervisord.log",
            f"pidfile={self.work}/supervisord.pid", f"childlogdir={self.work}", "loglevel=warn",
            "[unix_http_server]", f"file={self.work}/supervisor.sock",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        ]
        for n, body in services.items():
            script = os.path.join(self.work, n + ".sh")
            write_exec(script, "#!/bin/sh\n" + body + "\n")
            conf += [
                f"[program:{n}]", f"command={script}", "autorestart=true", "startsecs=0",
                "startretries=1000000", f"stopwaitsecs={max(1, stop_timeout_ms // 1000)}",
                "stopsignal=TERM",
            ]
            if log_file:
                conf += [f"stdout_logfile={log_file}", "stdout_logfile_maxbytes=0",
                         "stdout_logfile_backups=0"]
            else:
                conf += ["stdout_logfile=/dev/null", "stderr_logfile=/dev/null"]
        self.conf = os.path.join(self.work, "supervisord.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")

    def start(self):
        self.proc = subprocess.Popen(["supervisord", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)


class S6(Supervisor):
    name = "s6"

    def setup(self, services, stop_timeout_ms=2000, log_file=None):
        self.scan = os.path.join(self.work, "scan")
        os.makedirs(self.scan)
        for n, body in services.items():
            d = os.path.join(self.scan, n)
            os.makedirs(d)
            write_exec(os.path.join(d, "run"), "#!/bin/sh\n" + body + "\n")
            with open(os.path.join(d, "timeout-kill"), "w") as f:
                f.write(f"{stop_timeout_ms}\n")
            if log_file:
                os.makedirs(os.path.join(d, "log"))
                write_exec(os.path.join(d, "log", "run"),
                           f"#!/bin/sh\nexec s6-log n100 s16000000 t {log_file}\n")
        self.log_dir = log_file

    def start(self):
        # -c: room for more services than s6-svscan's default of 500.
        self.proc = subprocess.Popen(["s6-svscan", "-c", "4096", self.scan], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def pids(self):
        own = [self.proc.pid]
        for p in descendants(self.proc.pid):
            c = cmdline(p)
            if c.startswith(("s6-supervise", "s6-log")):
                own.append(p)
        return own

    def stop(self, timeout):
        subprocess.run(["s6-svscanctl", "-t", self.scan], stderr=subprocess.DEVNULL)
        wait_exit(self.proc, timeout)


class Runit(Supervisor):
    name = "runit"

    def setup(self, services, stop_timeout_ms=2000, log_file=None):
        self.sv = os.path.join(self.work, "sv")
        os.makedirs(self.sv)
        self.stop_timeout = max(1, stop_timeout_ms // 1000)
        for n, body in services.items():
            d = os.path.join(self.sv, n)
            os.makedirs(d)
            write_exec(os.path.join(d, "run"), "#!/bin/sh\n" + body + "\n")
            if log_file:
                os.makedirs(os.path.join(d, "log"))
                os.makedirs(log_file, exist_ok=True)
                with open(os.path.join(log_file, "config"), "w") as f:
                    f.write("s0\n")
                write_exec(os.path.join(d, "log", "run"), f"#!/bin/sh\nexec svlogd -tt {log_file}\n")
        self.services = list(services)

    def start(self):
        self.proc = subprocess.Popen(["runsvdir", "-P", self.sv], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def pids(self):
        own = [self.proc.pid]
        for p in descendants(self.proc.pid):
            if cmdline(p).startswith(("runsv", "svlogd")):
                own.append(p)
        return own

    def stop(self, timeout):
        dirs = [os.path.join(self.sv, n) for n in self.services]
        subprocess.run(["sv", "-w", str(self.stop_timeout), "force-shutdown"] + dirs,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc.send_signal(signal.SIGHUP)
        wait_exit(self.proc, timeout)


ALL = [Orch, Supervisord, S6, Runit]


# Not under /tmp: as root, strict_modes refuses a config or a binary below a directory
# others may write to (sticky or not).
WORK_ROOT = os.path.join(ROOT, "target", "bench-work")


def run_in(sup_cls, fn):
    os.makedirs(WORK_ROOT, mode=0o755, exist_ok=True)
    work = tempfile.mkdtemp(prefix="orch-bench-", dir=WORK_ROOT)
    sup = sup_cls(work)
    try:
        return fn(sup, work)
    finally:
        sup.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def sleepers_body():
    return f"exec /bin/sleep {SLEEP_ARG}"


# ---------------------------------------------------------------- workloads

def footprint(sup_cls, n):
    def go(sup, work):
        sup.setup({f"s{i}": sleepers_body() for i in range(n)})
        t0 = time.time()
        sup.start()
        if not wait_for(lambda: count_sleepers() >= n, 120, 0.01):
            return {"error": f"only {count_sleepers()} of {n} running"}
        start_s = time.time() - t0
        time.sleep(2)
        pids = sup.pids()
        pss, rss = pss_rss_kb(pids)
        return {"start_s": start_s, "pss_mb": pss / 1024, "rss_mb": rss / 1024,
                "procs": len(pids), "threads": threads(pids)}
    return run_in(sup_cls, go)


def start_time(sup_cls, n, reps=5):
    """Median seconds from launching the supervisor until each of `n` services has
    written its marker file (a shell script that touches it, then execs sleep): finer
    than counting sleepers in /proc, and the same for every supervisor."""
    def go(sup, work):
        marks = os.path.join(work, "marks")
        os.makedirs(marks)
        sup.setup({f"s{i}": f": > {marks}/s{i}\n{sleepers_body()}" for i in range(n)})
        t0 = time.time()
        sup.start()
        if not wait_for(lambda: len(os.listdir(marks)) >= n, 60, 0.001):
            return {"error": f"only {len(os.listdir(marks))} of {n} started"}
        return {"start_s": time.time() - t0}
    runs = []
    for _ in range(reps):
        r = run_in(sup_cls, go)
        if "error" in r:
            return r
        runs.append(r["start_s"])
    return {"start_s": statistics.median(runs), "runs": runs}


def idle(sup_cls, n=100, window=10):
    def go(sup, work):
        sup.setup({f"s{i}": sleepers_body() for i in range(n)})
        sup.start()
        wait_for(lambda: count_sleepers() >= n, 120, 0.01)
        time.sleep(2)
        pids = sup.pids()
        c0, t0 = ctx_switches(pids), cpu_seconds(pids)
        time.sleep(window)
        return {"ctx_switches": ctx_switches(pids) - c0, "wakeups_per_s": (ctx_switches(pids) - c0) / window,
                "cpu_ticks": round((cpu_seconds(pids) - t0) * HZ)}
    return run_in(sup_cls, go)


def restart_reaction(sup_cls, helpers, window=6):
    def go(sup, work):
        stamps = os.path.join(work, "stamps")
        sup.setup({"crash": f"exec {helpers['stamp']} {stamps}"})
        sup.start()
        time.sleep(window)
        sup.cleanup()
        times = [int(x) for x in read(stamps).split()]
        gaps = [(b - a) / 1e6 for a, b in zip(times, times[1:])]
        if not gaps:
            return {"error": "no restart seen"}
        return {"median_ms": statistics.median(gaps), "restarts": len(gaps)}
    return run_in(sup_cls, go)


# Every hardening key of docs/hardening.md at once.
HARDENING = {
    "capabilities": [],
    "syscall_filter": ["@mount", "@reboot", "@module", "@swap", "@raw-io", "@clock", "@debug",
                       "@cpu-emulation", "@obsolete"],
    "syscall_filter_action": "errno",
    "private_network": True,
    "private_tmp": True,
    "read_only_paths": ["/usr", "/etc"],
    "private_users": True,
    "nice": 5,
    "io_class": "best-effort",
    "io_priority": 4,
    "io_weight": 100,
}


SPAWNED = re.compile(r"spawned pid \d+ in (\d+) us")


def spawn_costs(helpers, kinds, window):
    """A crashing service restarted with zero backoff, once per entry of `kinds` (name:
    the service's extra keys), alternated three times in the same run: the median time
    of the spawn itself (clone to exec, from the daemon's debug log) and of the whole
    restart cycle (exit, reap, spawn, exec; the exit tears the namespaces down). Runs
    outside /tmp, which private_tmp hides, with its own copy of the stamp helper."""
    def cycle(keys):
        base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target")
        work = tempfile.mkdtemp(prefix="orch-bench-hardening-", dir=base)
        os.chmod(work, 0o755)
        sup = Orch(work)
        try:
            stamp = os.path.join(work, "stamp")
            shutil.copy(helpers["stamp"], stamp)
            stamps, log = os.path.join(work, "stamps"), os.path.join(work, "log")
            sup.setup({"crash": f"exec {stamp} {stamps}"}, log_file=log, keys=keys)
            with open(sup.cfg) as f:
                cfg = json.load(f)
            cfg["orchestrator"]["log_level"] = "debug"
            with open(sup.cfg, "w") as f:
                json.dump(cfg, f)
            sup.start()
            time.sleep(window)
            sup.cleanup()
            times = [int(x) for x in read(stamps).split()]
            gaps = [(b - a) / 1e6 for a, b in zip(times, times[1:])]
            spawns = [int(m) / 1000 for m in SPAWNED.findall(read(log))]
            return spawns, gaps
        finally:
            sup.cleanup()
            shutil.rmtree(work, ignore_errors=True)
    # Alternated, so that a burst of load elsewhere on the machine hits all alike.
    runs = {kind: ([], []) for kind in kinds}
    for _ in range(3):
        for kind, keys in kinds.items():
            spawns, gaps = cycle(keys)
            runs[kind][0].extend(spawns)
            runs[kind][1].extend(gaps)
    if not all(s and g for s, g in runs.values()):
        return {"error": "no restart seen"}
    out = {}
    for kind, (spawns, gaps) in runs.items():
        spawns.sort()
        out[f"{kind}_spawn_ms"] = statistics.median(spawns)
        out[f"{kind}_spawn_p10_ms"] = spawns[len(spawns) // 10]
        out[f"{kind}_cycle_ms"] = statistics.median(gaps)
        out[f"{kind}_spawns"] = len(spawns)
    return out


def hardening_cost(helpers, window=6):
    """The spawn without hardening and with every key (see spawn_costs)."""
    out = spawn_costs(helpers, {"plain": None, "hardened": HARDENING}, window)
    if "error" not in out:
        out["extra_ms"] = out["hardened_spawn_ms"] - out["plain_spawn_ms"]
    return out


def filter_cost(helpers, window=6):
    """The spawn with the deny list above and with the allow list most systemd units
    use (@system-service, some 300 calls): building and installing the larger filter."""
    kinds = {
        "plain": None,
        "deny": {"syscall_filter": HARDENING["syscall_filter"]},
        "allow": {"syscall_allow": ["@system-service"]},
    }
    out = spawn_costs(helpers, kinds, window)
    if "error" not in out:
        out["allow_extra_ms"] = out["allow_spawn_ms"] - out["plain_spawn_ms"]
        out["deny_extra_ms"] = out["deny_spawn_ms"] - out["plain_spawn_ms"]
    return out


NUM = re.compile(rb"line (\d{10}) ")


def count_log_lines(path):
    """Sequence numbers found in a log file or directory, in file order."""
    files = []
    if os.path.isdir(path):
        entries = sorted(os.listdir(path))
        # s6-log/svlogd: archives (@...) are older than `current`.
        files = [os.path.join(path, e) for e in entries if e.startswith("@")]
        files += [os.path.join(path, e) for e in entries if e == "current"]
    elif os.path.exists(path):
        files = [path]
    nums = []
    for f in files:
        with open(f, "rb") as fh:
            nums.extend(int(m.group(1)) for m in NUM.finditer(fh.read()))
    return nums


def log_path(sup_cls, helpers, n=1_000_000):
    def go(sup, work):
        target = os.path.join(work, "log" if sup_cls in (S6, Runit) else "out.log")
        if sup_cls is S6:
            os.makedirs(target)
        sup.setup({"talker": f"exec {helpers['lines']} {n}"}, log_file=target)
        t0 = time.time()
        sup.start()
        last = f"line {n:010d}".encode()

        def done():
            p = target if not os.path.isdir(target) else os.path.join(target, "current")
            try:
                with open(p, "rb") as f:
                    f.seek(max(0, os.path.getsize(p) - 4096))
                    return last in f.read()
            except OSError:
                return False
        ok = wait_for(done, 300, 0.02)
        elapsed = time.time() - t0
        time.sleep(0.5)
        cpu = cpu_seconds(sup.pids())
        nums = count_log_lines(target)
        seen = set(nums)
        lost = n - len(seen & set(range(1, n + 1)))
        dup = len(nums) - len(seen)
        disorder = sum(1 for a, b in zip(nums, nums[1:]) if b < a)
        return {"seconds": elapsed if ok else None, "lost": lost, "dup": dup,
                "reordered": disorder, "cpu_s": cpu}
    return run_in(sup_cls, go)


def shutdown(sup_cls, n=100, stop_ms=2000):
    def go(sup, work):
        sup.setup({f"s{i}": "trap '' TERM; " + sleepers_body() for i in range(n)}, stop_timeout_ms=stop_ms)
        sup.start()
        if not wait_for(lambda: count_sleepers() >= n, 120, 0.01):
            return {"error": "not all running"}
        time.sleep(1)
        t0 = time.time()
        sup.stop(600)  # returns when the supervisor's top process has exited
        t1 = time.time()
        # Services that outlive their supervisor count too, until they are gone.
        if count_sleepers() > 0:
            wait_for(lambda: count_sleepers() == 0, 600, 0.005)
            t1 = time.time()
        return {"seconds": t1 - t0, "left": count_sleepers()}
    return run_in(sup_cls, go)


def kill_floor(n):
    """The kernel's part of a shutdown, with no supervisor: n bare `sleep` processes, each
    in its own session like a service, are SIGKILLed and reaped. Seconds from the first
    kill to the last reap: no supervisor can finish its shutdown faster than this after
    its stop timeout."""
    pids = []
    try:
        for _ in range(n):
            pid = os.fork()
            if pid == 0:
                try:
                    os.setsid()
                    os.execv("/bin/sleep", ["sleep", SLEEP_ARG])
                finally:
                    os._exit(127)
            pids.append(pid)
        if not wait_for(lambda: count_sleepers() >= n, 120, 0.01):
            return {"error": "not all running"}
        time.sleep(1)
        t0 = time.time()
        for p in pids:
            os.killpg(p, signal.SIGKILL)
        for p in pids:
            os.waitpid(p, 0)
        return {"seconds": time.time() - t0}
    finally:
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
                os.waitpid(p, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def hard_kill(sup_cls, n=10):
    def go(sup, work):
        sup.setup({f"s{i}": sleepers_body() for i in range(n)})
        sup.start()
        wait_for(lambda: count_sleepers() >= n, 60, 0.01)
        time.sleep(1)
        os.kill(sup.top(), signal.SIGKILL)
        time.sleep(2)
        return {"left": count_sleepers()}
    return run_in(sup_cls, go)


def binary_sizes():
    """Stripped sizes in MiB: orchestrator; s6-svscan + s6-supervise + libskarnet;
    runsvdir + runsv. supervisord is Python (no binary of its own)."""
    def size(paths):
        return sum(os.path.getsize(p) for p in paths if p and os.path.exists(p)) / 1048576

    def libs(binary, name):
        if not binary:
            return []
        out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        return [os.path.realpath(l.split("=>")[1].split()[0]) for l in out.splitlines() if name in l and "=>" in l]

    s6 = shutil.which("s6-svscan")
    return {
        **{c.name: size([c.binary]) for c in ALL if c.name.startswith("orchestrator")},
        "s6": size([s6, shutil.which("s6-supervise")] + libs(s6, "skarnet")),
        "runit": size([shutil.which("runsvdir"), shutil.which("runsv")]),
        "supervisord": None,
    }


# ---------------------------------------------------------------- report

def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{v}{unit}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--only", help="comma-separated workloads: footprint,start,idle,restart,hardening,seccomp,log,forward,shutdown,kill,size,curve,handover,reexec")
    ap.add_argument("--watch", action="store_true",
                    help="orchestrator with watch_services_dir on (its watcher must add no wake-up)")
    ap.add_argument("--baseline", help="another orchestrator binary (say, main before a change), "
                    "measured in the same run as a column of its own")
    args = ap.parse_args()
    global WATCH
    WATCH = args.watch
    if args.baseline:
        ALL.insert(1, type("OrchBaseline", (Orch,), {"name": "orchestrator-before",
                                                     "binary": os.path.abspath(args.baseline)}))
    big = 100 if args.quick else 500
    lines = 100_000 if args.quick else 1_000_000
    work = tempfile.mkdtemp(prefix="orch-bench-helpers-")
    helpers = build_helpers(work)
    results = {}
    rows = []

    only = set(args.only.split(",")) if args.only else None

    def wanted(w):
        return only is None or w in only

    def measure(label, fn, key, lower_better=True, unit="", classes=ALL):
        vals = {}
        for cls in classes:
            sys.stderr.write(f"  {label}: {cls.name}...\n")
            r = fn(cls)
            results.setdefault(label, {})[cls.name] = r
            vals[cls.name] = r.get(key) if isinstance(r, dict) else None
        anchors = {k: v for k, v in vals.items() if not k.startswith("orchestrator") and v is not None}
        best = (min if lower_better else max)(anchors.items(), key=lambda kv: kv[1]) if anchors else None
        ours = vals.get("orchestrator")
        ratio = None
        if best and ours is not None and best[1]:
            ratio = ours / best[1]
        rows.append((label, {k: fmt(v, unit) for k, v in vals.items()},
                     f"{best[0]}" if best else "-", fmt(ratio) if ratio is not None else "-"))

    if wanted("footprint"):
        sys.stderr.write("footprint\n")
        measure("PSS at 100 services (MB)", lambda c: footprint(c, 100), "pss_mb")
        measure(f"PSS at {big} services (MB)", lambda c: footprint(c, big), "pss_mb")
        measure(f"time to all {big} running (s)", lambda c: results[f"PSS at {big} services (MB)"][c.name], "start_s")
    if wanted("start"):
        sys.stderr.write("start\n")
        reps = 3 if args.quick else 5
        for n in (10, 100):
            measure(f"start, {n} services: last one running, median of {reps} (s)",
                    lambda c, n=n: start_time(c, n, reps), "start_s")
    if wanted("idle"):
        measure("idle wakeups/s (100 services)", lambda c: idle(c, 100, 5 if args.quick else 10), "wakeups_per_s")
    if wanted("restart"):
        measure("restart reaction, median (ms)", lambda c: restart_reaction(c, helpers, 3 if args.quick else 6), "median_ms")
    if wanted("hardening"):
        sys.stderr.write("  hardening: orchestrator, none then every key...\n")
        r = hardening_cost(helpers, 1 if args.quick else 3)
        results["hardening"] = r
        rows.append(("spawn with every hardening key: extra per spawn (ms; target < 1)",
                     {"orchestrator": fmt(r.get("extra_ms"))}, "-", "-"))
    if wanted("seccomp"):
        sys.stderr.write("  seccomp: orchestrator, no filter, deny list, allow list...\n")
        r = filter_cost(helpers, 1 if args.quick else 3)
        results["seccomp"] = r
        rows.append(("spawn with syscall_filter (deny list): extra per spawn (ms)",
                     {"orchestrator": fmt(r.get("deny_extra_ms"))}, "-", "-"))
        rows.append(("spawn with syscall_allow @system-service: extra per spawn (ms)",
                     {"orchestrator": fmt(r.get("allow_extra_ms"))}, "-", "-"))
    log_label = f"log path: CPU for {lines} lines (s)"
    if wanted("log"):
        measure(log_label, lambda c: log_path(c, helpers, lines), "cpu_s")
    if wanted("forward"):
        import forward
        sys.stderr.write("  log path with log_forward over TCP, against the file path (orchestrator)...\n")
        r = forward.forward_vs_file(Orch, run_in, helpers, lines, 1 if args.quick else 5,
                                    wait_for, cpu_seconds)
        results["forward"] = r
        rows.append((f"log path to a file: CPU for {lines} lines, median (s)",
                     {"orchestrator": fmt(r.get("file_cpu_s"))}, "-", "-"))
        rows.append((f"log path forwarded over TCP instead: CPU for {lines} lines, median (s; "
                     f"goal at most 1.5 x the file's)", {"orchestrator": fmt(r.get("forward_cpu_s"))},
                     "-", fmt(r.get("ratio"))))
    floor = None
    if wanted("shutdown"):
        measure("shutdown, 100 TERM-ignoring, 2 s timeout (s)",
                lambda c: shutdown(c, 100 if not args.quick else 20, 2000), "seconds")
        # supervisord stops one service after the other: 1000 x 2 s, so it sits this out.
        many = 1000 if not args.quick else 200
        measure(f"shutdown, {many} TERM-ignoring, 2 s timeout (s)",
                lambda c: shutdown(c, many, 2000), "seconds",
                classes=[c for c in ALL if c is not Supervisord])
        sys.stderr.write(f"  kernel floor: kill and reap {many} bare processes...\n")
        floor = (many, kill_floor(many), results[f"shutdown, {many} TERM-ignoring, 2 s timeout (s)"])
    if wanted("kill"):
        measure("hard kill: processes left after 2 s", lambda c: hard_kill(c, 10), "left")
    if wanted("size"):
        sizes = binary_sizes()
        results["binary MB"] = sizes
        anchors = {k: v for k, v in sizes.items() if not k.startswith("orchestrator") and v}
        best = min(anchors.items(), key=lambda kv: kv[1]) if anchors else None
        rows.append(("binary, stripped (MiB; budget 1.5)", {k: fmt(v) for k, v in sizes.items()},
                     best[0] if best else "-", fmt(sizes["orchestrator"] / best[1]) if best else "-"))

    handovers = []
    if wanted("handover"):
        import handover
        for label, with_sockets in (("with sockets", True), ("without sockets", False)):
            sys.stderr.write(f"  handover {label}...\n")
            handovers.append((label, handover.handover(Orch, run_in, ORCH, with_sockets)))
        results["handover"] = dict(handovers)

    if wanted("reexec"):
        import reexec
        for n in (100, big):
            sys.stderr.write(f"  upgrade-self with {n} services...\n")
            r = reexec.self_upgrade(Orch, run_in, sleepers, sleepers_body(), n, wait_for)
            results[f"upgrade-self {n}"] = r
            note = "" if r.get("kept") and r.get("exe_new") else " (SERVICES NOT KEPT)"
            rows.append((f"upgrade-self, {n} services: supervision pause (ms){note}",
                         {"orchestrator": fmt(r.get("pause_ms"))}, "-", "-"))
            rows.append((f"upgrade-self, {n} services: client round trip, checks included (ms)",
                         {"orchestrator": fmt(r.get("client_ms"))}, "-", "-"))

    # Log-path integrity, shown separately: every supervisor must be lossless.
    integrity = {c.name: results[log_label][c.name] for c in ALL} if log_label in results else {}

    curve = []
    if wanted("curve"):
        sys.stderr.write("scale curve\n")
        for n in ([10, 100, 300] if args.quick else [10, 100, 1000, 2000]):
            curve.append((n, footprint(Orch, n)))

    names = [c.name for c in ALL]
    print(f"\n# orchestrator benchmarks ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
          f"{os.uname().release})\n")
    print("| workload | " + " | ".join(names) + " | best anchor | orchestrator / best |")
    print("|---|" + "---|" * (len(names) + 2))
    for label, vals, best, ratio in rows:
        print(f"| {label} | " + " | ".join(vals.get(n, "-") for n in names) + f" | {best} | {ratio} |")
    if integrity:
        print("\nLog path detail (seconds until the last line is in the log; lost, duplicated, reordered):\n")
    for n in names if integrity else []:
        r = integrity[n]
        print(f"- {n}: {fmt(r.get('seconds'), ' s')}, lost {r.get('lost')}, dup {r.get('dup')}, "
              f"reordered {r.get('reordered')}, CPU {fmt(r.get('cpu_s'), ' s')}")
    if floor and "seconds" in floor[1]:
        many, f, res = floor
        print(f"\nShutdown of {many}, past the 2 s stop timeout, against the kernel floor (SIGKILL and "
              f"reap {many} bare processes, no supervisor: {f['seconds'] * 1000:.0f} ms):\n")
        for name, r in res.items():
            if isinstance(r, dict) and "seconds" in r:
                over = (r["seconds"] - 2) * 1000
                print(f"- {name}: {over:.0f} ms past the timeout = {over / (f['seconds'] * 1000):.1f} x the floor")
    if "hardening" in results and "extra_ms" in results["hardening"]:
        r = results["hardening"]
        print(f"\nHardening: a spawn (clone to exec), median (10th percentile), took "
              f"{r['plain_spawn_ms']:.3f} ms ({r['plain_spawn_p10_ms']:.3f}) with no key over "
              f"{r['plain_spawns']} spawns and {r['hardened_spawn_ms']:.3f} ms "
              f"({r['hardened_spawn_p10_ms']:.3f}) with every key over {r['hardened_spawns']}; "
              f"the restart cycle (exit, namespace teardown, reap, spawn) {r['plain_cycle_ms']:.2f} "
              f"ms and {r['hardened_cycle_ms']:.2f} ms.")
    if "seccomp" in results and "allow_extra_ms" in results["seccomp"]:
        r = results["seccomp"]
        print(f"\nSyscall filters: a spawn, median (10th percentile), took "
              f"{r['plain_spawn_ms']:.3f} ms ({r['plain_spawn_p10_ms']:.3f}) with none, "
              f"{r['deny_spawn_ms']:.3f} ms ({r['deny_spawn_p10_ms']:.3f}) with the deny list "
              f"and {r['allow_spawn_ms']:.3f} ms ({r['allow_spawn_p10_ms']:.3f}) with "
              f"syscall_allow @system-service, over {r['allow_spawns']} spawns.")
    if curve:
        print("\nScale curve, orchestrator (start = until all services run):\n")
        print("| services | start (s) | PSS (MB) | RSS (MB) | threads | PSS per service (KB) |")
        print("|---|---|---|---|---|---|")
    for n, r in curve:
        if "error" in r:
            print(f"| {n} | {r['error']} | | | | |")
            continue
        print(f"| {n} | {r['start_s']:.2f} | {r['pss_mb']:.1f} | {r['rss_mb']:.1f} | {r['threads']} | "
              f"{r['pss_mb'] * 1024 / n:.1f} |")
    if handovers:
        print("\n".join(handover.report(handovers)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "results": results, "curve": curve}, f, indent=1, default=str)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
