"""The handover row of `make bench`: a client opens about 1,000 connections a
second to one service while it is restarted and while it is upgraded, with `sockets`
(the orchestrator holds the listening socket and passes it as fd 3) and without (the
service binds the port itself), in the same run. Reports connections refused and the
longest wait for an answer (connect, accept and a one-line reply).

The client is one thread driving non-blocking sockets from a selector, so a connection
waiting in the backlog never holds up the next one. Standard library only."""

import errno
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time

SERVER = r'''
import os, socket, sys
if os.environ.get("LISTEN_FDS") and os.environ.get("LISTEN_PID") == str(os.getpid()):
    s = socket.socket(fileno=3)
else:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(128)
while True:
    c, _ = s.accept()
    c.sendall(b"ok\n")
    c.close()
'''


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Client:
    """Connects to `port` at `rate` per second until stopped."""

    def __init__(self, port, rate=1000):
        self.port, self.rate = port, rate
        self.stop_flag = threading.Event()
        self.refused = self.other_errors = self.answered = 0
        self.longest = 0.0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def finish(self):
        self.stop_flag.set()
        self.thread.join()
        return {"connections": self.answered + self.refused + self.other_errors,
                "refused": self.refused, "errors": self.other_errors,
                "longest_wait_ms": self.longest * 1000}

    def run(self):
        sel = selectors.DefaultSelector()
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        pending = 0
        while not self.stop_flag.is_set() or pending:
            now = time.monotonic()
            while not self.stop_flag.is_set() and now >= next_at:
                s = socket.socket()
                s.setblocking(False)
                r = s.connect_ex(("127.0.0.1", self.port))
                if r in (0, errno.EINPROGRESS):
                    sel.register(s, selectors.EVENT_WRITE, [now, False])
                    pending += 1
                else:
                    self.count_error(r)
                    s.close()
                next_at += interval
            timeout = max(0.0, next_at - time.monotonic()) if not self.stop_flag.is_set() else 0.05
            for key, _ in sel.select(timeout):
                s, data = key.fileobj, key.data
                if not data[1]:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        self.count_error(err)
                        sel.unregister(s)
                        s.close()
                        pending -= 1
                        continue
                    data[1] = True
                    sel.modify(s, selectors.EVENT_READ, data)
                    continue
                try:
                    got = s.recv(16)
                except OSError as e:
                    got = None
                    self.count_error(e.errno)
                if got:
                    self.answered += 1
                    self.longest = max(self.longest, time.monotonic() - data[0])
                elif got is not None:
                    self.other_errors += 1  # closed without an answer
                sel.unregister(s)
                s.close()
                pending -= 1

    def count_error(self, err):
        if err == errno.ECONNREFUSED:
            self.refused += 1
        else:
            self.other_errors += 1


def handover(orch_cls, run_in, orch_bin, with_sockets, rounds=3, grace_ms=300):
    """Restarts and upgrades of one service under load; the figures for each."""
    def go(sup, work):
        port = free_port()
        server = os.path.join(work, "server.py")
        with open(server, "w") as f:
            f.write(SERVER)
        body = f"exec {sys.executable} {server} {port}"
        sup.setup({"web": body})
        with open(sup.cfg) as f:
            cfg = json.load(f)
        svc = cfg["services"]["web"]
        svc["upgrade_grace_ms"] = grace_ms
        if with_sockets:
            svc["sockets"] = [{"listen": f"127.0.0.1:{port}"}]
        with open(sup.cfg, "w") as f:
            json.dump(cfg, f)
        sup.start()
        cli = [orch_bin, "--config", sup.cfg]

        def serving():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        deadline = time.monotonic() + 30
        while not serving():
            if time.monotonic() > deadline:
                return {"error": "the service never served"}
            time.sleep(0.01)
        out = {}
        client = Client(port).start()
        for _ in range(rounds):
            subprocess.run(cli + ["restart", "web"], capture_output=True, timeout=60)
            time.sleep(0.3)
        out["restart"] = client.finish()
        versions = []
        for v in range(2):
            p = os.path.join(work, f"web-v{v}")
            with open(p, "w") as f:
                f.write(f"#!/bin/sh\n# version {v}\n{body}\n")
            os.chmod(p, 0o755)
            versions.append(p)
        client = Client(port).start()
        for i in range(rounds):
            r = subprocess.run(cli + ["upgrade", "web", versions[i % 2]], capture_output=True,
                               text=True, timeout=60)
            if r.returncode != 0:
                out.setdefault("upgrade_errors", []).append(r.stderr.strip())
            time.sleep(0.3)
        out["upgrade"] = client.finish()
        return out
    return run_in(orch_cls, go)


def report(results):
    """Markdown lines for the handover table."""
    lines = ["", "Handover under ~1,000 connections/s (orchestrator; refused, longest wait for an answer):", "",
             "| | restart: refused | restart: longest wait | upgrade: refused | upgrade: longest wait |",
             "|---|---|---|---|---|"]
    for label, r in results:
        if "error" in r:
            lines.append(f"| {label} | {r['error']} | | | |")
            continue
        cells = []
        for phase in ("restart", "upgrade"):
            p = r[phase]
            cells += [f"{p['refused']} of {p['connections']}", f"{p['longest_wait_ms']:.0f} ms"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for e in r.get("upgrade_errors", []):
            lines.append(f"  (upgrade failed: {e})")
    return lines
