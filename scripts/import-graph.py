#!/usr/bin/env python3
"""The module import graph of every crate of the repository, and a check that it has no circle.

    python3 scripts/import-graph.py            # the graph, one line per file that imports
    python3 scripts/import-graph.py --dot      # the same as graphviz (one cluster per target)
    python3 scripts/import-graph.py --check    # exit 1 naming every import circle

A crate here is one compilation target of a package: its library, each binary, each
integration test, each example (the workspace members, and fuzz/). Its module tree is read
from the root file by following `mod` declarations (`x.rs`, `x/mod.rs`, `#[path]`, inline
`mod x { .. }`), as rustc does. The nodes of the graph are the FILES of that tree; an inline
module belongs to the file that holds it.

An edge A -> B means: code in file A names an item that is defined in file B, through
  * a `use` declaration whose path starts at `crate`, `super`, `self` or a module in scope
    (`use super::engine::{self, Ctx}` names engine.rs twice: the module and `Ctx`);
  * a path in the code itself (`super::flow::FlowKey::new`, `crate::stack::Limits`), or a path
    that starts at a module imported by a `use` or declared by a `mod` (`engine::run(..)`).
A path is followed through modules and re-exports (`pub use x::Y`, globs) to the file that
DEFINES the item it ends at, so `use super::Limits` where the parent re-exports
`limits::Limits` is an edge to limits.rs, not to the parent. Passing through a module on the
way (`crate::session::spec::ChildSpec`) imports only the file at the end.

Rules:
  * A parent declaring its children (`mod tcp;`) is not an import; a parent using a child's
    item (`tcp::handle(..)`, `pub use tcp::Tcp`) is, and so is a child using its parent's.
  * Code under `#[cfg(test)]` (test modules, inline or in files of their own such as
    `tests.rs` or `#[path = "x_tests.rs"]`, and any other item carrying the attribute) is left
    out: a test module may use everything of its parent. Integration tests (tests/*.rs) are
    crates of their own and are checked like any other.
  * Paths into other crates (`std::`, `mirrord_net_protocol::`) are not edges.
  * Not seen: macros used without a path (textual `macro_rules!` scope), items named only
    through a glob import (`use super::*` is one edge to the parent), code that macros
    generate.
An import circle is a strongly connected component of more than one file.
"""

import argparse
import os
import re
import signal
import sys
import tomllib
from collections import defaultdict

# ---------------------------------------------------------------------------------------------
# Lexing: identifiers, `::`, punctuation; comments, strings and character literals dropped.

_IDENT_START = re.compile(r"[A-Za-z_]")
_IDENT = re.compile(r"[A-Za-z0-9_]*")
_RAW_STR = re.compile(r'(?:b|c|br|cr)?r(#*)"')
_PREFIXED_STR = re.compile(r'(?:b|c)"')
_NUMBER = re.compile(r"[0-9][0-9A-Za-z_.]*")


class Tok:
    __slots__ = ("text", "line")

    def __init__(self, text, line):
        self.text = text
        self.line = line

    def __repr__(self):
        return f"Tok({self.text!r}@{self.line})"


