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
    /// `#[cached]`: expiry as `ttl = <impl Into<Ttl>>`.
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
            Flavor::Cached => "ttl",
            Flavor::CachedFor => "weeks, days, hours, minutes, seconds",
        };
        format!("{expiry}, {COMMON_OPTIONS}")
    }
}

/// The options both attributes take (beside the expiry).
const COMMON_OPTIONS: &str = "name, node, unless, ignore (or ignore_args), ignore_self, \
     layers, key_prefix, key_args, cache_none, on_computed, key_with_request_path, \
     key_with_query_string";

/// AlanCache's option names, each with the option that replaced it.
const PYTHON_NAMES: [(&str, &str); 12] = [
    ("expire_in", "ttl = <Duration or Ttl>"),
    ("local_ram_cache_only", "layers = Ram"),
    ("shared_redis_cache_only", "layers = Redis"),
    ("key_prefix", "key_prefix"),
    ("cache_key_with_func_args", "key_args = Hashed (or Omitted)"),
    ("cache_key_with_full_args", "key_args = Each"),
    ("ignore_args", "ignore = [..]"),
    ("cache_none", "cache_none"),
    ("on_computed", "on_computed"),
    ("key_with_request_path", "key_with_request_path"),
    ("key_with_query_string", "key_with_query_string"),
    (
        "ignore_cls",
        "nothing: an associated function has no receiver to ignore",
    ),
];

/// The values `layers = ..` takes.
const LAYERS: [&str; 3] = ["Both", "Ram", "Redis"];
/// The values `key_args = ..` takes.
const KEY_ARGS: [&str; 3] = ["Hashed", "Each", "Omitted"];

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
    pub(crate) ttl: Option<Expr>,
    /// `#[cached_for]`'s units, summed.
    pub(crate) seconds: u64,
    pub(crate) has_units: bool,
    pub(crate) unless: Option<Expr>,
    /// `Both`, `Ram` or `Redis`.
    pub(crate) layers: Option<syn::Ident>,
    pub(crate) prefix: Option<Expr>,
    /// `Hashed`, `Each` or `Omitted`.
    pub(crate) key_args: Option<syn::Ident>,
    pub(crate) ignore: Vec<syn::Ident>,
    pub(crate) ignore_self: bool,
    pub(crate) cache_none: bool,
    pub(crate) on_computed: Option<Expr>,
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
            "ttl" => {
                if flavor == Flavor::CachedFor {
                    return Err(syn::Error::new(
                        meta.span(),
                        "#[cached_for] takes weeks/days/hours/minutes/seconds; use #[cached(ttl = ...)]",
                    ));
                }
                self.ttl = Some(expr_value(meta)?);
            }
            "unless" => self.unless = Some(expr_value(meta)?),
            "layers" => self.layers = Some(choice(meta, "layers", &LAYERS)?),
            "key_prefix" => self.prefix = Some(expr_value(meta)?),
            "key_args" => self.key_args = Some(choice(meta, "key_args", &KEY_ARGS)?),
            "ignore" | "ignore_args" => self.ignore.extend(ident_list(meta)?),
            "ignore_self" => self.ignore_self = bool_value(meta)?,
            "cache_none" => self.cache_none = bool_value(meta)?,
            "on_computed" => self.on_computed = Some(expr_value(meta)?),
            "key_with_request_path" => self.request_path = bool_value(meta)?,
            "key_with_query_string" => self.query_string = bool_value(meta)?,
            "node" => self.node = Some(expr_value(meta)?),
            "name" => self.name = Some(str_value(meta)?),
            _ => {
                if let Some((_, now)) = PYTHON_NAMES.iter().find(|(old, _)| *old == key) {
                    return Err(syn::Error::new(
                        meta.span(),
                        format!("`{key}` is AlanCache's name; cachenode's is `{now}`"),
                    ));
                }
                return Err(syn::Error::new(
                    meta.span(),
                    format!(
                        "unknown option `{key}`; {} takes: {}",
                        flavor.attribute(),
                        flavor.valid_options()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Adds `#[cached_for]`'s `key = n` (n units of `unit` seconds).
    fn add_unit(&mut self, meta: &Meta, key: &str, unit: u64, flavor: Flavor) -> syn::Result<()> {
        if flavor == Flavor::Cached {
            return Err(syn::Error::new(
                meta.span(),
                format!("`{key}` belongs to #[cached_for]; #[cached] takes `ttl = <Duration>`"),
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

    /// The configured TTL as a `cachenode::Ttl` expression.
    pub(crate) fn expiry(&self) -> TokenStream2 {
        match (&self.ttl, self.has_units) {
            (Some(e), _) => quote!(::core::convert::Into::<::cachenode::Ttl>::into(#e)),
            (None, true) => {
                let s = self.seconds;
                quote!(::cachenode::Ttl::After(::std::time::Duration::from_secs(#s)))
            }
            (None, false) => quote!(::cachenode::Ttl::Default),
        }
    }

    /// The builder calls that apply these options.
    pub(crate) fn builder_calls(&self) -> TokenStream2 {
        let mut calls = TokenStream2::new();
        if self.ttl.is_some() || self.has_units {
            let ttl = self.expiry();
            calls.extend(quote!(.ttl(#ttl)));
        }
        if let Some(layers) = &self.layers {
            calls.extend(quote!(.layers(::cachenode::Layers::#layers)));
        }
        match &self.prefix {
            Some(Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            })) => calls.extend(quote!(.key_prefix(#s))),
            Some(e) => calls.extend(quote!(.key_prefix_from({
                let __prefix = #e;
                move || ::std::string::ToString::to_string(&__prefix())
            }))),
            None => {}
        }
        if let Some(mode) = &self.key_args {
            calls.extend(quote!(.key_args(::cachenode::ArgsInKey::#mode)));
        }
        if self.cache_none {
            calls.extend(quote!(.cache_none(true)));
        }
        if let Some(e) = &self.on_computed {
            calls.extend(quote!(.on_computed(#e)));
        }
        if self.request_path {
            calls.extend(quote!(.key_with_request_path(true)));
        }
        if self.query_string {
            calls.extend(quote!(.key_with_query_string(true)));
        }
        calls
    }
}

/// `option = Name`, where `Name` is one of `allowed`.
fn choice(meta: &Meta, option: &str, allowed: &[&str]) -> syn::Result<syn::Ident> {
    let listed = allowed.join(", ");
    match expr_value(meta)? {
        Expr::Path(p) => match p.path.get_ident() {
            Some(id) if allowed.iter().any(|a| id == a) => Ok(id.clone()),
            _ => Err(syn::Error::new(
                p.span(),
                format!("`{option}` takes one of: {listed}"),
            )),
        },
        other => Err(syn::Error::new(
            other.span(),
            format!("`{option}` takes one of: {listed}"),
        )),
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
