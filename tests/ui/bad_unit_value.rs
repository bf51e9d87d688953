#[cachenode::cached_for(minutes = "ten")]
async fn square(x: u32) -> u32 {
    x * x
}

fn main() {}
