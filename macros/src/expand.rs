//! Code generation: the cached function that replaces the user's, and its
//! introspection (a module named like a free function).
//!
//! Every path the generated code names is `::cachenode::<root item>` or
//! `::cachenode::__private::...`: the user's crate sees nothing else of
//! cachenode's layout.

use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ImplItemFn, Pat, ReturnType, Signature, Type};

use crate::options::Options;

/// Expands a cached function (a free function or a method).
pub(crate) fn expand(opts: Options, func: ImplItemFn) -> syn::Result<TokenStream2> {
    let f = Cached::new(&opts, &func)?;
    let wrapper = f.wrapper();
    if f.is_method {
        let uncached = f.uncached(f.vis());
        return Ok(quote! {
            #wrapper
            /// The function without its cache.
            #[allow(dead_code)]
            #uncached
        });
    }
    let module = f.module();
    Ok(quote! {
        #wrapper
        #module
    })
}

/// One argument of the function (not the receiver).
struct Arg<'a> {
    ident: &'a Ident,
    ty: &'a Type,
    /// Written into the key (not in `ignore`).
    keyed: bool,
}

/// A cached function being expanded.
struct Cached<'a> {
    opts: &'a Options,
    func: &'a ImplItemFn,
    is_method: bool,
    args: Vec<Arg<'a>>,
    /// The function's return type `R` (`()` when it declares none).
    ret_ty: Type,
}

impl<'a> Cached<'a> {
    fn new(opts: &'a Options, func: &'a ImplItemFn) -> syn::Result<Self> {
        let sig = &func.sig;
        check_signature(sig)?;
        let mut is_method = false;
        let mut args = Vec::new();
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(_) => is_method = true,
                FnArg::Typed(t) => match &*t.pat {
                    Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => args.push(Arg {
                        ident: &p.ident,
                        ty: &t.ty,
                        keyed: !opts.ignore.contains(&p.ident),
                    }),
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
            let known = args.iter().any(|a| a.ident == ig) || (is_method && ig == "self");
            if !known {
                return Err(syn::Error::new(
                    ig.span(),
                    format!("`{ig}` is not an argument of this function"),
                ));
            }
        }
        Ok(Cached {
            opts,
            func,
            is_method,
            args,
            ret_ty: return_type(&sig.output),
        })
    }

    fn sig(&self) -> &Signature {
        &self.func.sig
    }

    fn vis(&self) -> &syn::Visibility {
        &self.func.vis
    }

    fn name(&self) -> &Ident {
        &self.func.sig.ident
    }