def lex(src):
    """Tokens of Rust source `src`: identifiers (raw ones without `r#`), `::`, one-character
    punctuation, `$name`, and string literals as `"` + their text. Comments, characters,
    lifetimes and numbers produce nothing."""
    toks = []
    i, n, line = 0, len(src), 1
    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    line += src[i] == "\n"
                    i += 1
        elif m := _RAW_STR.match(src, i):
            end = src.find('"' + m.group(1), m.end())
            end = n if end < 0 else end + 1 + len(m.group(1))
            toks.append(Tok('"' + src[m.end() : end - 1 - len(m.group(1))], line))
            line += src.count("\n", i, end)
            i = end
        elif c == '"' or _PREFIXED_STR.match(src, i):
            start = i = src.index('"', i) + 1
            first = line
            while i < n and src[i] != '"':
                if src[i] == "\\":
                    i += 1
                line += src[i] == "\n"
                i += 1
            toks.append(Tok('"' + src[start:i], first))
            i += 1
        elif c == "'":
            # 'a' '\n' '\u{..}' are characters; 'a (no closing quote right after) a lifetime.
            if src.startswith("\\", i + 1):
                j = i + 3
                while j < n and src[j] != "'":
                    j += 1
                i = j + 1
            elif i + 2 < n and src[i + 2] == "'":
                i += 3
            else:
                m = _IDENT.match(src, i + 1)
                i = m.end()
        elif src.startswith("r#", i) and i + 2 < n and _IDENT_START.match(src[i + 2]):
            m = _IDENT.match(src, i + 2)
            toks.append(Tok(src[i + 2 : m.end()], line))
            i = m.end()
        elif _IDENT_START.match(c):
            m = _IDENT.match(src, i)
            toks.append(Tok(src[i : m.end()], line))
            i = m.end()
        elif c.isdigit():
            i = _NUMBER.match(src, i).end()
        elif src.startswith("::", i):
            toks.append(Tok("::", line))
            i += 2
        elif c == "$" and i + 1 < n and _IDENT_START.match(src[i + 1]):
            m = _IDENT.match(src, i + 1)
            toks.append(Tok(src[i : m.end()], line))
            i = m.end()
        else:
            toks.append(Tok(c, line))
            i += 1
    return toks


def _is_ident(t):
    return bool(_IDENT_START.match(t)) or t.startswith("$")


def _next_is_name(toks, i):
    """Whether toks[i + 1] names what the keyword toks[i] declares (not a macro's `$name`)."""
    return i + 1 < len(toks) and _IDENT_START.match(toks[i + 1].text) is not None


def _path_starts(toks, i):
    """Whether a path `a::b..` starts at toks[i] (not the middle of one, not a method's
    turbofish `.f::<T>`)."""
    if i + 1 >= len(toks) or toks[i + 1].text != "::":
        return False
    return i == 0 or toks[i - 1].text not in ("::", ".")


# ---------------------------------------------------------------------------------------------
# Use trees.


def parse_use_tree(toks, i):
    """Parses the use tree starting at toks[i] (after `use`, up to the `;`).
    Returns ([(path segments, alias or None or '*')], index after the `;`)."""
    out = []

    def tree(i, prefix):
        if toks[i].text == "::":  # `use ::std::..`: an extern crate
            prefix, i = prefix + ["::"], i + 1
        path = list(prefix)
        while True:
            t = toks[i].text
            if t == "{":
                i += 1
                while toks[i].text != "}":
                    i = tree(i, path)
                    if toks[i].text == ",":
                        i += 1
                return i + 1
            if t == "*":
                out.append((path, "*"))
                return i + 1
            path.append(t)
            i += 1
            if i < len(toks) and toks[i].text == "::":
                i += 1
                continue
            alias = None
            if i < len(toks) and toks[i].text == "as":
                alias, i = toks[i + 1].text, i + 2
            if path[-1] == "self":  # `{self, ..}`: the module itself
                path = path[:-1]
                alias = alias or (path[-1] if path else None)
            out.append((path, alias or path[-1]))
            return i

    while i < len(toks) and toks[i].text != ";":
        i = tree(i, [])
    return out, i + 1


# ---------------------------------------------------------------------------------------------
# Module trees.

ITEM_KEYWORDS = {"fn", "struct", "enum", "trait", "type", "const", "static", "union"}


class Module:
    def __init__(self, name, file, parent, children_dir):
        self.name = name
        self.file = file  # the file that holds it
        self.parent = parent
        self.children_dir = children_dir  # where `mod x;` looks for x.rs / x/mod.rs
        self.children = {}  # name -> Module
        self.items = set()  # names defined here (types, functions, consts, macros ...)
        self.uses = []  # (segments, alias or '*', line)
        self.paths = []  # (segments, line, is_macro) found in the code
        self.aliases = {}  # alias -> segments (from `use`)
        self.globs = []  # segments of `use x::*`

    def path(self):
        names = []
        m = self
        while m.parent is not None:
            names.append(m.name)
            m = m.parent
        return "::".join(reversed(names)) or "crate"


