#[cachenode::cached(cache_none = 1)]
async fn maybe(x: u32) -> Option<u32> {
    Some(x)
}

fn main() {}
