#[cachenode::cached]
async fn echo<T: Clone>(x: T) -> T {
    x
}

fn main() {}
