"""Tests of scripts/import-graph.py on small crates written to a temporary directory.

    python3 -m unittest discover -s scripts/tests
"""

import importlib.util
import io
import os
import tempfile
import textwrap
import unittest
from contextlib import redirect_stdout

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("import_graph", os.path.join(_HERE, "..", "import-graph.py"))
ig = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ig)


class Workspace:
    """A workspace with one package `demo` whose files are `files` (path -> source)."""

    def __init__(self, files, extra_manifest=""):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name
        self.write("Cargo.toml", '[workspace]\nmembers = ["demo"]\n')
        self.write("demo/Cargo.toml", '[package]\nname = "demo"\nversion = "0.1.0"\n' + extra_manifest)
        for path, src in files.items():
            self.write(os.path.join("demo", path), textwrap.dedent(src))

    def write(self, path, text):
        full = os.path.join(self.root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)

    def crate(self, kind="lib"):
        (c,) = [c for c in ig.load_crates(self.root) if c.kind == kind]
        return c

    def edges(self, kind="lib"):
        """{(from, to)} as paths relative to the package."""
        c = self.crate(kind)
        _, adj = c.graph()
        return {(c.rel(a), c.rel(b)) for a, bs in adj.items() for b in bs}

    def check(self):
        out = io.StringIO()
        with redirect_stdout(out):
            rc = ig.main([self.root, "--check"])
        return rc, out.getvalue()

    def close(self):
        self.tmp.cleanup()


class Case(unittest.TestCase):
    def ws(self, files, **kw):
        w = Workspace(files, **kw)
        self.addCleanup(w.close)
        return w


class LexTest(Case):
    def texts(self, src):
        return [t.text for t in ig.lex(src)]

    def test_comments_strings_and_characters_leave_no_path(self):
        src = r'''
            // use crate::a;
            /* use crate::b; /* nested */ use crate::c; */
            let s = "use crate::d; \" crate::e";
            let r = r#"crate::f "quoted" "#;
            let c = '"'; let q = '\''; let l: &'static str = "";
            fn f<'a>(x: &'a u8) {}
        '''
        texts = self.texts(src)
        self.assertNotIn("crate", texts)
        self.assertNotIn("static", texts)  # a lifetime, not the keyword
        self.assertIn("f", texts)

    def test_line_numbers_count_lines_inside_comments_and_strings(self):
        toks = ig.lex('/* a\nb */\n"x\ny"\nz')
        self.assertEqual([(t.text, t.line) for t in toks if t.text == "z"], [("z", 5)])

    def test_raw_identifier(self):
        self.assertEqual(self.texts("r#type::x"), ["type", "::", "x"])


class UseTreeTest(Case):
    def parse(self, src):
        toks = ig.lex(src)
        entries, _ = ig.parse_use_tree(toks, 1)
        return entries

    def test_nested_groups_self_alias_and_glob(self):
        got = self.parse("use super::engine::{self, Ctx as C, inner::{A, B}, glob::*};")
        self.assertEqual(got, [
            (["super", "engine"], "engine"),
            (["super", "engine", "Ctx"], "C"),
            (["super", "engine", "inner", "A"], "A"),
            (["super", "engine", "inner", "B"], "B"),
            (["super", "engine", "glob"], "*"),
        ])


