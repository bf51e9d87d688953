#[cachenode::cached(expire_in = std::time::Duration::from_secs(30))]
async fn square(x: u32) -> u32 {
    x * x
}

#[cachenode::cached_for(minutes = 1, ttl = 30)]
async fn cube(x: u32) -> u32 {
    x * x * x
}

fn main() {}
