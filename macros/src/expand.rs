//! Code generation: the cached function that replaces the user's, and its
//! introspection (a module named like a free function).
//!
//! Every path the generated code names is `::cachenode::<root item>` or
//! `::cachenode::__private::...`: the user's crate sees nothing else of
//! cachenode's layout.

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ImplItemFn, Pat, PatType, ReturnType, Signature, Type};

use crate::options::Options;

/// Expands a cached function (a free function or a method).
pub(crate) fn expand(opts: Options, func: ImplItemFn) -> syn::Result<TokenStream2> {
    let f = Cached::new(&opts, &func)?;
    let wrapper = f.wrapper();
    let items = if f.is_method {
        f.method_items()
    } else {
        f.module()
    };
    Ok(quote! {
        #wrapper
        #items
    })
}

/// One argument of the function (not the receiver).
struct Arg<'a> {
    ident: &'a Ident,
    ty: &'a Type,
    /// Written into the key (not in `ignore`).
    keyed: bool,
}

impl Arg<'_> {
    /// The argument's name in the key (`type` for `r#type`).
    fn key_name(&self) -> String {
        self.ident.unraw().to_string()
    }
}

/// A cached function being expanded.
struct Cached<'a> {
    opts: &'a Options,
    func: &'a ImplItemFn,
    is_method: bool,
    /// The receiver's `self`, when it is part of the key.
    keyed_self: Option<Ident>,
    args: Vec<Arg<'a>>,
    /// The function's return type `R` (`()` when it declares none).
    ret_ty: Type,
    /// Where errors about the value type point.
    ret_span: Span,
}

