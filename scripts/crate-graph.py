#!/usr/bin/env python3
"""Prints the workspace's crate graph from the manifests (`cargo metadata`): for each crate, the
workspace crates it depends on (normal dependencies; dev-only ones in brackets), lowest layer
first. docs/ARCHITECTURE.md draws its graph from this output.

Usage: scripts/crate-graph.py
"""
import json
import subprocess

meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
    check=True, capture_output=True, text=True).stdout)
members = {p["name"]: p for p in meta["packages"]}
normal, dev = {}, {}
for name, package in members.items():
    normal[name] = sorted({d["name"] for d in package["dependencies"]
                           if d["name"] in members and d.get("kind") is None})
    dev[name] = sorted({d["name"] for d in package["dependencies"]
                        if d["name"] in members and d.get("kind") == "dev"} - set(normal[name]))

depth = {}


def layer(name):
    if name not in depth:
        depth[name] = 1 + max((layer(d) for d in normal[name]), default=-1)
    return depth[name]


for name in sorted(members, key=lambda n: (layer(n), n)):
    short = lambda n: n.replace("flotilla-", "")
    line = f"{layer(name)}  {short(name):<14} -> {', '.join(short(d) for d in normal[name]) or '(none)'}"
    if dev[name]:
        line += f"   [dev: {', '.join(short(d) for d in dev[name])}]"
    print(line)
