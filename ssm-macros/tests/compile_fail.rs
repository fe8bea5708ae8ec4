//! Bad declarations fail at compile time with a message at the offending span that says
//! how to fix it. The expected messages are pinned in `tests/ui/*.stderr`.

#[test]
fn bad_declarations_fail_with_pinned_messages() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
