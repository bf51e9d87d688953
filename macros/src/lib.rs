//! The attribute macros of [cachenode](https://docs.rs/cachenode):
//! `#[cached(...)]` and `#[cached_for(...)]` over async functions and
//! methods. Use them through the `cachenode` crate, which re-exports them.
//!
//! * [`options`](crate::options) parses and checks the attribute's options;
//! * [`expand`](crate::expand) generates the cached function and its
//!   introspection.

use proc_macro::TokenStream;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{ImplItemFn, Meta, Token};

mod expand;
mod options;

use options::{Flavor, Options};

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
    entry(args, item, Flavor::Cached)
}

/// Caches an async function's value for a time given in units
/// (`weeks`, `days`, `hours`, `minutes`, `seconds`); see `cachenode`'s
/// documentation.
///
/// A `Result` return type (an alias included) caches only `Ok` values, as
/// with [`macro@cached`].
#[proc_macro_attribute]
pub fn cached_for(args: TokenStream, item: TokenStream) -> TokenStream {
    entry(args, item, Flavor::CachedFor)
}

/// Parses the options and the function, and expands them (or gives the
/// first error as a compile error).
fn entry(args: TokenStream, item: TokenStream, flavor: Flavor) -> TokenStream {
    let result = Punctuated::<Meta, Token![,]>::parse_terminated
        .parse(args)
        .and_then(|metas| Options::parse(metas, flavor))
        .and_then(|opts| {
            let func: ImplItemFn = syn::parse(item)?;
            expand::expand(opts, func)
        });
    match result {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}
