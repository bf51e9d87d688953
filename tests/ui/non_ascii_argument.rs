#[cachenode::cached]
async fn price(café: u32) -> u32 {
    café * 2
}

fn main() {}
