//! `#[loky::main]`: become a worker first thing in `main` when this process
//! was started as one, before any of the user's code runs.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{ItemFn, parse2};

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(
            attr,
            "#[loky::main] takes no arguments; configure executors with loky::Config",
        ));
    }
    let mut function: ItemFn = parse2(item)
        .map_err(|e| syn::Error::new(e.span(), "#[loky::main] goes on the program's `fn main`"))?;
    if function.sig.ident != "main" {
        return Err(syn::Error::new_spanned(
            &function.sig.ident,
            "#[loky::main] goes on `fn main`; tasks take #[loky::task]",
        ));
    }
    // The body's own statements follow the entry call in the same block:
    // wrapping the body as a block of its own would make a one-expression
    // `main` warn about unused braces in the user's code.
    let statements = &function.block.stmts;
    function.block = syn::parse_quote!({
        ::loky::__private::main_entry();
        #(#statements)*
    });
    Ok(quote!(#function))
}
