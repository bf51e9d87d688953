struct Repo {
    node: cachenode::CacheNode,
}

impl Repo {
    #[cachenode::cached(node = self.node)]
    async fn count(&self, table: String) -> u64 {
        table.len() as u64
    }
}

fn main() {}
