#[cachenode::cached(local_ram_cache_only, shared_redis_cache_only)]
async fn square(x: u32) -> u32 {
    x * x
}

fn main() {}
