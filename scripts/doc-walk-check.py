#!/usr/bin/env python3
"""Checks the function-by-function walks of docs/architecture.md against the code.

    python3 scripts/doc-walk-check.py                 # exit 1 naming every reference not found
    python3 scripts/doc-walk-check.py ROOT --doc FILE # another tree or document

A walk is a section whose heading ends in "function by function"; it runs to the next heading
of the same level or above. Its steps are the numbered list items in it ("12. ", with their
indented continuation lines). In a step, a code span holding a path that ends in `.rs` names a
file of the repository, and the code spans right after it name items that file defines: the
first one after white space only, each further one after a comma or an arrow (`→`, `->`) and
nothing else:

    14. `stack/src/engine.rs` `Engine::flush` → `stack/src/tun_link.rs` `TunLink::poll_send`,
        `TunLink::write_one` write the queued packets ...

  * `name`: a function outside any impl or trait block (`fn name`, any visibility, `async`,
    `const`, `unsafe`, `extern`, generic; inline modules included), or a struct, enum, union,
    trait, type alias, const, static or `macro_rules!` macro of that name;
  * `Type::method`: a `fn method` in an `impl` block whose type is `Type`, inherent or a trait
    impl (`impl<T: Bound> Trait for Type<T>`), or in `trait Type { .. }`.

Any other code span (a system call, another crate's method, a message) is prose: it must not
follow such a list directly. The Rust files are read with comments, strings and character
literals left out, and blocks matched by their braces.

Fails (exit 1), naming each problem with its line in the document, when: a file does not
exist; a file does not define an item named; a reference is neither `name` nor
`Type::method`; a step names no item; a walk names none; fewer than --min-walks walks are
found. Otherwise prints one line: "N references in W walks, all found".
"""

import argparse
import importlib.util
import os
import re
import signal
import sys
from collections import defaultdict

# ---------------------------------------------------------------------------------------------
# Rust: the tokens of import-graph.py's lexer (one lexer for both scripts).


