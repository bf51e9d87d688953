#[derive(serde::Serialize, serde::Deserialize)]
struct Report {
    total: u64,
}

#[cachenode::cached]
async fn report(day: u32) -> Report {
    Report { total: day.into() }
}

struct Reports;

impl Reports {
    // The value type of a `Result` is its `Ok` type.
    #[cachenode::cached(ignore_self)]
    async fn monthly(&self, month: u32) -> Result<Report, String> {
        Ok(Report {
            total: month.into(),
        })
    }
}

fn main() {}
