//! The options of `#[cached(...)]` and `#[cached_for(...)]`: parsing,
//! validation, and the builder calls they turn into.
//!
//! Everything that can be checked without the function's types is checked
//! here, so that a mistake in the attribute gives one error spanned at the
//! option, never an error in the generated code.

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprArray, ExprLit, Lit, LitStr, Meta, Token};

/// Which attribute is being expanded.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Flavor {
    /// `#[cached]`: expiry as `expire_in = <Duration>`.
    Cached,
    /// `#[cached_for]`: expiry in units (`minutes = 30`).
    CachedFor,
}

impl Flavor {
    fn attribute(self) -> &'static str {
        match self {
            Flavor::Cached => "#[cached]",
            Flavor::CachedFor => "#[cached_for]",
        }
    }

    /// The options this attribute takes, as listed in an error.
    fn valid_options(self) -> String {
        let expiry = match self {
            Flavor::Cached => "expire_in",
            Flavor::CachedFor => "weeks, days, hours, minutes, seconds",
        };
        format!("{expiry}, {COMMON_OPTIONS}")
    }
}

/// The options both attributes take (beside the expiry).
const COMMON_OPTIONS: &str = "name, node, unless, ignore (or args_to_ignore), ignore_self, \
     local_ram_cache_only, shared_redis_cache_only, cache_key_prefix, \
     cache_key_with_func_args, cache_key_with_full_args, cache_none_values, \
     on_cache_computed, cache_key_with_request_path, cache_key_with_query_string";

/// The expiry units of `#[cached_for]`, in seconds.
const UNITS: [(&str, u64); 5] = [
    ("weeks", 7 * 24 * 3600),
    ("days", 24 * 3600),
    ("hours", 3600),
    ("minutes", 60),
    ("seconds", 1),
];

/// The parsed options of one attribute.
#[derive(Default)]
pub(crate) struct Options {
    pub(crate) expire_in: Option<Expr>,
    /// `#[cached_for]`'s units, summed.
    pub(crate) seconds: u64,
    pub(crate) has_units: bool,
    pub(crate) unless: Option<Expr>,
    pub(crate) local_ram_cache_only: bool,
    pub(crate) shared_redis_cache_only: bool,
    pub(crate) prefix: Option<Expr>,
    pub(crate) with_func_args: Option<bool>,
    pub(crate) full_args: bool,
    pub(crate) ignore: Vec<syn::Ident>,
    pub(crate) ignore_self: bool,
    pub(crate) cache_none_values: bool,
    pub(crate) on_cache_computed: Option<Expr>,
    pub(crate) request_path: bool,
    pub(crate) query_string: bool,
    pub(crate) node: Option<Expr>,
    pub(crate) name: Option<LitStr>,
}

impl Options {
    /// Parses and checks the attribute's arguments.
    pub(crate) fn parse(metas: Punctuated<Meta, Token![,]>, flavor: Flavor) -> syn::Result<Self> {
        let mut o = Options::default();
        for meta in metas {
            o.apply(&meta, flavor)?;
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

    /// Applies one `name`, `name = value` or `name(...)`.
    fn apply(&mut self, meta: &Meta, flavor: Flavor) -> syn::Result<()> {
        let key = meta
            .path()
            .get_ident()
            .map(ToString::to_string)
            .ok_or_else(|| syn::Error::new(meta.span(), "expected an option name"))?;
        if let Some(&(_, unit)) = UNITS.iter().find(|(u, _)| *u == key) {
            return self.add_unit(meta, &key, unit, flavor);
        }
        match key.as_str() {
            "expire_in" => {
                if flavor == Flavor::CachedFor {
                    return Err(syn::Error::new(
                        meta.span(),
                        "#[cached_for] takes weeks/days/hours/minutes/seconds; use #[cached(expire_in = ...)]",
                    ));
                }
                self.expire_in = Some(expr_value(meta)?);
            }
            "unless" => self.unless = Some(expr_value(meta)?),
            "local_ram_cache_only" => self.local_ram_cache_only = bool_value(meta)?,
            "shared_redis_cache_only" => self.shared_redis_cache_only = bool_value(meta)?,
            "cache_key_prefix" => self.prefix = Some(expr_value(meta)?),
            "cache_key_with_func_args" => self.with_func_args = Some(bool_value(meta)?),
            "cache_key_with_full_args" => self.full_args = bool_value(meta)?,
            "ignore" | "args_to_ignore" => self.ignore.extend(ident_list(meta)?),
            "ignore_self" => self.ignore_self = bool_value(meta)?,
            "cache_none_values" => self.cache_none_values = bool_value(meta)?,
            "on_cache_computed" => self.on_cache_computed = Some(expr_value(meta)?),
            "cache_key_with_request_path" => self.request_path = bool_value(meta)?,
            "cache_key_with_query_string" => self.query_string = bool_value(meta)?,
            "node" => self.node = Some(expr_value(meta)?),
            "name" => self.name = Some(str_value(meta)?),
            _ => {
                return Err(syn::Error::new(
                    meta.span(),
                    format!(
                        "unknown option `{key}`; {} takes: {}",
                        flavor.attribute(),
                        flavor.valid_options()
                    ),
                ))
            }
        }
        Ok(())
    }

    /// Adds `#[cached_for]`'s `key = n` (n units of `unit` seconds).
    fn add_unit(&mut self, meta: &Meta, key: &str, unit: u64, flavor: Flavor) -> syn::Result<()> {
        if flavor == Flavor::Cached {
            return Err(syn::Error::new(
                meta.span(),
                format!(
                    "`{key}` belongs to #[cached_for]; #[cached] takes `expire_in = <Duration>`"
                ),
            ));
        }
        let n = int_value(meta)?;
        self.seconds = n
            .checked_mul(unit)
            .and_then(|s| self.seconds.checked_add(s))
            .ok_or_else(|| syn::Error::new(meta.span(), "expiry too large"))?;
        self.has_units = true;
        Ok(())
    }

    /// Whether `self` is left out of the key (`ignore_self` or `ignore = [self]`).
    pub(crate) fn ignores_self(&self) -> bool {
        self.ignore_self || self.ignore.iter().any(|i| i == "self")
    }

    /// The configured expiry as an `Option<Duration>` expression.
    pub(crate) fn expiry(&self) -> TokenStream2 {
        match (&self.expire_in, self.has_units) {
            (Some(e), _) => quote!(::core::option::Option::Some(#e)),
            (None, true) => {
                let s = self.seconds;
                quote!(::core::option::Option::Some(::std::time::Duration::from_secs(#s)))
            }
            (None, false) => quote!(::core::option::Option::None),
        }
    }

    /// The builder calls that apply these options.
    pub(crate) fn builder_calls(&self) -> TokenStream2 {
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

fn str_value(meta: &Meta) -> syn::Result<LitStr> {
    match expr_value(meta)? {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s),
        other => Err(syn::Error::new(
            other.span(),
            "`name` takes a string literal",
        )),
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
            Expr::Path(p) => p
                .path
                .get_ident()
                .cloned()
                .ok_or_else(|| syn::Error::new(p.span(), "expected an argument name")),
            other => Err(syn::Error::new(other.span(), "expected an argument name")),
        })
        .collect()
}
