struct Db;

#[cachenode::cached]
async fn lookup(db: &Db, id: u64) -> u64 {
    let _ = db;
    id
}

fn main() {}
