#!/usr/bin/env python3
"""The house as the code shows it: lines per module, which modules each one uses, and any
circle among them.

    python3 tools/house.py            # lines per module, the uses of training, reference, cli, serve
    python3 tools/house.py --all      # every module's uses

A module is a file under src/ (a folder's mod.rs is the folder). A use is any path
`crate::a::b`, `chargpt::a::b` or `super::x` in the code (comments, strings and the tests at the
end of a file left out), counted once per file. Standard library only.
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(path):
    """`src/serve/api.rs` -> `serve::api`; `src/serve/mod.rs` -> `serve`; lib.rs/main.rs -> ``."""
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, "::")
    if rel in ("lib", "main"):
        return ""
    if rel.endswith("::mod"):
        rel = rel[: -len("::mod")]
    return rel


def strip(text):
    """The code without its tests (a `#[cfg(test)] mod` to the end of the file), comments and
    string literals: their words are not uses."""
    text = re.split(r"#\[cfg\(test\)\]\s*mod\s", text)[0]
    token = re.compile(
        r"//[^\n]*|/\*.*?\*/"  # comments
        r'|(?<![\w"])r(#*)".*?"\1'  # raw strings
        r'|"(?:\\.|[^"\\])*"'  # strings
        r"|'(?:\\.|[^'\\])'",  # characters ('"' among them)
        re.S,
    )
    text = token.sub(lambda m: '""' if m.group(0)[0] in "r\"'" else "", text)
    return text


def files():
    for folder, _, names in os.walk(ROOT):
        for name in sorted(names):
            if name.endswith(".rs"):
                yield os.path.join(folder, name)


def resolve(module, known):
    """The longest known module a path names (`training::Run` -> `training`)."""
    parts = module.split("::")
    for n in range(len(parts), 0, -1):
        candidate = "::".join(parts[:n])
        if candidate in known:
            return candidate
    return None


def uses(path, module, known):
    text = strip(open(path, encoding="utf-8").read())
    # `use crate::{a, b::c}` groups: expand the first level.
    found = set()
    binary = path.startswith(os.path.join(ROOT, "cli")) or path.startswith(
        os.path.join(ROOT, "serve")) or path.endswith("main.rs")
    for prefix, rest in re.findall(r"\b(crate|chargpt|super)::((?:\{[^}]*\}|[A-Za-z_][\w:]*))", text):
        if prefix == "super":
            parent = module.rsplit("::", 1)[0] if "::" in module else ""
            # a mod.rs's `super` is its folder's parent
            if path.endswith("mod.rs"):
                parent = parent.rsplit("::", 1)[0] if "::" in parent else ""
            base = parent
        elif prefix == "crate" and binary:
            base = ""  # the binary's crate root: cli, serve
        else:
            base = ""
        heads = []
        if rest.startswith("{"):
            heads = [h.strip() for h in rest[1:-1].split(",") if h.strip()]
        else:
            heads = [rest]
        for head in heads:
            head = head.split(" as ")[0].strip()
            if head in ("self", "*"):
                head = ""
            full = f"{base}::{head}" if base and head else (base or head)
            target = resolve(full, known)
            if target is not None and target != module and not module.startswith(target + "::") \
                    and not target.startswith(module + "::") if module else target is not None:
                found.add(target)
    return found


def main():
    paths = list(files())
    modules = {module_of(p): p for p in paths}
    known = set(modules) - {""}
    lines = {m: sum(1 for _ in open(p, encoding="utf-8")) for m, p in modules.items()}
    graph = {m: uses(p, m, known) for m, p in modules.items() if m}
    print("lines per module (a folder with its files):")
    tops = sorted({m.split("::")[0] for m in known})
    for top in tops:
        inside = {m: n for m, n in lines.items() if m == top or m.startswith(top + "::")}
        parts = ", ".join(f"{m.split('::', 1)[1] if '::' in m else 'mod'} {n}"
                          for m, n in sorted(inside.items()))
        print(f"  {top:<12} {sum(inside.values()):>6}  ({parts})" if len(inside) > 1
              else f"  {top:<12} {sum(inside.values()):>6}")
    print(f"  {'total':<12} {sum(lines.values()):>6}")
    show = tops if "--all" in sys.argv else ["training", "reference", "cli", "serve"]
    print("\nwhat each uses (other top-level modules):")
    for top in show:
        used = set()
        for m, targets in graph.items():
            if m == top or m.startswith(top + "::"):
                used |= {t.split("::")[0] for t in targets}
        used.discard(top)
        print(f"  {top}: {', '.join(sorted(used)) or '-'}")
    # Circles between modules (files), not counting a folder's parent and its children.
    circles = []
    for a, targets in graph.items():
        for b in targets:
            if a in graph.get(b, ()) and a < b:
                circles.append((a, b))
    print("\nmodules that use each other:", ", ".join(f"{a} <-> {b}" for a, b in circles) or "none")
    return 1 if circles else 0


if __name__ == "__main__":
    sys.exit(main())
