#!/usr/bin/env python3
"""Lists module cycles in the workspace's crates: a module that, through `use` paths and
`crate::`/`super::` references, depends on a module that depends back on it. Declaring a child
(`mod child;`) and re-exporting its items (`pub use child::Item;`) are not uses: a path through
a re-export counts as a use of the module that defines the item. Exits 1 when any cycle is found.

Usage: scripts/module-cycles.py [ROOT]   (ROOT defaults to the repository)
"""
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")


def modules_of(src):
    """Module path (tuple) -> file, for one crate's src directory."""
    mods = {}
    for dirpath, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), src)[:-3].split(os.sep)
            if rel[0] == "bin":
                continue
            if rel[-1] in ("lib", "main") and len(rel) == 1:
                path = ()
            elif rel[-1] == "mod":
                path = tuple(rel[:-1])
            else:
                path = tuple(rel)
            mods[path] = os.path.join(dirpath, name)
    return mods


def strip(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", text, flags=re.S)
    return text


def reexports(text, here, mods):
    """Names module `here` re-exports (`pub use a::b::Name;`, `pub use a::{X, Y};`) -> the
    module each comes from."""
    names = {}
    for match in re.finditer(r"\bpub\s+use\s+([^;]+);", text):
        body = match.group(1).replace("\n", " ")
        if "{" in body:
            prefix, inner = body.split("{", 1)
            items = [prefix + item for item in inner.rstrip("} ").split(",")]
        else:
            items = [body]
        for item in items:
            parts = [p.strip() for p in item.split("::") if p.strip()]
            if not parts:
                continue
            name = parts[-1].split(" as ")[-1].strip()
            if parts[0] == "crate":
                base, parts = (), parts[1:]
            elif parts[0] == "super":
                base, parts = here[:-1], parts[1:]
            elif parts[0] == "self":
                base, parts = here, parts[1:]
            else:
                base = here
            path = base
            for part in parts:
                if path + (part,) in mods:
                    path = path + (part,)
                else:
                    break
            if path != here and (path != base or parts and base + (parts[0],) in mods):
                names[name] = path
    return names


def resolve(path, rest, mods, exported):
    """The module a path lands in: modules as far as they go, then through re-exports."""
    for i, part in enumerate(rest):
        if path + (part,) in mods:
            path = path + (part,)
            continue
        seen = set()
        while part in exported.get(path, {}) and (path, part) not in seen:
            seen.add((path, part))
            path = exported[path][part]
        break
    return path


def references(text, here, mods, exported):
    """Modules referred to from module `here`'s text (re-exports and `mod` lines excluded)."""
    text = re.sub(r"\bpub\s+use\s+[^;]+;", "", text)
    text = re.sub(r"\b(pub(\([^)]*\))?\s+)?mod\s+\w+\s*;", "", text)
    found = set()
    for match in re.finditer(r"\b(crate|super|self)((?:::\w+)+)", text):
        head, rest = match.group(1), match.group(2).split("::")[1:]
        if head == "crate":
            base = ()
        elif head == "self":
            base = here
        else:
            base = here[:-1]
            while rest and rest[0] == "super":
                base, rest = base[:-1], rest[1:]
        found.add(resolve(base, rest, mods, exported))
    # grouped imports: `use crate::{a, b::c}` and `use super::{x, y}`
    for match in re.finditer(r"\buse\s+(crate|super)::\{([^}]*)\}", text):
        base = () if match.group(1) == "crate" else here[:-1]
        for item in match.group(2).split(","):
            parts = [p.strip() for p in item.strip().split("::") if p.strip() and p.strip() != "self"]
            found.add(resolve(base, parts, mods, exported))
    # bare child modules used by name (`child::item`), relative to here
    for match in re.finditer(r"\b(\w+)::", text):
        if here + (match.group(1),) in mods:
            found.add(here + (match.group(1),))
    found.discard(here)
    return found


def cycles(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(group)

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main():
    found = 0
    for top in ("crates", "services"):
        base = os.path.join(ROOT, top)
        for crate in sorted(os.listdir(base)):
            src = os.path.join(base, crate, "src")
            if not os.path.isdir(src):
                continue
            mods = modules_of(src)
            texts = {p: strip(open(f, encoding="utf-8").read()) for p, f in mods.items()}
            exported = {p: reexports(t, p, mods) for p, t in texts.items()}
            graph = {p: references(t, p, mods, exported) for p, t in texts.items()}
            for group in cycles(graph):
                found += 1
                names = sorted("::".join(p) or "(root)" for p in group)
                print(f"{top}/{crate}: cycle between {', '.join(names)}")
    if found == 0:
        print("no module cycle")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