def _skip_item(toks, i):
    """Index after the item starting at toks[i]: its `;`, or the end of its first `{}` block."""
    depth = 0
    while i < len(toks):
        t = toks[i].text
        if t in "([":
            depth += 1
        elif t in ")]":
            depth -= 1
        elif t == "{":
            j, d = i + 1, 1
            while j < len(toks) and d:
                d += {"{": 1, "}": -1}.get(toks[j].text, 0)
                j += 1
            if depth == 0:
                return j
            i = j
            continue
        elif t == ";" and depth == 0:
            return i + 1
        i += 1
    return i


def _attribute(toks, i):
    """If toks[i] starts an attribute `#[..]` / `#![..]`, returns (its tokens, index after)."""
    if toks[i].text != "#":
        return None
    j = i + 1
    if j < len(toks) and toks[j].text == "!":
        j += 1
    if j >= len(toks) or toks[j].text != "[":
        return None
    depth, k = 0, j
    while k < len(toks):
        depth += {"[": 1, "]": -1}.get(toks[k].text, 0)
        k += 1
        if depth == 0:
            break
    return [t.text for t in toks[j + 1 : k - 1]], k


def _is_cfg_test(attr):
    return attr == ["cfg", "(", "test", ")"]


class Crate:
    """One compilation target: its module tree, and the import edges between its files."""

    def __init__(self, package, kind, name, root_file, base_dir):
        self.package = package
        self.kind = kind
        self.name = name
        self.root_file = root_file
        self.base_dir = base_dir  # file names are shown relative to this
        self.files = []
        self.modules = []
        self.macros = {}  # macro name -> file
        self.unresolved = []
        self.root = self._load_file(None, None, root_file)
        self.edges = defaultdict(lambda: defaultdict(list))  # file -> file -> [(line, path)]
        self._resolve_all()

    def label(self):
        return f"{self.package} {self.kind}" + ("" if self.kind == "lib" else f" {self.name}")

    def rel(self, f):
        return os.path.relpath(f, self.base_dir)

    # -- reading the tree

    def _load_file(self, name, parent, path):
        base = os.path.basename(path)
        if parent is None or base == "mod.rs":
            children_dir = os.path.dirname(path)
        else:
            children_dir = os.path.join(os.path.dirname(path), os.path.splitext(base)[0])
        mod = Module(name, path, parent, children_dir)
        self.modules.append(mod)
        self.files.append(path)
        with open(path, encoding="utf-8") as f:
            toks = lex(f.read())
        end = self._read_body(mod, toks, 0, top=True)
        assert end >= len(toks), f"{path}: unbalanced braces"
        return mod

    def _read_body(self, mod, toks, i, top=False):
        """Reads module-level content of `mod` from toks[i] up to its closing `}` (or the end)."""
        depth = 0  # braces inside this module's body (function bodies, impls ...)
        pending_path = None
        while i < len(toks):
            t = toks[i].text
            attr = _attribute(toks, i)
            if attr is not None:
                tokens, j = attr
                if _is_cfg_test(tokens):
                    inner = toks[i + 1].text == "!"
                    if inner and depth == 0:
                        return len(toks) if top else self._skip_to_close(toks, j)
                    while (a := _attribute(toks, j)) is not None:
                        j = a[1]
                    i = _skip_item(toks, j)
                    continue
                if tokens[:2] == ["path", "="]:
                    pending_path = tokens[2] if len(tokens) > 2 else None
                i = j
                continue
            if t == "{":
                depth += 1
            elif t == "}":
                if depth == 0:
                    return i + 1
                depth -= 1
            elif t == "mod" and _next_is_name(toks, i):
                name = toks[i + 1].text
                nxt = toks[i + 2].text if i + 2 < len(toks) else ";"
                if nxt == ";":
                    self._declare_file_module(mod, name, pending_path, toks[i].line)
                    i += 3
                    pending_path = None
                    continue
                if nxt == "{":
                    child = Module(name, mod.file, mod, os.path.join(mod.children_dir, name))
                    self.modules.append(child)
                    if depth == 0:
                        mod.children[name] = child
                    i = self._read_body(child, toks, i + 3)
                    pending_path = None
                    continue
            elif t == "use":
                entries, j = parse_use_tree(toks, i + 1)
                for segs, alias in entries:
                    mod.uses.append((segs, alias, toks[i].line))
                    if alias == "*":
                        mod.globs.append(segs)
                    elif alias is not None and alias != "_":
                        mod.aliases.setdefault(alias, segs)
                i = j
                continue
            elif t == "macro_rules" and i + 2 < len(toks) and toks[i + 1].text == "!":
                self.macros.setdefault(toks[i + 2].text, mod.file)
                if depth == 0:
                    mod.items.add(toks[i + 2].text)
            elif t in ITEM_KEYWORDS and depth == 0 and _next_is_name(toks, i):
                mod.items.add(toks[i + 1].text)
            elif _is_ident(t) and _path_starts(toks, i):
                self._record_path(mod, toks, i)
            if t not in ("pub", "(", ")", "crate", "in", "super", "self"):
                pending_path = None  # `#[path]` holds only for the `mod` it stands before
            i += 1
        return i

    def _skip_to_close(self, toks, i):
        depth = 0
        while i < len(toks):
            t = toks[i].text
            if t == "{":
                depth += 1
            elif t == "}":
                if depth == 0:
                    return i + 1
                depth -= 1
            i += 1
        return i

    def _record_path(self, mod, toks, i):
        segs = [toks[i].text]
        j = i + 1
        while j + 1 < len(toks) and toks[j].text == "::" and _is_ident(toks[j + 1].text):
            segs.append(toks[j + 1].text)
            j += 2
        is_macro = j < len(toks) and toks[j].text == "!"
        mod.paths.append((segs, toks[i].line, is_macro))

    def _declare_file_module(self, mod, name, path_attr, line):
        if path_attr is not None:
            # Relative to the file's directory; inside an inline module, to that module's.
            inline = mod.parent is not None and mod.parent.file == mod.file
            base = mod.children_dir if inline else os.path.dirname(mod.file)
            candidates = [os.path.normpath(os.path.join(base, path_attr.lstrip('"')))]
        else:
            candidates = [
                os.path.join(mod.children_dir, name + ".rs"),
                os.path.join(mod.children_dir, name, "mod.rs"),
            ]
        for c in candidates:
            if os.path.isfile(c):
                mod.children[name] = self._load_file(name, mod, c)
                return
        self.unresolved.append((mod.file, line, f"mod {name}: no file"))

    # -- resolving

    def _resolve_all(self):
        for mod in self.modules:
            for segs, alias, line in mod.uses:
                target = self.resolve(mod, segs, use=True, glob=(alias == "*"))
                text = "use " + "::".join(segs) + ("::*" if alias == "*" else "")
                self._edge(mod, target, line, text)
            for segs, line, is_macro in mod.paths:
                exported_macro = segs[0] in ("crate", "$crate") and segs[-1] in self.macros
                if is_macro and len(segs) >= 2 and exported_macro:
                    target = self.macros[segs[-1]]
                else:
                    target = self.resolve(mod, segs, use=False)
                self._edge(mod, target, line, "::".join(segs))

    def _edge(self, mod, target, line, text):
        if target is None or target == mod.file:
            return
        self.edges[mod.file][target].append((line, text))

    def resolve(self, mod, segs, use, glob=False):
        """The file that defines what path `segs` names from module `mod`, or None (another
        crate, or not a path of this crate)."""
        r = self._walk(mod, segs, set(), use)
        if r is None:
            return None
        kind, value = r
        return value.file if kind == "module" else value

    def _walk(self, mod, segs, seen, use):
        """('module', Module) or ('file', path) or None."""
        if not segs or segs[0] == "::":
            return None
        first = segs[0]
        if first in ("crate", "$crate", "self", "super"):
            cur = {"crate": self.root, "$crate": self.root, "self": mod, "super": mod.parent}[first]
            rest = segs[1:]
            while cur is not None and rest and rest[0] == "super":
                cur, rest = cur.parent, rest[1:]
            if cur is None:
                return None
        else:
            # A name in scope in `mod`: a child module, an item or an imported name (not the
            # parent's names: Rust paths do not see them). Otherwise another crate.
            found = self._lookup(mod, first, seen)
            if found is None or found[0] == "extern":
                return None
            if found[0] == "file":
                return found
            cur, rest = found[1], segs[1:]
        for s in rest:
            found = self._lookup(cur, s, seen)
            if found is None:
                # A name the module does not show (made by a macro): its file.
                return ("file", cur.file)
            if found[0] == "extern":  # an alias of another crate's module or item
                return None
            if found[0] == "file":
                return found
            cur = found[1]
        return ("module", cur)

    def _lookup(self, mod, name, seen):
        """What `name` is in module `mod`: ('module', Module), ('file', path) for an item,
        ('extern', None) for an import from another crate, or None when it is not known."""
        if name in mod.children:
            return ("module", mod.children[name])
        if name in mod.items:
            return ("file", mod.file)
        if name in mod.aliases:
            key = (id(mod), name)
            if key in seen:
                return None
            seen = seen | {key}
            r = self._walk(mod, mod.aliases[name], seen, True)
            return ("extern", None) if r is None else r
        for g in mod.globs:
            key = (id(mod), "*", tuple(g))
            if key in seen:
                continue
            r = self._walk(mod, g, seen | {key}, True)
            if r is not None and r[0] == "module":
                inner = self._lookup(r[1], name, seen | {key})
                if inner is not None:
                    return inner
        return None

    # -- the graph

    def graph(self):
        nodes = list(dict.fromkeys(self.files))
        return nodes, {a: sorted(bs) for a, bs in self.edges.items()}

    def circles(self):
        nodes, adj = self.graph()
        return [c for c in strongly_connected(nodes, adj) if len(c) > 1]


