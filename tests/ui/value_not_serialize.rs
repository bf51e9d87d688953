#[derive(Clone)]
struct Report {
    total: u64,
}

#[cachenode::cached]
async fn report(day: u32) -> Report {
    Report { total: day.into() }
}

fn main() {}
