//! The attribute macros of [cachenode](https://docs.rs/cachenode):
//! `#[cached(...)]` and `#[cached_for(...)]` over async functions and
//! methods. Use them through the `cachenode` crate, which re-exports them
//! and documents their options.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Expr, ExprArray, ExprLit, FnArg, ImplItemFn, Lit, LitStr, Meta, Pat, ReturnType, Token, Type,
};

/// Caches an async function's value; see `cachenode`'s documentation.
///
/// A function whose return type is a `Result` caches only its `Ok` values:
/// its errors are returned and never cached. That is decided from the type,
/// not its spelling: an alias (`type AppResult<T> = Result<T, AppError>`),
/// `std::result::Result`, `io::Result` and `anyhow::Result` are all
/// `Result`s, and a type of one's own that is only *named* `Result` is a
/// plain value. Any other return type is cached as it is.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(args, item, Flavor::Cached)
}

/// Caches an async function's value for a time given in units
/// (`weeks`, `days`, `hours`, `minutes`, `seconds`); see `cachenode`'s
/// documentation.
///
/// A `Result` return type (an alias included) caches only `Ok` values, as
/// with [`macro@cached`].
#[proc_macro_attribute]
pub fn cached_for(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(args, item, Flavor::CachedFor)
}

#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    Cached,
    CachedFor,
}

