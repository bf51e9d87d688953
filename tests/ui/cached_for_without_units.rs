#[cachenode::cached_for(local_ram_cache_only)]
async fn square(x: u32) -> u32 {
    x * x
}

fn main() {}
