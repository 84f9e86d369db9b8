//! `#[loky::main]` adds no warning to the user's code, even around a
//! `main` whose body is a single expression.
#![deny(warnings)]

#[loky::main]
fn main() {
    // Silent: trybuild shows what a passing case prints.
    assert!(std::env::args().next().is_some())
}
