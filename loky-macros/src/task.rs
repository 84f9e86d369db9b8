//! `#[loky::task]`: parse the function, validate that it can run in another
//! process, and expand it into a unit struct registered under a stable id.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, Pat, ReturnType, Type, parse2};

/// What the attribute's arguments say.
struct TaskAttr {
    id: Option<LitStr>,
}

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let attr = parse_attr(attr)?;
    let function: ItemFn = parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            "#[loky::task] goes on a free function, for example `fn square(x: u64) -> u64`",
        )
    })?;
    let args = validate(&function)?;
    Ok(generate(&attr, &function, &args))
}

fn parse_attr(attr: TokenStream) -> syn::Result<TaskAttr> {
    let mut id = None;
    if attr.is_empty() {
        return Ok(TaskAttr { id });
    }
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("id") {
            let value: LitStr = meta.value()?.parse()?;
            if value.value().is_empty() {
                return Err(syn::Error::new_spanned(value, "a task id cannot be empty"));
            }
            id = Some(value);
            Ok(())
        } else {
            Err(meta.error("unknown #[loky::task] option; the only one is `id = \"...\"`"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(TaskAttr { id })
}

/// Checks that the function can be called in another process, and returns
/// the types of its arguments.
fn validate(function: &ItemFn) -> syn::Result<Vec<Type>> {
    let sig = &function.sig;
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            asyncness,
            "a loky task cannot be `async`: it runs to completion in a worker process; \
             make it a plain `fn` (and `.await` its future in the caller instead)",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        return Err(syn::Error::new_spanned(
            unsafety,
            "a loky task cannot be `unsafe fn`: workers call it through a safe interface; \
             keep the `unsafe` block inside the body",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(
            abi,
            "a loky task cannot have an `extern` ABI: make it a plain Rust `fn`",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            variadic,
            "a loky task cannot be variadic",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a loky task cannot be generic: workers find it by a fixed id, so its argument \
             and return types must be concrete; write one task per type",
        ));
    }
    let mut types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new_spanned(
                    receiver,
                    "a loky task cannot take `self`: make it a free function and pass \
                     the value as an argument",
                ));
            }
            FnArg::Typed(typed) => {
                check_by_value(&typed.ty, "argument")?;
                if let Pat::Ident(ident) = &*typed.pat
                    && ident.by_ref.is_some()
                {
                    return Err(syn::Error::new_spanned(
                        ident,
                        "a loky task takes its arguments by value: remove `ref`",
                    ));
                }
                types.push((*typed.ty).clone());
            }
        }
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        check_by_value(ty, "return type")?;
    }
    Ok(types)
}

/// Rejects types that cannot cross a process boundary by value.
fn check_by_value(ty: &Type, what: &str) -> syn::Result<()> {
    match ty {
        Type::Reference(reference) => Err(syn::Error::new_spanned(
            reference,
            format!(
                "a loky task's {what} cannot be a reference: values are serialized and sent \
                 to another process; take an owned type instead (for example `String` for \
                 `&str`, `Vec<T>` for `&[T]`)"
            ),
        )),
        Type::ImplTrait(impl_trait) => Err(syn::Error::new_spanned(
            impl_trait,
            format!(
                "a loky task's {what} cannot be `impl Trait`: workers need one concrete \
                 type to deserialize; name the type"
            ),
        )),
        Type::Ptr(pointer) => Err(syn::Error::new_spanned(
            pointer,
            format!(
                "a loky task's {what} cannot be a raw pointer: it means nothing in \
                 another process"
            ),
        )),
        Type::TraitObject(object) => Err(trait_object(object, what)),
        Type::Path(path) => {
            let segments = &path.path.segments;
            let is_anyhow = segments.iter().any(|s| s.ident == "anyhow")
                && segments.last().is_some_and(|s| s.ident == "Error");
            if is_anyhow {
                return Err(trait_object(path, what));
            }
            for segment in segments {
                let syn::PathArguments::AngleBracketed(generics) = &segment.arguments else {
                    continue;
                };
                for arg in &generics.args {
                    if let syn::GenericArgument::Type(inner) = arg {
                        if segment.ident == "Box" && matches!(inner, Type::TraitObject(_)) {
                            return Err(trait_object(path, what));
                        }
                        check_by_value(inner, what)?;
                    }
                }
            }
            Ok(())
        }
        Type::Paren(inner) => check_by_value(&inner.elem, what),
        Type::Group(inner) => check_by_value(&inner.elem, what),
        Type::Tuple(tuple) => tuple.elems.iter().try_for_each(|t| check_by_value(t, what)),
        Type::Array(array) => check_by_value(&array.elem, what),
        Type::Slice(slice) => check_by_value(&slice.elem, what),
        _ => Ok(()),
    }
}

