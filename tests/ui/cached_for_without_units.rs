#[cachenode::cached_for(layers = Ram)]
async fn square(x: u32) -> u32 {
    x * x
}

fn main() {}