    fn keyed(&self) -> impl Iterator<Item = &Arg<'a>> {
        self.args.iter().filter(|a| a.keyed)
    }

    /// `<Shape<..> as CacheOutcome<R>>`: how `R` reaches the cache.
    fn outcome(&self) -> TokenStream2 {
        let ret_ty = &self.ret_ty;
        let shape = outcome_shape(ret_ty);
        quote!(<#shape as ::cachenode::__private::CacheOutcome<#ret_ty>>)
    }

    /// The type of the cached values.
    fn value_ty(&self) -> TokenStream2 {
        let outcome = self.outcome();
        quote!(#outcome::Value)
    }

    /// The name of the uncached body.
    fn uncached_name(&self) -> Ident {
        if self.is_method {
            format_ident!("{}_uncached", self.name())
        } else {
            format_ident!("uncached")
        }
    }

    /// The user's function, renamed, with its body.
    fn uncached(&self, vis: &syn::Visibility) -> TokenStream2 {
        let mut sig = self.sig().clone();
        sig.ident = self.uncached_name();
        let block = &self.func.block;
        quote!(#vis #sig #block)
    }

    /// A call of the uncached body with the function's arguments.
    fn uncached_call(&self) -> TokenStream2 {
        let uncached = self.uncached_name();
        let args = self.args.iter().map(|a| a.ident);
        if self.is_method {
            quote!(self.#uncached(#(#args),*))
        } else {
            let name = self.name();
            quote!(#name::#uncached(#(#args),*))
        }
    }

    /// The function's cache name, as a `String` expression.
    fn funcname(&self) -> TokenStream2 {
        match &self.opts.name {
            Some(n) => quote!(::std::string::String::from(#n)),
            None if self.is_method => {
                let n = self.name().to_string();
                quote!(::cachenode::__private::funcname(::core::module_path!(), #n))
            }
            // Inside the generated module, module_path!() already ends
            // with the function's name.
            None => quote!(::cachenode::__private::funcname(::core::module_path!(), "")),
        }
    }

    /// The node to build the handle with, as an `Option<CacheNode>`.
    fn node(&self) -> TokenStream2 {
        match &self.opts.node {
            Some(e) => quote!(::core::option::Option::Some(::cachenode::CacheNode::clone(&#e))),
            None => quote!(::cachenode::global_node()),
        }
    }

    /// The body of a function returning the handle (built once, on the
    /// first call that finds a node), given `__get_node`.
    fn handle_body(&self) -> TokenStream2 {
        let value_ty = self.value_ty();
        let funcname = self.funcname();
        let builder_calls = self.opts.builder_calls();
        quote! {
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
        }
    }

    /// An expression giving the handle from the function's body.
    fn handle_expr(&self) -> TokenStream2 {
        if !self.is_method {
            let name = self.name();
            return quote!(#name::handle());
        }
        let value_ty = self.value_ty();
        let handle_body = self.handle_body();
        let node = self.node();
        quote!({
            fn __handle(
                __get_node: impl ::core::ops::FnOnce() -> ::core::option::Option<::cachenode::CacheNode>,
            ) -> ::core::option::Option<&'static ::cachenode::CachedFn<dyn ::cachenode::KeyArgs, #value_ty>> {
                #handle_body
            }
            __handle(|| #node)
        })
    }

    /// The arguments of a call, as a `KeyArgs` expression; `by_ref` when
    /// the arguments are values (in the function's body), not references.
    fn key_args(&self, by_ref: bool) -> TokenStream2 {
        let self_arg =
            (self.is_method && !self.opts.ignores_self()).then(|| quote!(__w.arg("self", self)?;));
        let names = self.keyed().map(|a| a.ident.to_string());
        let values = self.keyed().map(|a| {
            let ident = a.ident;
            if by_ref {
                quote!(&#ident)
            } else {
                quote!(#ident)
            }
        });
        quote! {
            ::cachenode::__private::FnArgs(
                |__w: &mut ::cachenode::ArgsWriter| -> ::cachenode::Result<()> {
                    #self_arg
                    #( __w.arg(#names, #values)?; )*
                    ::core::result::Result::Ok(())
                },
            )
        }
    }

    /// The cached function, in place of the user's.
    fn wrapper(&self) -> TokenStream2 {
        let attrs = &self.func.attrs;
        let vis = self.vis();
        let sig = self.sig();
        let outcome = self.outcome();
        let uncached_call = self.uncached_call();
        let unless_check = self.opts.unless.as_ref().map(|u| {
            let args = self.args.iter().map(|a| a.ident);
            quote! {
                if (#u)(#(&#args),*) {
                    return #uncached_call.await;
                }
            }
        });
        let handle_expr = self.handle_expr();
        let key_args = self.key_args(true);
        // Only the `Ok` side of a `Result` reaches the cache; a plain value
        // is an `Ok` that cannot fail.
        quote! {
            #(#attrs)*
            #vis #sig {
                #unless_check
                match #handle_expr {
                    ::core::option::Option::Some(__h) => {
                        let __prepared = {
                            let __args = #key_args;
                            __h.prepare_args(&__args)
                        };
                        #outcome::join(
                            __h.call_prepared(__prepared, move || async move {
                                #outcome::split(#uncached_call.await)
                            })
                            .await,
                        )
                    }
                    ::core::option::Option::None => #uncached_call.await,
                }
            }
        }
    }

    /// The introspection module of a free function.
    fn module(&self) -> TokenStream2 {
        let vis = self.vis();
        let name = self.name();
        let uncached = self.uncached(&syn::parse_quote!(pub));
        let value_ty = self.value_ty();
        let node = self.node();
        let handle_body = self.handle_body();
        let expire = self.opts.expiry();
        let params = self.keyed().map(|a| {
            let (ident, ty) = (a.ident, a.ty);
            quote!(#ident: &#ty)
        });
        let params: Vec<_> = params.collect();
        let key_args = self.key_args(false);
        quote! {
            /// Cache introspection of the function of the same name: its
            /// handle, uncached body, expiry, key builder and invalidation.
            #[allow(dead_code)]
            #vis mod #name {
                #[allow(unused_imports)]
                use super::*;

                /// The function without its cache.
                #uncached

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
                pub fn cache_key(#(#params),*) -> ::cachenode::Result<::std::string::String> {
                    let h = handle().ok_or(::cachenode::Error::NoSharedLayer { op: "cache_key" })?;
                    h.cache_key_args(&#key_args)
                }

                /// Deletes the value of the call with these arguments everywhere.
                pub async fn invalidate(#(#params),*) -> ::cachenode::Result<bool> {
                    match handle() {
                        ::core::option::Option::Some(h) => h.clear_args(&#key_args).await,
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
        }
    }
}

/// Refuses what a cached function cannot be: not async, or generic over
/// types or constants (its handle is one static).
fn check_signature(sig: &Signature) -> syn::Result<()> {
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
    Ok(())
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
