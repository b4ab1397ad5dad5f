"""The log_forward row of `make bench`: the daemon's CPU for N lines of one service when
they go to a file (the log path row's setup: the daemon's log on a file) and when they
go, instead, to a syslog collector over TCP on this machine (a small reader in a
process of its own that counts the messages, so that its CPU is not the daemon's).
The two runs alternate, `reps` times each, and the medians are compared: the goal is
at most 1.5 times the file path's CPU. Standard library only."""

import json
import os
import statistics
import subprocess
import sys
import time

# Listens on a free port (printed), reads octet-counted frames' bytes, counts the
# talker's lines among them, and prints the count once it reaches N (or at EOF).
READER = r"""
import socket, sys
n = int(sys.argv[1])
pat = b" stdout - line "
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(4)
print(l.getsockname()[1], flush=True)
c, _ = l.accept()
count, tail = 0, b""
while count < n:
    d = c.recv(1 << 20)
    if not d:
        break
    d = tail + d
    count += d.count(pat)
    tail = d[-(len(pat) - 1):]
print(count, flush=True)
"""


def one(orch_cls, run_in, helpers, n, wait_for, cpu_seconds, forward):
    def go(sup, work):
        target = os.path.join(work, "out.log")
        reader = None
        if forward:
            reader = subprocess.Popen([sys.executable, "-c", READER, str(n)],
                                      stdout=subprocess.PIPE, text=True)
            port = int(reader.stdout.readline())
            sup.setup({"talker": f"exec {helpers['lines']} {n}"})
            with open(sup.cfg) as f:
                cfg = json.load(f)
            # Room for the whole run, so that the figure is the cost of sending every
            # line, not of dropping some.
            cfg["orchestrator"]["log_forward"] = {"address": f"tcp://127.0.0.1:{port}",
                                                  "buffer_bytes": 256 << 20}
            with open(sup.cfg, "w") as f:
                json.dump(cfg, f)
        else:
            sup.setup({"talker": f"exec {helpers['lines']} {n}"}, log_file=target)
        sup.start()
        last = f"line {n:010d}".encode()

        def file_done():
            try:
                with open(target, "rb") as f:
                    f.seek(max(0, os.path.getsize(target) - 4096))
                    return last in f.read()
            except OSError:
                return False
        try:
            if forward:
                import threading
                timer = threading.Timer(300, reader.kill)
                timer.start()
                got = int(reader.stdout.readline() or 0)
                timer.cancel()
                ok = got == n
            else:
                ok = wait_for(file_done, 300, 0.02)
                got = n if ok else None
            time.sleep(0.5)
            return {"cpu_s": cpu_seconds(sup.pids()) if ok else None, "lines": got}
        finally:
            if reader:
                reader.kill()
                reader.wait()
    return run_in(orch_cls, go)


def forward_vs_file(orch_cls, run_in, helpers, n, reps, wait_for, cpu_seconds):
    files, forwards = [], []
    for _ in range(reps):
        for forward, out in ((False, files), (True, forwards)):
            r = one(orch_cls, run_in, helpers, n, wait_for, cpu_seconds, forward)
            if r.get("cpu_s") is None:
                return {"error": f"{'forward' if forward else 'file'}: {r}"}
            out.append(r["cpu_s"])
    f, w = statistics.median(files), statistics.median(forwards)
    return {"file_cpu_s": f, "forward_cpu_s": w, "ratio": w / f if f else None,
            "file_runs": files, "forward_runs": forwards}