fn expand(args: TokenStream, item: TokenStream, flavor: Flavor) -> TokenStream {
    let result = Punctuated::<Meta, Token![,]>::parse_terminated
        .parse(args)
        .and_then(|metas| Options::parse(metas, flavor))
        .and_then(|opts| {
            let func: ImplItemFn = syn::parse(item)?;
            generate(opts, func)
        });
    match result {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

#[derive(Default)]
struct Options {
    expire_in: Option<Expr>,
    seconds: u64,
    has_units: bool,
    unless: Option<Expr>,
    local_ram_cache_only: bool,
    shared_redis_cache_only: bool,
    prefix: Option<Expr>,
    with_func_args: Option<bool>,
    full_args: bool,
    ignore: Vec<syn::Ident>,
    ignore_self: bool,
    cache_none_values: bool,
    on_cache_computed: Option<Expr>,
    request_path: bool,
    query_string: bool,
    node: Option<Expr>,
    name: Option<LitStr>,
}

impl Options {
    fn parse(metas: Punctuated<Meta, Token![,]>, flavor: Flavor) -> syn::Result<Self> {
        let mut o = Options::default();
        for meta in metas {
            let key = meta
                .path()
                .get_ident()
                .map(ToString::to_string)
                .ok_or_else(|| syn::Error::new(meta.span(), "expected an option name"))?;
            let unit = match key.as_str() {
                "weeks" => Some(7 * 24 * 3600),
                "days" => Some(24 * 3600),
                "hours" => Some(3600),
                "minutes" => Some(60),
                "seconds" => Some(1),
                _ => None,
            };
            if let Some(unit) = unit {
                if flavor == Flavor::Cached {
                    return Err(syn::Error::new(
                        meta.span(),
                        format!("`{key}` belongs to #[cached_for]; #[cached] takes `expire_in = <Duration>`"),
                    ));
                }
                let n = int_value(&meta)?;
                o.seconds = n
                    .checked_mul(unit)
                    .and_then(|s| o.seconds.checked_add(s))
                    .ok_or_else(|| syn::Error::new(meta.span(), "expiry too large"))?;
                o.has_units = true;
                continue;
            }
            match key.as_str() {
                "expire_in" => {
                    if flavor == Flavor::CachedFor {
                        return Err(syn::Error::new(
                            meta.span(),
                            "#[cached_for] takes weeks/days/hours/minutes/seconds; use #[cached(expire_in = ...)]",
                        ));
                    }
                    o.expire_in = Some(expr_value(&meta)?);
                }
                "unless" => o.unless = Some(expr_value(&meta)?),
                "local_ram_cache_only" => o.local_ram_cache_only = bool_value(&meta)?,
                "shared_redis_cache_only" => o.shared_redis_cache_only = bool_value(&meta)?,
                "cache_key_prefix" => o.prefix = Some(expr_value(&meta)?),
                "cache_key_with_func_args" => o.with_func_args = Some(bool_value(&meta)?),
                "cache_key_with_full_args" => o.full_args = bool_value(&meta)?,
                "ignore" | "args_to_ignore" => o.ignore.extend(ident_list(&meta)?),
                "ignore_self" => o.ignore_self = bool_value(&meta)?,
                "cache_none_values" => o.cache_none_values = bool_value(&meta)?,
                "on_cache_computed" => o.on_cache_computed = Some(expr_value(&meta)?),
                "cache_key_with_request_path" => o.request_path = bool_value(&meta)?,
                "cache_key_with_query_string" => o.query_string = bool_value(&meta)?,
                "node" => o.node = Some(expr_value(&meta)?),
                "name" => match expr_value(&meta)? {
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(s), ..
                    }) => o.name = Some(s),
                    other => {
                        return Err(syn::Error::new(
                            other.span(),
                            "`name` takes a string literal",
                        ))
                    }
                },
                _ => {
                    return Err(syn::Error::new(
                        meta.span(),
                        format!("unknown option `{key}`"),
                    ))
                }
            }
        }
        if o.local_ram_cache_only && o.shared_redis_cache_only {
            return Err(syn::Error::new(
                Span::call_site(),
                "`local_ram_cache_only` and `shared_redis_cache_only` exclude each other",
            ));
        }
        if flavor == Flavor::CachedFor && !o.has_units {
            return Err(syn::Error::new(
                Span::call_site(),
                "#[cached_for] needs at least one of weeks, days, hours, minutes, seconds",
            ));
        }
        Ok(o)
    }

    /// The builder calls that apply these options.
    fn builder_calls(&self) -> TokenStream2 {
        let mut calls = TokenStream2::new();
        if let Some(e) = &self.expire_in {
            calls.extend(quote!(.expire_in(#e)));
        } else if self.has_units {
            let s = self.seconds;
            calls.extend(quote!(.expire_in(::std::time::Duration::from_secs(#s))));
        }
        if self.local_ram_cache_only {
            calls.extend(quote!(.local_ram_cache_only()));
        }
        if self.shared_redis_cache_only {
            calls.extend(quote!(.shared_redis_cache_only()));
        }
        match &self.prefix {
            Some(Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            })) => calls.extend(quote!(.cache_key_prefix(#s))),
            Some(e) => calls.extend(quote!(.cache_key_prefix_with({
                let __prefix = #e;
                move || ::std::string::ToString::to_string(&__prefix())
            }))),
            None => {}
        }
        if let Some(b) = self.with_func_args {
            calls.extend(quote!(.cache_key_with_func_args(#b)));
        }
        if self.full_args {
            calls.extend(quote!(.cache_key_with_full_args(true)));
        }
        if self.cache_none_values {
            calls.extend(quote!(.cache_none_values(true)));
        }
        if let Some(e) = &self.on_cache_computed {
            calls.extend(quote!(.on_cache_computed(#e)));
        }
        if self.request_path {
            calls.extend(quote!(.cache_key_with_request_path(true)));
        }
        if self.query_string {
            calls.extend(quote!(.cache_key_with_query_string(true)));
        }
        calls
    }
}

fn expr_value(meta: &Meta) -> syn::Result<Expr> {
    match meta {
        Meta::NameValue(nv) => Ok(nv.value.clone()),
        _ => Err(syn::Error::new(meta.span(), "expected `name = value`")),
    }
}

fn bool_value(meta: &Meta) -> syn::Result<bool> {
    match meta {
        Meta::Path(_) => Ok(true),
        Meta::NameValue(nv) => match &nv.value {
            Expr::Lit(ExprLit {
                lit: Lit::Bool(b), ..
            }) => Ok(b.value),
            other => Err(syn::Error::new(other.span(), "expected `true` or `false`")),
        },
        Meta::List(_) => Err(syn::Error::new(
            meta.span(),
            "expected `name` or `name = bool`",
        )),
    }
}

fn int_value(meta: &Meta) -> syn::Result<u64> {
    match expr_value(meta)? {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse(),
        other => Err(syn::Error::new(other.span(), "expected a whole number")),
    }
}

fn ident_list(meta: &Meta) -> syn::Result<Vec<syn::Ident>> {
    let items = match expr_value(meta)? {
        Expr::Array(ExprArray { elems, .. }) => elems.into_iter().collect::<Vec<_>>(),
        single @ Expr::Path(_) => vec![single],
        other => {
            return Err(syn::Error::new(
                other.span(),
                "expected a list of argument names, e.g. `ignore = [db, conn]`",
            ))
        }
    };
    items
        .into_iter()
        .map(|e| match e {
            Expr::Path(p) if p.path.get_ident().is_some() => {
                Ok(p.path.get_ident().cloned().expect("checked"))
            }
            other => Err(syn::Error::new(other.span(), "expected an argument name")),
        })
        .collect()
}

/// The function's return type (`()` when it declares none).
fn return_type(ret: &ReturnType) -> Type {
    match ret {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    }
}

/// Whether the function returns a `Result` is decided from its return type
/// `R`, never from how it is spelled (an alias such as
/// `type AppResult<T> = Result<T, AppError>`, `std::result::Result`,
/// `io::Result`, `anyhow::Result` are all `core::result::Result`; a type of
/// the user's that is merely *named* `Result` is not).
///
/// The decision is a constant the compiler computes: `Probe::<R>::IS_RESULT`
/// names an inherent constant (true) when `R` is a `Result`, and otherwise
/// falls back to the constant of the `NotResult` trait (false). That
/// constant selects a `Shape<true>` or `Shape<false>`, whose
/// `CacheOutcome<R>` impl gives the cached value type (`T` of `Result<T, E>`,
/// or `R` itself) and converts `R` to and from `Result<Value, Error>`. `R`
/// is a concrete type here (the macro refuses type generics), so the
/// constant is always evaluable.
fn outcome_shape(ret_ty: &Type) -> TokenStream2 {
    quote! {
        ::cachenode::__private::Shape<{
            #[allow(unused_imports)]
            use ::cachenode::__private::NotResult as _;
            ::cachenode::__private::Probe::<#ret_ty>::IS_RESULT
        }>
    }
}

fn generate(opts: Options, func: ImplItemFn) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "#[cached] needs an `async fn`",
        ));
    }
    if let Some(g) = sig.generics.type_params().next() {
        return Err(syn::Error::new(
            g.span(),
            "#[cached] functions cannot be generic over types (their cache is one static handle)",
        ));
    }
    if let Some(c) = sig.generics.const_params().next() {
        return Err(syn::Error::new(
            c.span(),
            "#[cached] functions cannot have const generics",
        ));
    }
    let mut is_method = false;
    let mut params: Vec<syn::Ident> = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(_) => is_method = true,
            FnArg::Typed(t) => match &*t.pat {
                Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => {
                    params.push(p.ident.clone())
                }
                other => {
                    return Err(syn::Error::new(
                        other.span(),
                        "#[cached] needs a plain name for each argument",
                    ))
                }
            },
        }
    }
    for ig in &opts.ignore {
        let known = params.contains(ig) || (is_method && ig == "self");
        if !known {
            return Err(syn::Error::new(
                ig.span(),
                format!("`{ig}` is not an argument of this function"),
            ));
        }
    }
    let ignore_self = opts.ignore_self || opts.ignore.iter().any(|i| i == "self");
    let keyed: Vec<&syn::Ident> = params.iter().filter(|p| !opts.ignore.contains(p)).collect();
    let keyed_names: Vec<String> = keyed.iter().map(|p| p.to_string()).collect();
    // Unless ignored, the receiver is written into the key: Self must then
    // be Serialize.
    let self_arg = (is_method && !ignore_self).then(|| quote!(__w.arg("self", self)?;));

    let ret_ty = return_type(&sig.output);
    let shape = outcome_shape(&ret_ty);
    let outcome = quote!(<#shape as ::cachenode::__private::CacheOutcome<#ret_ty>>);
    let value_ty = quote!(#outcome::Value);
    let name = &sig.ident;
    let funcname = match &opts.name {
        Some(n) => quote!(::std::string::String::from(#n)),
        // Inside the generated module, module_path!() already ends with
        // the function's name.
        None if is_method => {
            let n = name.to_string();
            quote!(::cachenode::__private::funcname(::core::module_path!(), #n))
        }
        None => quote!(::cachenode::__private::funcname(::core::module_path!(), "")),
    };
    let node = match &opts.node {
        Some(e) => quote!(::core::option::Option::Some(::cachenode::CacheNode::clone(&#e))),
        None => quote!(::cachenode::global_node()),
    };
    let builder_calls = opts.builder_calls();
    let handle_body = quote! {
        static __HANDLE: ::std::sync::OnceLock<::cachenode::CachedFn<dyn ::cachenode::KeyArgs, #value_ty>> =
            ::std::sync::OnceLock::new();
        if let ::core::option::Option::Some(h) = __HANDLE.get() {
            return ::core::option::Option::Some(h);
        }
        let __node: ::cachenode::CacheNode = __get_node()?;
        match __node.func::<dyn ::cachenode::KeyArgs, #value_ty>(&#funcname) #builder_calls .build() {
            ::core::result::Result::Ok(h) => ::core::option::Option::Some(__HANDLE.get_or_init(|| h)),
            ::core::result::Result::Err(e) => {
                ::cachenode::__private::report_build_error(&#funcname, &e);
                ::core::option::Option::None
            }
        }
    };

    let attrs = &func.attrs;
    let vis = &func.vis;
    let block = &func.block;
    let uncached_name = if is_method {
        format_ident!("{}_uncached", name)
    } else {
        format_ident!("uncached")
    };
    let mut uncached_sig = sig.clone();
    uncached_sig.ident = uncached_name.clone();

    let call_args = quote!(#(#params),*);
    let uncached_call = if is_method {
        quote!(self.#uncached_name(#call_args))
    } else {
        quote!(#name::#uncached_name(#call_args))
    };
    let unless_check = opts.unless.as_ref().map(|u| {
        quote! {
            if (#u)(#(&#params),*) {
                return #uncached_call.await;
            }
        }
    });
    // Only the `Ok` side of a `Result` reaches the cache; a plain value is
    // an `Ok` that cannot fail.
    let call = quote! {
        #outcome::join(
            __h.call_prepared(__prepared, move || async move {
                #outcome::split(#uncached_call.await)
            })
            .await,
        )
    };
    let handle_expr = if is_method {
        quote!({
            fn __handle(
                __get_node: impl ::core::ops::FnOnce() -> ::core::option::Option<::cachenode::CacheNode>,
            ) -> ::core::option::Option<&'static ::cachenode::CachedFn<dyn ::cachenode::KeyArgs, #value_ty>> {
                #handle_body
            }
            __handle(|| #node)
        })
    } else {
        quote!(#name::handle())
    };
    let wrapper = quote! {
        #(#attrs)*
        #vis #sig {
            #unless_check
            match #handle_expr {
                ::core::option::Option::Some(__h) => {
                    let __prepared = {
                        let __args = ::cachenode::__private::FnArgs(
                            |__w: &mut ::cachenode::ArgsWriter| -> ::cachenode::Result<()> {
                                #self_arg
                                #( __w.arg(#keyed_names, &#keyed)?; )*
                                ::core::result::Result::Ok(())
                            },
                        );
                        __h.prepare_args(&__args)
                    };
                    #call
                }
                ::core::option::Option::None => #uncached_call.await,
            }
        }
    };

    if is_method {
        return Ok(quote! {
            #wrapper
            /// The function without its cache.
            #[allow(dead_code)]
            #vis #uncached_sig #block
        });
    }

    // Free function: introspection lives in a module named like it.
    let keyed_types: Vec<&Type> = sig
        .inputs
        .iter()
        .filter_map(|i| match i {
            FnArg::Typed(t) => match &*t.pat {
                Pat::Ident(p) if !opts.ignore.contains(&p.ident) => Some(&*t.ty),
                _ => None,
            },
            FnArg::Receiver(_) => None,
        })
        .collect();
    let expire = match (&opts.expire_in, opts.has_units) {
        (Some(e), _) => quote!(::core::option::Option::Some(#e)),
        (None, true) => {
            let s = opts.seconds;
            quote!(::core::option::Option::Some(::std::time::Duration::from_secs(#s)))
        }
        (None, false) => quote!(::core::option::Option::None),
    };
    let args_fn = quote! {
        ::cachenode::__private::FnArgs(
            |__w: &mut ::cachenode::ArgsWriter| -> ::cachenode::Result<()> {
                #( __w.arg(#keyed_names, #keyed)?; )*
                ::core::result::Result::Ok(())
            },
        )
    };
    Ok(quote! {
        #wrapper

        /// Cache introspection of the function of the same name: its
        /// handle, uncached body, expiry, key builder and invalidation.
        #[allow(dead_code)]
        #vis mod #name {
            #[allow(unused_imports)]
            use super::*;

            /// The function without its cache.
            pub #uncached_sig #block

            /// The cache handle; `None` until a node is available.
            pub fn handle() -> ::core::option::Option<&'static ::cachenode::CachedFn<dyn ::cachenode::KeyArgs, #value_ty>> {
                let __get_node = || #node;
                #handle_body
            }

            /// How long values live (`None`: the node's default).
            pub fn expire_in() -> ::core::option::Option<::std::time::Duration> {
                #expire
            }

            /// The Redis key of the call with these (non-ignored) arguments.
            pub fn cache_key(#(#keyed: &#keyed_types),*) -> ::cachenode::Result<::std::string::String> {
                let h = handle().ok_or(::cachenode::Error::NoSharedLayer { op: "cache_key" })?;
                h.cache_key_args(&#args_fn)
            }

            /// Deletes the value of the call with these arguments everywhere.
            pub async fn invalidate(#(#keyed: &#keyed_types),*) -> ::cachenode::Result<bool> {
                match handle() {
                    ::core::option::Option::Some(h) => h.clear_args(&#args_fn).await,
                    ::core::option::Option::None => ::core::result::Result::Ok(false),
                }
            }

            /// Deletes every value of the function everywhere.
            pub async fn invalidate_all() -> ::cachenode::Result<u64> {
                match handle() {
                    ::core::option::Option::Some(h) => h.clear_all().await,
                    ::core::option::Option::None => ::core::result::Result::Ok(0),
                }
            }
        }
    })
}