def _load_import_graph():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "import-graph.py")
    spec = importlib.util.spec_from_file_location("import_graph", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_import_graph = _load_import_graph()
_IDENT_START = _import_graph._IDENT_START


def lex(src):
    """Tokens of Rust source `src` as (text, line): import-graph.py's tokens without its
    string literals, with `->` and `=>` joined into one token each so that the `>` of an
    arrow does not close an angle bracket. Comments, strings, characters, lifetimes and
    numbers produce nothing, so a brace or a `fn` inside them counts for nothing."""
    toks = []
    for tok in _import_graph.lex(src):
        if tok.text.startswith('"'):
            continue
        if tok.text == ">" and toks and toks[-1][0] in ("-", "="):
            toks[-1] = (toks[-1][0] + ">", toks[-1][1])
            continue
        toks.append((tok.text, tok.line))
    return toks


def _is_ident(text):
    return _IDENT_START.match(text) is not None


# Tokens after which `impl` starts an item (elsewhere it is `impl Trait` in a type).
_ITEM_START = {None, "{", "}", ";", "]", "unsafe", "default"}
# Keywords that declare a named item.
_ITEM_KEYWORDS = {"struct", "enum", "union", "trait", "type", "const", "static"}


class Definitions:
    """What one Rust file defines: free functions and named items, and the methods of each
    impl'd type or trait."""

    def __init__(self, src):
        self.free = set()  # functions outside impl and trait blocks
        self.items = set()  # structs, enums, unions, traits, types, consts, statics, macros
        self.methods = defaultdict(set)  # type or trait name -> its functions
        self._scan(lex(src))

    def has(self, ref):
        """Whether `ref` (`name` or `Type::method`) is defined here."""
        if "::" in ref:
            owner, method = ref.split("::")
            return method in self.methods.get(owner, ())
        return ref in self.free or ref in self.items

    def _scan(self, toks):
        texts = [t for t, _ in toks]
        n = len(texts)
        # What each open brace belongs to: ("impl", type), ("trait", name), ("mod", None) or
        # ("other", None) (function bodies, struct bodies, expressions).
        stack = []
        pending = {}  # index of an item's `{` -> what it opens
        i = 0
        while i < n:
            t = texts[i]
            prev = texts[i - 1] if i else None
            top = stack[-1][0] if stack else "mod"
            if t == "{":
                stack.append(pending.pop(i, ("other", None)))
            elif t == "}":
                if stack:
                    stack.pop()
            elif t == "impl" and prev in _ITEM_START:
                brace, name = _impl_header(texts, i)
                if brace is not None:
                    pending[brace] = ("impl", name)
            elif t == "fn" and i + 1 < n and _is_ident(texts[i + 1]):
                name = texts[i + 1]
                if top == "mod":
                    self.free.add(name)
                elif top in ("impl", "trait") and stack[-1][1]:
                    self.methods[stack[-1][1]].add(name)
            elif t == "mod" and i + 2 < n and _is_ident(texts[i + 1]) and texts[i + 2] == "{":
                pending[i + 2] = ("mod", None)
            elif t == "macro_rules" and i + 2 < n and texts[i + 1] == "!" and _is_ident(texts[i + 2]):
                if top == "mod":
                    self.items.add(texts[i + 2])
            elif t in _ITEM_KEYWORDS and i + 1 < n:
                j = i + 1
                if t == "static" and texts[j] == "mut":
                    j += 1
                name = texts[j] if j < n else ""
                is_name = _is_ident(name) and name not in ("fn", "unsafe", "async", "extern", "_")
                if t == "trait" and is_name:
                    brace = _next_brace(texts, j + 1)
                    if brace is not None:
                        pending[brace] = ("trait", name)
                if is_name and top == "mod" and prev not in ("impl", "dyn", "&", "*"):
                    self.items.add(name)
            i += 1


def _skip_angles(texts, i):
    """Index after the `<...>` that starts at texts[i]."""
    depth = 0
    while i < len(texts):
        if texts[i] == "<":
            depth += 1
        elif texts[i] == ">":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def _next_brace(texts, i):
    """Index of the `{` that opens the item whose header continues at texts[i], or None if
    the header ends with `;` first."""
    while i < len(texts):
        if texts[i] == "{":
            return i
        if texts[i] == ";":
            return None
        i += 1
    return None


def _impl_header(texts, i):
    """For the `impl` at texts[i]: (index of its `{` or None, the name of the type it is for).
    `impl<T: X> Trait for a::Type<T> where .. {` gives `Type`."""
    j = i + 1
    if j < len(texts) and texts[j] == "<":
        j = _skip_angles(texts, j)
    header = []
    depth = 0
    while j < len(texts):
        t = texts[j]
        if depth == 0 and t in ("{", ";"):
            break
        if t in ("<", "(", "["):
            depth += 1
        elif t in (">", ")", "]"):
            depth -= 1
        header.append((t, depth))
        j += 1
    brace = j if j < len(texts) and texts[j] == "{" else None
    # The type: after a `for` at depth 0 if there is one, up to a `where` at depth 0.
    for k, (t, d) in enumerate(header):
        if t == "where" and d == 0:
            header = header[:k]
            break
    for k, (t, d) in enumerate(header):
        if t == "for" and d == 0:
            header = header[k + 1 :]
            break
    name = None
    for t, d in header:
        if t == "<" and d == 1:
            break
        if d == 0 and _is_ident(t) and t not in ("dyn", "mut", "const"):
            name = t
    return brace, name


# ---------------------------------------------------------------------------------------------
# The document: walks, steps, references.

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_WALK = re.compile(r"function by function\s*$", re.IGNORECASE)
_STEP = re.compile(r"^\d+[.)]\s")
_SPAN = re.compile(r"`([^`]+)`")
_FILE = re.compile(r"^[\w.-]+(/[\w.-]+)*\.rs$")
_ITEM = re.compile(r"^[A-Za-z_]\w*(::[A-Za-z_]\w*)*$")
_JOIN = re.compile(r"^\s*(,|→|->)\s*$")


class Walk:
    def __init__(self, title, line):
        self.title = title
        self.line = line
        self.steps = []  # (line of the step, its text with line breaks)


def find_walks(lines):
    """The walk sections of the document `lines`, with their steps."""
    walks = []
    walk, level = None, 0
    step = None
    fenced = False
    for number, text in enumerate(lines, 1):
        if _FENCE.match(text):
            fenced = not fenced
            step = None
            continue
        if fenced:
            continue
        heading = _HEADING.match(text)
        if heading:
            step = None
            depth = len(heading.group(1))
            if walk is not None and depth <= level:
                walk = None
            if _WALK.search(heading.group(2)):
                walk, level = Walk(heading.group(2), number), depth
                walks.append(walk)
            continue
        if walk is None:
            continue
        if _STEP.match(text):
            step = [number, text]
            walk.steps.append(step)
        elif step is not None and (text[:1].isspace() or not text.strip()):
            step[1] += "\n" + text
        else:
            step = None
    return [(w, [(n, t.rstrip()) for n, t in w.steps]) for w in walks]


def references(start, text):
    """The (line, file, item) references in the step `text` that starts at line `start`, and
    the problems of form found on the way as (line, message)."""
    spans = [(m.start(), m.end(), m.group(1)) for m in _SPAN.finditer(text)]
    refs, problems = [], []
    file = None
    expecting = None  # "first" right after a file, "more" after an item
    last_end = 0
    for begin, end, code in spans:
        line = start + text.count("\n", 0, begin)
        between = text[last_end:begin]
        last_end = end
        if _FILE.match(code):
            file, expecting = code, "first"
            continue
        joined = (expecting == "first" and not between.strip()) or (
            expecting == "more" and _JOIN.match(between)
        )
        if not joined:
            file, expecting = None, None
            continue
        if not _ITEM.match(code):
            if expecting == "first":
                problems.append((line, f"`{file}` `{code}`: write `name` or `Type::method` after a file"))
            file, expecting = None, None
            continue
        if code.count("::") > 1:
            problems.append((line, f"`{file}` `{code}`: write `name` or `Type::method`"))
        else:
            refs.append((line, file, code))
        expecting = "more"
    return refs, problems


def check(root, doc, min_walks=3, out=sys.stdout):
    """Checks the walks of `doc` against the files under `root`. Returns the exit code."""
    with open(doc, encoding="utf-8") as f:
        lines = f.read().split("\n")
    shown = os.path.relpath(doc, root) if os.path.abspath(doc).startswith(os.path.abspath(root) + os.sep) else doc
    problems = []
    total = 0
    defs = {}

    def definitions(path):
        if path not in defs:
            full = os.path.join(root, path)
            if os.path.isfile(full):
                with open(full, encoding="utf-8", errors="replace") as f:
                    defs[path] = Definitions(f.read())
            else:
                defs[path] = None
        return defs[path]

    walks = find_walks(lines)
    for walk, steps in walks:
        found = 0
        for start, text in steps:
            refs, form = references(start, text)
            problems.extend(form)
            if not refs and not form:
                problems.append((start, f"step names no `file.rs` `item` ({walk.title})"))
            for line, path, item in refs:
                found += 1
                d = definitions(path)
                if d is None:
                    problems.append((line, f"`{path}` `{item}`: no such file"))
                elif not d.has(item):
                    what = "no `fn` of that name in an impl or trait of that type" if "::" in item else "no free `fn` or item of that name"
                    problems.append((line, f"`{path}` `{item}`: {what}"))
        if found == 0:
            problems.append((walk.line, f"walk \"{walk.title}\" names no `file.rs` `item`"))
        total += found
    if len(walks) < min_walks:
        problems.append((0, f"{len(walks)} walk section(s) (headings ending in \"function by function\"), "
                            f"expected at least {min_walks}"))
    for line, message in sorted(problems):
        print(f"{shown}:{line}: {message}", file=out)
    if problems:
        print(f"{len(problems)} problem(s) in the walks of {shown} ({total} references in {len(walks)} walks)", file=out)
        return 1
    print(f"{total} references in {len(walks)} walks, all found", file=out)
    return 0


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("root", nargs="?", default=os.path.dirname(here),
                    help="the repository (default: this one); file paths in the walks are relative to it")
    ap.add_argument("--doc", default=os.path.join("docs", "architecture.md"),
                    help="the document, relative to ROOT (default: docs/architecture.md)")
    ap.add_argument("--min-walks", type=int, default=3,
                    help="fail if the document has fewer walk sections (default: 3)")
    args = ap.parse_args(argv)
    root = os.path.abspath(args.root)
    return check(root, os.path.join(root, args.doc), args.min_walks)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the output quietly
    sys.exit(main())
