#[cachenode::cached_for(minutes = 3, ignore = [db])]
async fn square(x: u32) -> u32 {
    x * x
}

fn main() {}