/// A trait object (`Box<dyn Error>`, `anyhow::Error`) in a task's
/// signature: it has no serde form, so say what to use instead.
fn trait_object(tokens: impl quote::ToTokens, what: &str) -> syn::Error {
    syn::Error::new_spanned(
        tokens,
        format!(
            "a loky task's {what} cannot hold a trait object such as `Box<dyn Error>` or \
             `anyhow::Error`: it cannot be serialized to cross processes; return \
             `Result<T, String>` (with `.map_err(|e| e.to_string())`) or an error type \
             that derives `serde::Serialize` and `serde::Deserialize`"
        ),
    )
}

fn generate(attr: &TaskAttr, function: &ItemFn, arg_types: &[Type]) -> TokenStream {
    let vis = &function.vis;
    let name = &function.sig.ident;
    let docs: Vec<_> = function
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .collect();
    let mut inner = function.clone();
    inner.vis = syn::Visibility::Inherited;
    inner.attrs.retain(|a| !a.path().is_ident("doc"));

    let output = match &function.sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => quote_spanned!(ty.span()=> #ty),
    };
    let arg_names: Vec<_> = (0..arg_types.len())
        .map(|i| format_ident!("__loky_arg{}", i))
        .collect();
    let (args_type, args_pattern) = match arg_types {
        [single] => (quote!(#single), quote!(#(#arg_names)*)),
        // The tuple is spanned at the parameter list, where the `Message`
        // bound on `Task::Args` reports a parameter that cannot cross.
        _ => (
            quote_spanned!(function.sig.paren_token.span.join()=> (#(#arg_types,)*)),
            quote!((#(#arg_names,)*)),
        ),
    };
    let id = match &attr.id {
        Some(id) => quote!(#id),
        None => {
            let name = LitStr::new(&name.to_string(), Span::call_site());
            quote!(::core::concat!(::core::module_path!(), "::", #name))
        }
    };

    quote! {
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        #vis struct #name;

        impl #name {
            /// Runs the task in this process.
            #[allow(dead_code)]
            #vis fn call(self, args: #args_type) -> #output {
                #inner
                let #args_pattern = args;
                #name(#(#arg_names),*)
            }

            /// Runs the task on the default reusable executor
            /// (`loky::get_reusable_executor`) and returns its future.
            #[allow(dead_code)]
            #vis fn spawn(self, args: #args_type) -> ::loky::Future<#output> {
                ::loky::__private::spawn(self, args)
            }
        }

        impl ::loky::Task for #name {
            type Args = #args_type;
            type Output = #output;
            const ID: &'static str = #id;

            fn call(self, args: Self::Args) -> Self::Output {
                #name::call(self, args)
            }
        }

        ::loky::__private::inventory::submit! {
            ::loky::__private::TaskEntry::new(
                <#name as ::loky::Task>::ID,
                ::core::concat!(::core::file!(), ":", ::core::line!()),
                ::loky::__private::invoke::<#name>,
                ::loky::__private::invoke_into::<#name>,
            )
        }
    }
}
