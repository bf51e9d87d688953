#[cachenode::cached(expires = 30)]
async fn square(x: u32) -> u32 {
    x * x
}

fn main() {}