impl<'a> Cached<'a> {
    fn new(opts: &'a Options, func: &'a ImplItemFn) -> syn::Result<Self> {
        let sig = &func.sig;
        check_signature(sig)?;
        let mut is_method = false;
        let mut keyed_self = None;
        let mut args = Vec::new();
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(r) => {
                    is_method = true;
                    if !opts.ignores_self() {
                        keyed_self = Some(Ident::new("self", r.self_token.span));
                    }
                }
                FnArg::Typed(t) => args.push(argument(t, opts)?),
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
        let ret_span = match &sig.output {
            ReturnType::Default => sig.ident.span(),
            ReturnType::Type(_, ty) => ty.span(),
        };
        Ok(Cached {
            opts,
            func,
            is_method,
            keyed_self,
            args,
            ret_ty: return_type(&sig.output),
            ret_span,
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

    /// `<Shape<..> as CacheOutcome<R>>`: how `R` reaches the cache
    /// (spanned at the return type, as is every error about it).
    fn outcome(&self) -> TokenStream2 {
        let ret_ty = &self.ret_ty;
        let shape = outcome_shape(ret_ty, self.ret_span);
        quote_spanned!(self.ret_span=> <#shape as ::cachenode::__private::CacheOutcome<#ret_ty>>)
    }

    /// The type of the cached values.
    fn value_ty(&self) -> TokenStream2 {
        let outcome = self.outcome();
        quote_spanned!(self.ret_span=> #outcome::Value)
    }

    /// The name of generated item `what`: `what` in a free function's
    /// module, `{fn}_{what}` beside a method.
    fn item(&self, what: &str) -> Ident {
        if self.is_method {
            format_ident!("{}_{}", self.name().unraw(), what)
        } else {
            format_ident!("{}", what)
        }
    }

    /// The name of hidden item `what` (`__what`, `__{fn}_what`).
    fn hidden(&self, what: &str) -> Ident {
        if self.is_method {
            format_ident!("__{}_{}", self.name().unraw(), what)
        } else {
            format_ident!("__{}", what)
        }
    }

    /// A call of generated item `item` from the cached function's body.
    fn call_from_body(&self, item: &Ident, args: TokenStream2) -> TokenStream2 {
        if self.is_method {
            quote!(self.#item(#args))
        } else {
            let name = self.name();
            quote!(#name::#item(#args))
        }
    }

    /// A call of generated item `item` from another generated item.
    fn call_from_item(&self, item: &Ident, args: TokenStream2) -> TokenStream2 {
        if self.is_method {
            quote!(self.#item(#args))
        } else {
            quote!(#item(#args))
        }
    }

    /// The keyed arguments as parameters of a generated item: references.
    fn ref_params(&self) -> Vec<TokenStream2> {
        self.keyed()
            .map(|a| {
                let (ident, ty) = (a.ident, a.ty);
                quote!(#ident: &#ty)
            })
            .collect()
    }

    /// The parameters of a generated item that takes a call's arguments:
    /// `&self` for a method (the key or the node may need it), then
    /// [`ref_params`](Self::ref_params).
    fn key_params(&self) -> TokenStream2 {
        let receiver = self.is_method.then(|| quote!(&self,));
        let params = self.ref_params();
        quote!(#receiver #(#params),*)
    }

    /// The keyed arguments, passed on by name.
    fn key_idents(&self) -> TokenStream2 {
        let idents = self.keyed().map(|a| a.ident);
        quote!(#(#idents),*)
    }

    /// The user's lifetime parameters (the only generics allowed), with
    /// `extra` type parameters after them.
    fn generics(&self, extra: TokenStream2) -> TokenStream2 {
        let lifetimes = self.sig().generics.lifetimes();
        quote!(<#(#lifetimes,)* #extra>)
    }

    fn where_clause(&self) -> Option<&syn::WhereClause> {
        self.sig().generics.where_clause.as_ref()
    }

    /// The user's function, renamed, with its body.
    fn uncached(&self, vis: &syn::Visibility) -> TokenStream2 {
        let mut sig = self.sig().clone();
        sig.ident = self.item("uncached");
        let block = &self.func.block;
        quote!(#vis #sig #block)
    }

    /// The function's cache name, as a `String` expression.
    fn funcname(&self) -> TokenStream2 {
        match &self.opts.name {
            Some(n) => quote!(::std::string::String::from(#n)),
            None if self.is_method => {
                let n = self.name().unraw().to_string();
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

    /// The function returning the handle, built once, by the first call
    /// that finds a node (`node = self.node` is evaluated until then).
    fn handle_fn(&self) -> TokenStream2 {
        let value_ty = self.value_ty();
        let funcname = self.funcname();
        let node = self.node();
        let calls = self.opts.builder_calls();
        let declared = self.declared_calls();
        let handle = self.hidden("handle");
        let receiver = self.is_method.then(|| quote!(&self));
        let vis = self.hidden_vis();
        quote! {
            #[allow(dead_code)]
            #vis fn #handle(#receiver) -> ::core::option::Option<&'static ::cachenode::CachedFn<dyn ::cachenode::KeyArgs, #value_ty>> {
                static __HANDLE: ::std::sync::OnceLock<::cachenode::CachedFn<dyn ::cachenode::KeyArgs, #value_ty>> =
                    ::std::sync::OnceLock::new();
                if let ::core::option::Option::Some(h) = __HANDLE.get() {
                    return ::core::option::Option::Some(h);
                }
                let __name: ::std::string::String = #funcname;
                let __node: ::cachenode::CacheNode = match #node {
                    ::core::option::Option::Some(n) => n,
                    ::core::option::Option::None => {
                        ::cachenode::__private::report_no_node(&__name);
                        return ::core::option::Option::None;
                    }
                };
                let __built = __node
                    .func::<dyn ::cachenode::KeyArgs, #value_ty>(&__name) #calls #declared
                    .build();
                match __built {
                    ::core::result::Result::Ok(h) => ::core::option::Option::Some(__HANDLE.get_or_init(|| h)),
                    ::core::result::Result::Err(e) => {
                        ::cachenode::__private::report_build_error(&__name, &e);
                        ::core::option::Option::None
                    }
                }
            }
        }
    }

    /// The builder calls that tell the handle which arguments its keys
    /// hold (names and types) and which it leaves out, so that a partial
    /// deletion can refuse a filter that could match nothing.
    fn declared_calls(&self) -> TokenStream2 {
        let arg_types = self.hidden("arg_types");
        let arg_types = if self.is_method {
            quote!(Self::#arg_types())
        } else {
            quote!(#arg_types())
        };
        let mut ignored: Vec<String> = self
            .args
            .iter()
            .filter(|a| !a.keyed)
            .map(Arg::key_name)
            .collect();
        if self.is_method && self.keyed_self.is_none() {
            ignored.push("self".to_owned());
        }
        let ignore = (!ignored.is_empty()).then(|| quote!(.ignore_args([#(#ignored),*])));
        quote!(.declared_args(&#arg_types) #ignore)
    }

    /// The function that names the keyed arguments and their types, with
    /// the user's lifetime parameters (an argument's type may name them).
    /// A type that cannot be named in an expression (`impl Trait`) is
    /// declared without its type.
    fn arg_types_fn(&self) -> TokenStream2 {
        let self_entry = self.keyed_self.as_ref().map(|_| {
            quote!((
                "self",
                ::core::option::Option::Some(::core::any::type_name::<Self>())
            ),)
        });
        let entries = self.keyed().map(|a| {
            let name = a.key_name();
            let ty = a.ty;
            if mentions_impl(&quote!(#ty)) {
                quote!((#name, ::core::option::Option::None),)
            } else {
                quote!((#name, ::core::option::Option::Some(::core::any::type_name::<#ty>())),)
            }
        });
        let arg_types = self.hidden("arg_types");
        let generics = self.generics(quote!());
        let where_clause = self.where_clause();
        let vis = self.hidden_vis();
        quote! {
            #[allow(dead_code)]
            #vis fn #arg_types #generics() -> ::std::vec::Vec<(&'static str, ::core::option::Option<&'static str>)> #where_clause {
                ::std::vec![#self_entry #(#entries)*]
            }
        }
    }

    /// Visibility of the generated items: `pub` inside a free function's
    /// module, the method's own beside a method.
    fn item_vis(&self) -> TokenStream2 {
        if self.is_method {
            let vis = self.vis();
            quote!(#vis)
        } else {
            quote!(pub)
        }
    }

    /// Visibility of the hidden items: seen by the cached function only.
    fn hidden_vis(&self) -> TokenStream2 {
        if self.is_method {
            quote!()
        } else {
            quote!(pub(super))
        }
    }

    /// The one function that writes a call's key arguments into an
    /// `ArgsWriter` (for a call, a key, a deletion). An argument that is not
    /// `Serialize` is reported here, once, at the argument, with a bound
    /// whose message says how to leave it out.
    fn key_args_fn(&self) -> TokenStream2 {
        let self_write = self.keyed_self.as_ref().map(|s| {
            must_serialize(
                s,
                "self",
                "`self` must be Serialize to be part of the key: derive Serialize for its type, \
                 or add `ignore_self` if the result does not depend on it",
            )
        });
        let writes = self.keyed().map(|a| {
            let name = a.key_name();
            let message = format!(
                "argument `{name}` must be Serialize to be part of the key: derive Serialize for its \
                 type, or add it to `ignore = [{name}]` if the result does not depend on it (a \
                 connection, a client)"
            );
            must_serialize(a.ident, &name, &message)
        });
        let key_args = self.hidden("key_args");
        let generics = self.generics(quote!());
        let where_clause = self.where_clause();
        let receiver = self.is_method.then(|| quote!(&self,));
        let params = self.ref_params();
        let vis = self.hidden_vis();
        quote! {
            #[allow(dead_code)]
            #vis fn #key_args #generics(#receiver __sink: &mut ::cachenode::ArgsWriter, #(#params),*) -> ::cachenode::Result<()> #where_clause {
                #self_write
                #(#writes)*
                ::core::result::Result::Ok(())
            }
        }
    }

    /// The call's key arguments as a `KeyArgs`, borrowed for the call (in
    /// the cached function's body).
    fn borrowed_args(&self) -> TokenStream2 {
        let idents = self.keyed().map(|a| a.ident);
        let write = self.call_from_body(&self.hidden("key_args"), quote!(__w, #(&#idents),*));
        quote! {
            &::cachenode::__private::FnArgs(
                |__w: &mut ::cachenode::ArgsWriter| -> ::cachenode::Result<()> { #write },
            )
        }
    }

    /// The call's key arguments as a `KeyArgs`, in a generated item (whose
    /// parameters are references). Borrowed only while the item builds the
    /// key: the futures the items return do not hold them.
    fn item_args(&self) -> TokenStream2 {
        let idents = self.key_idents();
        let write = self.call_from_item(&self.hidden("key_args"), quote!(__w, #idents));
        quote! {
            &::cachenode::__private::FnArgs(
                |__w: &mut ::cachenode::ArgsWriter| -> ::cachenode::Result<()> { #write },
            )
        }
    }

    /// The cached function, in place of the user's.
    fn wrapper(&self) -> TokenStream2 {
        let attrs = &self.func.attrs;
        let vis = self.vis();
        let sig = self.sig();
        let outcome = self.outcome();
        let value_ty = self.value_ty();
        let uncached_call = {
            let args = self.args.iter().map(|a| a.ident);
            self.call_from_body(&self.item("uncached"), quote!(#(#args),*))
        };
        let unless_check = self.opts.unless.as_ref().map(|u| {
            let args = self.args.iter().map(|a| a.ident);
            quote! {
                if (#u)(#(&#args),*) {
                    return #uncached_call.await;
                }
            }
        });
        let handle = self.call_from_body(&self.hidden("handle"), quote!());
        let args = self.borrowed_args();
        // Spanned at the return type: a value type that cannot be cached
        // is one error there, not one per helper.
        let span = self.ret_span;
        let cacheable = quote_spanned!(span=> ::cachenode::__private::cacheable::<#value_ty>);
        let prepare = quote_spanned!(span=> ::cachenode::__private::prepare::<#value_ty>);
        let value = quote_spanned! {span=>
            #outcome::join(
                ::cachenode::__private::call::<#value_ty, _, _, _>(__h, __prepared, move || async move {
                    #outcome::split(#uncached_call.await)
                })
                .await,
            )
        };
        // The key is built in its own statement, before the call moves the
        // arguments into the uncached body; only the `Ok` side of a
        // `Result` reaches the cache (a plain value is an `Ok` that cannot
        // fail).
        quote! {
            #(#attrs)*
            #vis #sig {
                let _: fn() = #cacheable;
                #unless_check
                match #handle {
                    ::core::option::Option::Some(__h) => {
                        let __prepared = #prepare(__h, #args);
                        #value
                    }
                    ::core::option::Option::None => #uncached_call.await,
                }
            }
        }
    }

    /// The introspection items: the handle, the expiry, the key and the
    /// invalidations.
    fn introspection(&self) -> TokenStream2 {
        let vis = self.item_vis();
        let value_ty = self.value_ty();
        let expire = self.opts.expiry();
        let receiver = self.is_method.then(|| quote!(&self));
        let params = self.key_params();
        let generics = self.generics(quote!());
        let where_clause = self.where_clause();
        let handle_call = self.call_from_item(&self.hidden("handle"), quote!());
        let args = self.item_args();
        let (handle, ttl, cache_key) = (
            self.item("handle"),
            self.item("ttl"),
            self.item("cache_key"),
        );
        let (delete, delete_all, invalidate, invalidate_all) = (
            self.item("delete"),
            self.item("delete_all"),
            self.item("invalidate"),
            self.item("invalidate_all"),
        );
        let of = if self.is_method {
            format!(" of `{}`", self.name().unraw())
        } else {
            String::new()
        };
        let doc_handle = format!("The cache handle{of}; `None` until a node is available.");
        let doc_expire = format!("How long values{of} live (`Ttl::Default`: the node's default).");
        let doc_key = format!("The Redis key of the call{of} with these (non-ignored) arguments.");
        let doc_delete = format!(
            "Deletes the value of the call{of} with these arguments from Redis and the RAM \
             of every instance; whether it existed. The future owns its key: it borrows \
             nothing and is `Send`."
        );
        let doc_delete_all =
            format!("Deletes every value{of} from Redis and the RAM of every instance.");
        let doc_invalidate = format!(
            "Drops the value of the call{of} with these arguments from the RAM of every \
             instance; Redis keeps it. The future owns its key and is `Send`."
        );
        let doc_invalidate_all =
            format!("Drops every value{of} from the RAM of every instance; Redis keeps them.");
        quote! {
            #[doc = #doc_handle]
            #[allow(dead_code)]
            #vis fn #handle(#receiver) -> ::core::option::Option<&'static ::cachenode::CachedFn<dyn ::cachenode::KeyArgs, #value_ty>> {
                #handle_call
            }

            #[doc = #doc_expire]
            #[allow(dead_code)]
            #vis fn #ttl() -> ::cachenode::Ttl {
                #expire
            }

            #[doc = #doc_key]
            #[allow(dead_code)]
            #vis fn #cache_key #generics(#params) -> ::cachenode::Result<::std::string::String> #where_clause {
                ::cachenode::__private::cache_key(#handle_call, #args)
            }

            #[doc = #doc_delete]
            #[allow(dead_code)]
            #vis fn #delete #generics(#params)
                -> impl ::core::future::Future<Output = ::cachenode::Result<bool>> + ::core::marker::Send + 'static
                #where_clause
            {
                ::cachenode::__private::delete(#handle_call, #args)
            }

            #[doc = #doc_delete_all]
            #[allow(dead_code)]
            #vis fn #delete_all(#receiver)
                -> impl ::core::future::Future<Output = ::cachenode::Result<u64>> + ::core::marker::Send + 'static
            {
                ::cachenode::__private::delete_all(#handle_call)
            }

            #[doc = #doc_invalidate]
            #[allow(dead_code)]
            #vis fn #invalidate #generics(#params)
                -> impl ::core::future::Future<Output = ::cachenode::Result<()>> + ::core::marker::Send + 'static
                #where_clause
            {
                ::cachenode::__private::invalidate(#handle_call, #args)
            }

            #[doc = #doc_invalidate_all]
            #[allow(dead_code)]
            #vis fn #invalidate_all(#receiver)
                -> impl ::core::future::Future<Output = ::cachenode::Result<()>> + ::core::marker::Send + 'static
            {
                ::cachenode::__private::invalidate_all(#handle_call)
            }
        }
    }

    /// The items beside a cached method, in its `impl` block.
    fn method_items(&self) -> TokenStream2 {
        let uncached = self.uncached(self.vis());
        let doc = format!("`{}` without its cache.", self.name().unraw());
        let handle = self.handle_fn();
        let arg_types = self.arg_types_fn();
        let key_args = self.key_args_fn();
        let introspection = self.introspection();
        quote! {
            #[doc = #doc]
            #[allow(dead_code)]
            #uncached
            #handle
            #arg_types
            #key_args
            #introspection
        }
    }

    /// The module named like a free function, holding its introspection.
    fn module(&self) -> TokenStream2 {
        let vis = self.vis();
        let name = self.name();
        let uncached = self.uncached(&syn::parse_quote!(pub));
        let handle = self.handle_fn();
        let arg_types = self.arg_types_fn();
        let key_args = self.key_args_fn();
        let introspection = self.introspection();
        quote! {
            /// Cache introspection of the function of the same name: its
            /// handle, uncached body, expiry, key builder and invalidation.
            #[allow(dead_code)]
            #vis mod #name {
                #[allow(unused_imports)]
                use super::*;

                /// The function without its cache.
                #uncached
                #handle
                #arg_types
                #key_args
                #introspection
            }
        }
    }
}

/// Checks one typed argument: a plain name, which is an ASCII identifier
/// when it is part of the key (argument names are written into keys and
/// named by `Args` filters).
fn argument<'a>(t: &'a PatType, opts: &Options) -> syn::Result<Arg<'a>> {
    let ident = match &*t.pat {
        Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => &p.ident,
        other => {
            return Err(syn::Error::new(
                other.span(),
                "#[cached] needs a plain name for each argument",
            ))
        }
    };
    let arg = Arg {
        ident,
        ty: &t.ty,
        keyed: !opts.ignore.contains(ident),
    };
    let name = arg.key_name();
    if arg.keyed && !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(syn::Error::new(
            ident.span(),
            format!(
                "argument `{name}` is part of the key, whose argument names are ASCII letters, digits and `_`: rename it, or add it to `ignore = [{name}]`"
            ),
        ));
    }
    Ok(arg)
}

/// Writes `value` (a reference) as argument `name`, through a trait local
/// to this argument: when the value is not `Serialize`, the error is this
/// trait's, with `message`, at the argument.
fn must_serialize(value: &Ident, name: &str, message: &str) -> TokenStream2 {
    let span = value.span();
    let write = quote_spanned!(span=> __KeyArg::__write(#value, __sink, #name)?;);
    quote! {
        {
            #[diagnostic::on_unimplemented(message = #message, label = "not `Serialize`")]
            trait __KeyArg {
                fn __write(&self, sink: &mut ::cachenode::ArgsWriter, name: &str) -> ::cachenode::Result<()>;
            }
            impl<__T: ?::core::marker::Sized + ::cachenode::__private::Serialize> __KeyArg for __T {
                fn __write(&self, sink: &mut ::cachenode::ArgsWriter, name: &str) -> ::cachenode::Result<()> {
                    sink.arg(name, self)
                }
            }
            #write
        }
    }
}

/// Whether `tokens` (a type) mention `impl`, at any depth.
fn mentions_impl(tokens: &TokenStream2) -> bool {
    tokens.clone().into_iter().any(|t| match t {
        proc_macro2::TokenTree::Ident(i) => i == "impl",
        proc_macro2::TokenTree::Group(g) => mentions_impl(&g.stream()),
        _ => false,
    })
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
fn outcome_shape(ret_ty: &Type, span: Span) -> TokenStream2 {
    quote_spanned! {span=>
        ::cachenode::__private::Shape<{
            #[allow(unused_imports)]
            use ::cachenode::__private::NotResult as _;
            ::cachenode::__private::Probe::<#ret_ty>::IS_RESULT
        }>
    }
}
