"""Tests of scripts/doc-walk-check.py on small trees written to a temporary directory.

    python3 -m unittest discover -s scripts/tests
"""

import importlib.util
import io
import os
import tempfile
import textwrap
import unittest

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("doc_walk_check", os.path.join(_HERE, "..", "doc-walk-check.py"))
dw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dw)

# One file with an item of each kind the check knows.
LIB = """
    pub(crate) async fn fetch<T: Clone + Send>(x: T) -> T { x }
    const fn size() -> usize { 4 }
    pub unsafe extern "C" fn raw() {}
    pub struct Engine<L> { link: L }
    impl<L: Link> Engine<L> {
        pub fn poll_run(&mut self) {}
        fn round(&mut self) -> bool { true }
    }
    struct Other;
    impl Other {
        fn flush(&self) {}
    }
    pub trait Link {
        fn mtu(&self) -> usize { 0 }
    }
    impl Link for Other {
        fn mtu(&self) -> usize { 1 }
    }
    macro_rules! ctx { () => {} }
    mod inner {
        pub fn nested() {}
    }
"""


class Tree:
    """A repository with `files` (path -> source) and docs/architecture.md."""

    def __init__(self, doc, files):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name
        for path, src in files.items():
            self.write(path, textwrap.dedent(src))
        self.write("docs/architecture.md", textwrap.dedent(doc))

    def write(self, path, text):
        full = os.path.join(self.root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)

    def check(self, min_walks=1):
        out = io.StringIO()
        rc = dw.check(self.root, os.path.join(self.root, "docs", "architecture.md"), min_walks, out)
        return rc, out.getvalue()

    def close(self):
        self.tmp.cleanup()


def walk(*steps, title="A packet, function by function"):
    """A document with one walk whose steps are `steps`."""
    body = "\n".join(f"{n}. {step}" for n, step in enumerate(steps, 1))
    return f"# Doc\n\nProse with `x.rs` `ignored`.\n\n## {title}\n\n{body}\n\n## Next\n\n1. `a/src/lib.rs` `gone` (not a walk)\n"


class Case(unittest.TestCase):
    def run_check(self, doc, files=None, min_walks=1):
        t = Tree(doc, {"a/src/lib.rs": LIB} if files is None else files)
        self.addCleanup(t.close)
        return t.check(min_walks)


class ReferenceTest(Case):
    def test_present_function_passes_with_a_summary(self):
        rc, out = self.run_check(walk("`a/src/lib.rs` `fetch` runs first."))
        self.assertEqual(rc, 0, out)
        self.assertEqual(out.strip(), "1 references in 1 walks, all found")

    def test_missing_function_fails_naming_its_line(self):
        rc, out = self.run_check(walk("`a/src/lib.rs` `fetch`, then", "`a/src/lib.rs` `fetch_all` runs."))
        self.assertEqual(rc, 1)
        self.assertIn("docs/architecture.md:8: `a/src/lib.rs` `fetch_all`: no free `fn`", out)
        self.assertNotIn("`fetch`:", out)

    def test_method_of_the_right_impl_only(self):
        rc, out = self.run_check(walk("`a/src/lib.rs` `Engine::poll_run` → `Engine::round`, `Other::flush`."))
        self.assertEqual(rc, 0, out)
        rc, out = self.run_check(walk("`a/src/lib.rs` `Engine::flush` is in another impl."))
        self.assertEqual(rc, 1)
        self.assertIn("`Engine::flush`: no `fn` of that name in an impl or trait of that type", out)

    def test_trait_impl_and_trait_methods(self):
        rc, out = self.run_check(walk("`a/src/lib.rs` `Other::mtu`, `Link::mtu` answer."))
        self.assertEqual(rc, 0, out)
        rc, out = self.run_check(walk("`a/src/lib.rs` `Link::flush` is no trait method."))
        self.assertEqual(rc, 1)

    def test_a_method_is_not_a_free_function(self):
        rc, out = self.run_check(walk("`a/src/lib.rs` `poll_run` alone."))
        self.assertEqual(rc, 1)
        self.assertIn("`poll_run`: no free `fn` or item", out)

    def test_generic_async_const_unsafe_and_restricted_visibility(self):
        rc, out = self.run_check(walk("`a/src/lib.rs` `fetch`, `size`, `raw`, `nested`."))
        self.assertEqual(rc, 0, out)
        self.assertIn("4 references", out)

    def test_types_and_macros_are_items(self):
        rc, out = self.run_check(walk("`a/src/lib.rs` `Engine`, `Link`, `ctx`."))
        self.assertEqual(rc, 0, out)

    def test_missing_file_fails(self):
        rc, out = self.run_check(walk("`a/src/gone.rs` `fetch` runs."))
        self.assertEqual(rc, 1)
        self.assertIn("`a/src/gone.rs` `fetch`: no such file", out)

    def test_module_paths_are_not_references(self):
        # Two segments read as `Type::method`, and a module is no type.
        rc, out = self.run_check(walk("`a/src/lib.rs` `inner::nested` runs."))
        self.assertEqual(rc, 1)
        self.assertIn("`inner::nested`: no `fn` of that name in an impl", out)
        rc, out = self.run_check(walk("`a/src/lib.rs` `crate::inner::nested` runs."))
        self.assertEqual(rc, 1)
        self.assertIn("`crate::inner::nested`: write `name` or `Type::method`", out)

    def test_other_code_spans_are_prose(self):
        # `read(2)` after words, and `poll_egress` after prose text: not references.
        rc, out = self.run_check(walk("`a/src/lib.rs` `fetch` calls the kernel's `read(2)` and smoltcp's `poll_egress`."))
        self.assertEqual(rc, 0, out)
        self.assertIn("1 references", out)

    def test_arrows_and_commas_chain_and_a_new_file_resets(self):
        files = {"a/src/lib.rs": LIB, "b/src/x.rs": "pub fn other() {}\n"}
        rc, out = self.run_check(walk("`a/src/lib.rs` `fetch` → `size`, `raw` -> `b/src/x.rs` `other`."), files)
        self.assertEqual(rc, 0, out)
        self.assertIn("4 references", out)
        rc, out = self.run_check(walk("`a/src/lib.rs` `fetch` → `b/src/x.rs` `fetch`."), files)
        self.assertEqual(rc, 1)
        self.assertIn("`b/src/x.rs` `fetch`: no free `fn`", out)

    def test_continuation_lines_belong_to_the_step(self):
        doc = "## Walk, function by function\n\n1. First `a/src/lib.rs`\n   `Engine::poll_run` and then\n   `a/src/lib.rs` `missing`.\n"
        rc, out = self.run_check(doc)
        self.assertEqual(rc, 1)
        self.assertIn("docs/architecture.md:5: `a/src/lib.rs` `missing`", out)
        self.assertIn("2 references", out)


