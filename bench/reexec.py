"""The upgrade-self row of `make bench`: the daemon re-executes onto a copy of
its own binary with N sleeping services. Reports the supervision pause (from the old
image's `handing over` record to the new image's `took over`, both on the daemon's own
clock, in its log), the client's round trip (checks of the new binary included), and
whether every service process is still the same one afterwards. Standard library only."""

import datetime
import os
import shutil
import subprocess
import time


def _stamp(line):
    # 2026-11-30T18:08:20.420Z LEVEL ...
    try:
        t = datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")
    except (ValueError, IndexError):
        return None
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()


def self_upgrade(orch_cls, run_in, sleepers, body, n, wait_for):
    def go(sup, work):
        log = os.path.join(work, "daemon.log")
        sup.setup({f"s{i}": body for i in range(n)}, log_file=log)
        sup.start()
        if not wait_for(lambda: len(sleepers()) >= n, 120, 0.01):
            return {"error": f"only {len(sleepers())} of {n} running"}
        before = set(sleepers())
        new = os.path.join(work, "orchestrator-new")
        shutil.copy(sup.binary, new)
        t0 = time.time()
        r = subprocess.run([sup.binary, "upgrade-self", new, "--config", sup.cfg],
                           capture_output=True, text=True, timeout=120)
        client_ms = (time.time() - t0) * 1000
        if r.returncode != 0:
            return {"error": r.stderr.strip()}

        def stamps():
            out = {}
            with open(log, errors="replace") as f:
                for line in f:
                    if "upgrade-self: handing over" in line:
                        out["from"] = _stamp(line)
                    elif "upgrade-self: took over" in line:
                        out["to"] = _stamp(line)
            return out

        if not wait_for(lambda: "to" in stamps(), 60, 0.01):
            return {"error": "no take-over record"}
        s = stamps()
        kept = before == set(sleepers())
        return {"pause_ms": (s["to"] - s["from"]) * 1000, "client_ms": client_ms, "kept": kept,
                "exe_new": os.readlink(f"/proc/{sup.proc.pid}/exe") == new}
    return run_in(orch_cls, go)
