#[cachenode::cached(layers = Disk)]
async fn square(x: u32) -> u32 {
    x * x
}

fn main() {}
