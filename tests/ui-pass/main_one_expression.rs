//! `#[loky::main]` adds no warning to the user's code, even around a
//! `main` whose body is a single expression.
#![deny(warnings)]

#[loky::main]
fn main() {
    println!("a one-expression main")
}