def strongly_connected(nodes, adj):
    """Tarjan's strongly connected components, each sorted, in a stable order."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        # Iterative, so deep graphs do not hit Python's recursion limit.
        work = [(v, iter(adj.get(v, ())))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(adj.get(w, ()))))
                    advanced = True
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return sorted(out)


def a_cycle(comp, adj):
    """One cycle through the first file of strongly connected component `comp`."""
    members = set(comp)
    start = comp[0]
    # Breadth-first from start back to start, inside the component.
    prev = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in adj.get(v, ()):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return list(reversed(path)) + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


# ---------------------------------------------------------------------------------------------
# Packages and their targets.


def package_targets(pkg_dir):
    """[(kind, name, root file)] of the package in pkg_dir, as cargo finds them."""
    with open(os.path.join(pkg_dir, "Cargo.toml"), "rb") as f:
        manifest = tomllib.load(f)
    pkg = manifest.get("package", {})
    name = pkg.get("name", os.path.basename(pkg_dir))
    out = []
    lib = manifest.get("lib", {}).get("path", "src/lib.rs")
    if os.path.isfile(os.path.join(pkg_dir, lib)):
        out.append(("lib", name, lib))
    listed = set()
    kinds = (("bin", "src/bin"), ("test", "tests"), ("example", "examples"), ("bench", "benches"))
    for kind, auto_dir in kinds:
        for t in manifest.get(kind, []):
            if kind == "bin" and t["name"] == name:
                default = "src/main.rs"
            else:
                default = f"{auto_dir}/{t['name']}.rs"
            path = t.get("path") or default
            out.append((kind, t["name"], path))
            listed.add(os.path.normpath(path))
        if pkg.get(f"auto{kind}s", True) is False:
            continue
        candidates = []
        if kind == "bin" and os.path.isfile(os.path.join(pkg_dir, "src/main.rs")):
            candidates.append((name, "src/main.rs"))
        d = os.path.join(pkg_dir, auto_dir)
        if os.path.isdir(d):
            for entry in sorted(os.listdir(d)):
                p = os.path.join(d, entry)
                if entry.endswith(".rs") and os.path.isfile(p):
                    candidates.append((entry[:-3], f"{auto_dir}/{entry}"))
                elif os.path.isfile(os.path.join(p, "main.rs")):
                    candidates.append((entry, f"{auto_dir}/{entry}/main.rs"))
        for tname, path in candidates:
            if os.path.normpath(path) not in listed:
                out.append((kind, tname, path))
                listed.add(os.path.normpath(path))
    return name, out


def workspace_packages(root):
    with open(os.path.join(root, "Cargo.toml"), "rb") as f:
        manifest = tomllib.load(f)
    dirs = [os.path.join(root, m) for m in manifest.get("workspace", {}).get("members", [])]
    if manifest.get("package"):
        dirs.insert(0, root)
    fuzz = os.path.join(root, "fuzz")
    if os.path.isfile(os.path.join(fuzz, "Cargo.toml")) and fuzz not in dirs:
        dirs.append(fuzz)
    return dirs


def load_crates(root):
    crates = []
    for pkg_dir in workspace_packages(root):
        pkg_name, targets = package_targets(pkg_dir)
        for kind, name, path in targets:
            crates.append(Crate(pkg_name, kind, name, os.path.join(pkg_dir, path), pkg_dir))
    return crates


# ---------------------------------------------------------------------------------------------
# Output.


def print_text(crates, out, sites):
    for c in crates:
        nodes, adj = c.graph()
        if len(nodes) < 2:
            continue
        print(f"{c.label()} ({c.rel(c.root_file)}): {len(nodes)} files, "
              f"{sum(len(v) for v in adj.values())} edges", file=out)
        for a in nodes:
            if a not in adj:
                continue
            print(f"  {c.rel(a)} -> {' '.join(c.rel(b) for b in adj[a])}", file=out)
            if sites:
                for b in adj[a]:
                    for line, text in c.edges[a][b]:
                        print(f"      {c.rel(a)}:{line} {text}", file=out)
        print(file=out)


def print_dot(crates, out):
    print("digraph imports {\n  rankdir=LR;\n  node [shape=box, fontsize=10];", file=out)
    for n, c in enumerate(crates):
        nodes, adj = c.graph()
        if len(nodes) < 2:
            continue
        in_circle = {f for comp in c.circles() for f in comp}
        print(f'  subgraph cluster_{n} {{\n    label="{c.label()}";', file=out)
        for f in nodes:
            colour = ', color=red' if f in in_circle else ''
            print(f'    "{n}:{c.rel(f)}" [label="{c.rel(f)}"{colour}];', file=out)
        for a, bs in adj.items():
            for b in bs:
                colour = ' [color=red]' if a in in_circle and b in in_circle else ''
                print(f'    "{n}:{c.rel(a)}" -> "{n}:{c.rel(b)}"{colour};', file=out)
        print("  }", file=out)
    print("}", file=out)


def report_circles(crates, out):
    """Prints every circle with the import sites that make it; returns how many there are."""
    count = 0
    for c in crates:
        nodes, adj = c.graph()
        for comp in c.circles():
            count += 1
            cycle = a_cycle(comp, adj)
            print(f"import circle in {c.label()}: {' -> '.join(c.rel(f) for f in cycle)}", file=out)
            if len(comp) > len(cycle) - 1:
                print(f"  (the circle's files: {', '.join(c.rel(f) for f in comp)})", file=out)
            members = set(comp)
            for a in comp:
                for b in adj.get(a, ()):
                    if b in members:
                        line, text = c.edges[a][b][0]
                        print(f"  {c.rel(a)}:{line}: {text}  (-> {c.rel(b)})", file=out)
    return count


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("root", nargs="?", default=os.path.dirname(here),
                    help="the workspace (default: this repository)")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if a crate has an import circle, naming each")
    ap.add_argument("--dot", action="store_true", help="print the graph as graphviz")
    ap.add_argument("--sites", action="store_true", help="with the graph, the line of each import")
    ap.add_argument("--crate", action="append", default=[],
                    help="only the targets of this package (repeatable)")
    args = ap.parse_args(argv)

    crates = load_crates(os.path.abspath(args.root))
    if args.crate:
        crates = [c for c in crates if c.package in args.crate]
    for c in crates:
        for f, line, what in c.unresolved:
            print(f"warning: {os.path.relpath(f, args.root)}:{line}: {what}", file=sys.stderr)
    if args.check:
        n = report_circles(crates, sys.stdout)
        if n:
            print(f"{n} import circle(s): the files of a crate import one way "
                  f"(docs/architecture.md, Module structure)", file=sys.stdout)
            return 1
        print(f"no import circle in {len(crates)} crates")
        return 0
    if args.dot:
        print_dot(crates, sys.stdout)
    else:
        print_text(crates, sys.stdout, args.sites)
        n = report_circles(crates, sys.stdout)
        print(f"{n} import circle(s)")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the output quietly
    sys.exit(main())
