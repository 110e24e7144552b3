#!/usr/bin/env python3
"""Measures the walking skeleton's headline figures on this machine.

    cargo build --release && python3 benches/skeleton.py [--runs 5] [--binary PATH]

* time to ready: from starting `flotilla up` to its ready line (all processes registered and
  passing), as the supervisor reports it and as seen from outside;
* idle memory of the supervisor and all its children together, after 5 s idle with nothing
  sent: the resident set (VmRSS, which counts the pages the processes share, such as the one
  binary's code, once per process) and the proportional set size (Pss from smaps_rollup, which
  splits each shared page among the processes sharing it: what the system costs the machine);
* time for a dead instance to leave rotation: with `--scale inventory=2`, `kill -9` one inventory
  instance and poll the registry every 5 ms until the instance is no longer passing (out of
  rotation) and until it is no longer listed (evicted).

Prints medians (and min/max) over the runs. Uses only the Python standard library.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

BINARY = os.path.join(os.path.dirname(__file__), "..", "target", "release", "flotilla")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.load(response)


def children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            if int(rest[1]) == pid:
                out.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return out


def kib(path, field):
    """The value in KiB of `field` (`VmRSS:`, `Pss:`) in a /proc file."""
    with open(path) as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def rss_kib(pid):
    return kib(f"/proc/{pid}/status", "VmRSS:")


def pss_kib(pid):
    return kib(f"/proc/{pid}/smaps_rollup", "Pss:")


class System:
    def __init__(self, *extra):
        self.dir = tempfile.TemporaryDirectory()
        self.port = free_port()
        started = time.monotonic()
        self.process = subprocess.Popen(
            [BINARY, "up", "--gateway-port", str(self.port), "--data-dir", self.dir.name, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
        )
        line = self.process.stdout.readline()
        self.outside = time.monotonic() - started
        if not line.startswith("flotilla ready in "):
            sys.exit(f"unexpected first line: {line!r}")
        self.reported = float(line.split()[3]) / 1000  # "flotilla ready in 79 ms: ..."
        with open(os.path.join(self.dir.name, "registry.url")) as f:
            self.registry = f.read().strip()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        self.dir.cleanup()


def summary(name, values, unit):
    print(f"{name:<44} median {statistics.median(values):8.1f} {unit}   "
          f"(min {min(values):.1f}, max {max(values):.1f}, {len(values)} runs)")


def main():
    global BINARY
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--binary", default=BINARY, help="the flotilla binary to measure")
    args = parser.parse_args()
    BINARY = args.binary
    if not os.path.exists(BINARY):
        sys.exit("build first: cargo build --release")

    reported, outside, rss, pss, processes = [], [], [], [], []
    for _ in range(args.runs):
        system = System()
        reported.append(system.reported * 1000)
        outside.append(system.outside * 1000)
        time.sleep(5)
        pids = [system.process.pid, *children(system.process.pid)]
        processes.append(len(pids))
        rss.append(sum(rss_kib(pid) for pid in pids) / 1024)
        pss.append(sum(pss_kib(pid) for pid in pids) / 1024)
        system.stop()

    out_of_rotation, evicted = [], []
    for _ in range(args.runs):
        system = System("--scale", "inventory=2")
        url = f"{system.registry}/v1/registry/services/inventory"
        victim = get(url)["instances"][0]
        os.kill(int(victim["metadata"]["pid"]), signal.SIGKILL)
        killed = time.monotonic()
        left = None
        while True:
            instances = {i["id"]: i for i in get(url)["instances"]}
            now = time.monotonic() - killed
            mine = instances.get(victim["id"])
            if left is None and (mine is None or mine["status"] != "passing"):
                left = now
            if mine is None:
                break
            if now > 10:
                sys.exit("the dead instance was still registered after 10 s")
            time.sleep(0.005)
        out_of_rotation.append(left * 1000)
        evicted.append(now * 1000)
        system.stop()

    print(f"flotilla {BINARY}, {os.cpu_count()} cores")
    summary("time to ready (supervisor's own figure)", reported, "ms")
    summary("time to ready (seen from outside)", outside, "ms")
    summary(f"idle RSS, all {processes[0]} processes together", rss, "MiB")
    summary(f"idle PSS, all {processes[0]} processes together", pss, "MiB")
    summary("dead instance out of rotation (kill -9)", out_of_rotation, "ms")
    summary("dead instance evicted from the registry", evicted, "ms")


if __name__ == "__main__":
    main()
