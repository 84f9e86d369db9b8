//! Procedural macros of loky. Use them through `loky`: `#[loky::task]` and
//! `#[loky::main]`; the generated code names only `::loky::__private` items.

use proc_macro::TokenStream;

mod main_fn;
mod task;

/// Registers a free function as a task that workers can run; see `loky::task`.
///
/// The function becomes a unit struct of the same name, so that name is a
/// pattern wherever it is in scope: beside a task named `count`,
/// `let count = 3;` does not compile (E0308, "`count` is interpreted as a
/// unit struct"). Rename the binding or the task, or put tasks in a module
/// of their own; `loky::task` shows both.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    task::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Wraps `main` so that a worker process never runs it; see `loky::main`.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    main_fn::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