class ResolveTest(Case):
    def test_parent_declaring_children_is_no_edge(self):
        w = self.ws({"src/lib.rs": "mod a;\nmod b;\n", "src/a.rs": "pub fn f() {}\n", "src/b.rs": "pub fn g() {}\n"})
        self.assertEqual(w.edges(), set())

    def test_child_using_parent_item_is_an_edge(self):
        w = self.ws({
            "src/lib.rs": "mod net;\n",
            "src/net/mod.rs": "mod tcp;\npub struct Config;\n",
            "src/net/tcp.rs": "use super::Config;\n",
        })
        self.assertEqual(w.edges(), {("src/net/tcp.rs", "src/net/mod.rs")})

    def test_reexport_is_followed_to_the_defining_file(self):
        w = self.ws({
            "src/lib.rs": "mod stack;\n",
            "src/stack/mod.rs": "mod limits;\nmod tcp;\npub use limits::Limits;\n",
            "src/stack/limits.rs": "pub struct Limits;\n",
            "src/stack/tcp.rs": "use super::Limits;\nuse crate::stack::Limits as L2;\n",
        })
        # The parent's `pub use` is its own edge to limits.rs; tcp.rs names limits.rs, not mod.rs.
        self.assertEqual(w.edges(), {
            ("src/stack/mod.rs", "src/stack/limits.rs"),
            ("src/stack/tcp.rs", "src/stack/limits.rs"),
        })

    def test_paths_in_code_and_through_module_aliases(self):
        w = self.ws({
            "src/lib.rs": "mod a;\nmod b;\nmod c;\nmod d;\n",
            "src/a.rs": "fn f() { super::b::Thing::new(); }\n",
            "src/b.rs": "pub struct Thing;\n",
            "src/c.rs": "use crate::d;\nfn f() { d::run(); }\n",
            "src/d.rs": "pub fn run() {}\n",
        })
        self.assertEqual(w.edges(), {("src/a.rs", "src/b.rs"), ("src/c.rs", "src/d.rs")})

    def test_nested_non_mod_rs_directory_and_path_attribute(self):
        w = self.ws({
            "src/lib.rs": "mod outer;\n",
            "src/outer.rs": "mod inner;\n#[path = \"other_name.rs\"]\nmod renamed;\nuse inner::X;\nuse renamed::Y;\n",
            "src/outer/inner.rs": "pub struct X;\n",
            "src/other_name.rs": "pub struct Y;\n",
        })
        self.assertEqual(w.edges(), {("src/outer.rs", "src/outer/inner.rs"), ("src/outer.rs", "src/other_name.rs")})

    def test_cfg_test_code_is_left_out(self):
        w = self.ws({
            "src/lib.rs": "mod a;\nmod b;\n",
            "src/a.rs": "pub fn f() {}\n#[cfg(test)]\nmod tests { use crate::b::g; }\n#[cfg(test)]\nmod more;\n",
            "src/a/more.rs": "use crate::b::g;\n",
            "src/b.rs": "pub fn g() {}\n#[cfg(test)]\nuse crate::a::f;\nfn h() {}\n",
        })
        self.assertEqual(w.edges(), set())
        self.assertNotIn("src/a/more.rs", [w.crate().rel(f) for f in w.crate().files])

    def test_inline_module_super_is_the_file_module(self):
        w = self.ws({
            "src/lib.rs": "mod a;\nmod b;\n",
            "src/a.rs": "mod inner { use super::super::b::G; }\n",
            "src/b.rs": "pub const G: u8 = 1;\n",
        })
        self.assertEqual(w.edges(), {("src/a.rs", "src/b.rs")})

    def test_other_crates_are_not_edges(self):
        w = self.ws({"src/lib.rs": "use std::io;\nuse ::serde::Serialize;\nfn f() { tokio::spawn(); }\n"})
        self.assertEqual(w.edges(), set())

    def test_alias_of_another_crate_is_no_edge(self):
        w = self.ws({
            "src/lib.rs": "mod http;\n",
            "src/http/mod.rs": "mod h1;\npub use other_crate::filter as filter;\n",
            "src/http/h1.rs": "use super::filter::Head;\n",
        })
        self.assertEqual(w.edges(), set())

    def test_glob_reexport_is_followed(self):
        w = self.ws({
            "src/lib.rs": "mod a;\nmod b;\npub use a::*;\n",
            "src/a.rs": "pub struct A;\n",
            "src/b.rs": "use crate::A;\n",
        })
        self.assertIn(("src/b.rs", "src/a.rs"), w.edges())
        self.assertNotIn(("src/b.rs", "src/lib.rs"), w.edges())

    def test_binary_target_has_its_own_tree(self):
        w = self.ws({"src/main.rs": "mod cli;\nfn main() { cli::run(); }\n", "src/cli.rs": "pub fn run() {}\n"})
        self.assertEqual(w.edges("bin"), {("src/main.rs", "src/cli.rs")})


class CheckTest(Case):
    def test_circle_fails_the_check_and_names_its_files(self):
        w = self.ws({
            "src/lib.rs": "mod engine;\nmod tcp;\n",
            "src/engine.rs": "use crate::tcp::Tcp;\npub struct Ctx;\n",
            "src/tcp.rs": "use crate::engine::Ctx;\npub struct Tcp;\n",
        })
        rc, out = w.check()
        self.assertEqual(rc, 1)
        self.assertIn("import circle in demo lib: src/engine.rs -> src/tcp.rs -> src/engine.rs", out)
        self.assertIn("src/tcp.rs:1: use crate::engine::Ctx", out)

    def test_parent_child_circle_through_parent_item(self):
        w = self.ws({
            "src/lib.rs": "mod demo;\n",
            "src/demo/mod.rs": "mod pod;\npub const NAME: &str = \"x\";\npub fn main() { pod::run(); }\n",
            "src/demo/pod.rs": "pub fn run() { let _ = super::NAME; }\n",
        })
        rc, out = w.check()
        self.assertEqual(rc, 1)
        self.assertIn("src/demo/mod.rs -> src/demo/pod.rs -> src/demo/mod.rs", out)

    def test_one_way_tree_passes(self):
        w = self.ws({
            "src/lib.rs": "mod ctx;\nmod engine;\nmod tcp;\n",
            "src/ctx.rs": "pub struct Ctx;\n",
            "src/engine.rs": "use crate::ctx::Ctx;\nuse crate::tcp::Tcp;\n",
            "src/tcp.rs": "use crate::ctx::Ctx;\npub struct Tcp;\n",
        })
        rc, out = w.check()
        self.assertEqual(rc, 0, out)

    def test_three_file_component_is_one_circle(self):
        nodes = ["a", "b", "c", "d"]
        adj = {"a": ["b"], "b": ["c"], "c": ["a", "d"]}
        self.assertEqual([c for c in ig.strongly_connected(nodes, adj) if len(c) > 1], [["a", "b", "c"]])
        self.assertEqual(ig.a_cycle(["a", "b", "c"], adj), ["a", "b", "c", "a"])


if __name__ == "__main__":
    unittest.main()
