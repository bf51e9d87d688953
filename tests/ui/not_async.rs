#[cachenode::cached]
fn square(x: u32) -> u32 {
    x * x
}

fn main() {}
