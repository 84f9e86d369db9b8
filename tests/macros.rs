//! Misuse of `#[loky::task]` and `#[loky::main]` is a compile error with a
//! span and a message that says what to do: one trybuild case per misuse.

#[test]
fn misuse_is_a_spanned_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}

#[test]
fn correct_use_compiles_without_warnings() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui-pass/*.rs");
}
