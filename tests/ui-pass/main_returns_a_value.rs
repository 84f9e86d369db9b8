//! `#[loky::main]` adds no warning around a `main` that returns a value
//! from a single expression.
#![deny(warnings)]

#[loky::main]
fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