class SectionTest(Case):
    def test_empty_walk_section_fails(self):
        doc = "## A walk, function by function\n\nOnly prose, `a/src/lib.rs`.\n\n## Next\n"
        rc, out = self.run_check(doc)
        self.assertEqual(rc, 1)
        self.assertIn('walk "A walk, function by function" names no', out)

    def test_step_without_reference_fails(self):
        rc, out = self.run_check(walk("`a/src/lib.rs` `fetch`.", "The kernel answers."))
        self.assertEqual(rc, 1)
        self.assertIn("docs/architecture.md:8: step names no", out)

    def test_too_few_walks_fail(self):
        rc, out = self.run_check(walk("`a/src/lib.rs` `fetch`."), min_walks=2)
        self.assertEqual(rc, 1)
        self.assertIn("1 walk section(s)", out)

    def test_a_walk_ends_at_a_heading_of_its_level(self):
        # The `gone` step under "## Next" is not checked; a deeper heading stays in the walk.
        doc = walk("`a/src/lib.rs` `fetch`.") + "\n## Last, function by function\n\n### Sub\n\n1. `a/src/lib.rs` `nowhere`.\n"
        rc, out = self.run_check(doc)
        self.assertEqual(rc, 1)
        self.assertIn("`nowhere`", out)
        self.assertNotIn("`gone`", out)

    def test_headings_in_code_fences_are_not_walks(self):
        doc = walk("`a/src/lib.rs` `fetch`.") + "\n```\n# Fenced, function by function\n1. `a/src/lib.rs` `nowhere`\n```\n"
        rc, out = self.run_check(doc)
        self.assertEqual(rc, 0, out)


class RustScanTest(unittest.TestCase):
    def defs(self, src):
        return dw.Definitions(textwrap.dedent(src))

    def test_comments_strings_and_characters_hide_functions_and_braces(self):
        d = self.defs('''
            // fn ghost() {}
            /* fn ghost2() { /* nested */ } */
            const S: &str = "fn ghost3() { }";
            const R: &str = r#"} fn ghost4() "#;
            const C: char = '{';
            impl Engine {
                fn label<'a>(x: &'a str) -> &'a str { "}" }
                fn after(&self) {}
            }
            fn free() {}
        ''')
        self.assertFalse(d.has("ghost") or d.has("ghost2") or d.has("ghost3") or d.has("ghost4"))
        self.assertTrue(d.has("Engine::after"))
        self.assertTrue(d.has("free"))
        self.assertFalse(d.has("after"))

    def test_impl_headers(self):
        d = self.defs('''
            impl<T: Transport> Filesystem for RemoteFs<T> where T: Send { fn lookup(&self) {} }
            impl phy::TxToken for TxToken<'_> { fn consume(self) {} }
            unsafe impl Send for Pool {}
            impl<F: Fn() -> u8> Wrapper<F> { fn call(&self) {} }
            impl From<FsResponse> for Answer { fn from(r: FsResponse) -> Self { todo!() } }
        ''')
        self.assertTrue(d.has("RemoteFs::lookup"))
        self.assertFalse(d.has("Filesystem::lookup"))
        self.assertTrue(d.has("TxToken::consume"))
        self.assertTrue(d.has("Wrapper::call"))
        self.assertTrue(d.has("Answer::from"))
        self.assertFalse(d.has("From::from"))

    def test_impl_trait_in_a_signature_is_not_a_block(self):
        d = self.defs('''
            struct TcpEndpoint;
            impl TcpEndpoint {
                pub fn with_set<R>(&mut self, f: impl FnOnce(&mut u8) -> R) -> R { f(&mut 0) }
                fn later(&self) -> impl Iterator<Item = u8> { std::iter::empty() }
                fn last(&self) {}
            }
            fn make() -> impl Iterator<Item = u8> {
                fn step() -> u8 { 0 }
                std::iter::once(step())
            }
        ''')
        self.assertTrue(d.has("TcpEndpoint::with_set"))
        self.assertTrue(d.has("TcpEndpoint::later"))
        self.assertTrue(d.has("TcpEndpoint::last"))
        self.assertTrue(d.has("make"))
        self.assertFalse(d.has("Iterator::step"))

    def test_functions_inside_function_bodies_are_not_items(self):
        d = self.defs("fn outer() { fn helper() {} }\n")
        self.assertTrue(d.has("outer"))
        self.assertFalse(d.has("helper"))


if __name__ == "__main__":
    unittest.main()
