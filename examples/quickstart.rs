//! The smallest cachenode program.
//!
//! Runs with no server at all (a RAM-only node), or against Redis when
//! `REDIS_URL` is set:
//!
//! ```text
//! cargo run --example quickstart
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart
//! ```

use std::time::{Duration, Instant};

use cachenode::{CacheNode, Ttl};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// Stands for a slow database query.
async fn load_user(id: u64) -> User {
    tokio::time::sleep(Duration::from_millis(200)).await;
    User {
        id,
        name: format!("user-{id}"),
    }
}

#[tokio::main]
async fn main() -> cachenode::Result<()> {
    let node = match std::env::var("REDIS_URL") {
        Ok(url) => {
            CacheNode::builder()
                .redis_url(url)
                .namespace("quickstart")
                .build()
                .await?
        }
        Err(_) => CacheNode::builder().without_redis().build().await?,
    };
    println!("node: {node:?}");

    for round in 1..=3 {
        let started = Instant::now();
        let user = match node.get::<User>("user:42").await? {
            Some(user) => user,
            None => {
                let user = load_user(42).await;
                node.set("user:42", &user, Ttl::After(Duration::from_secs(30)))
                    .await?;
                user
            }
        };
        println!("round {round}: {user:?} in {:?}", started.elapsed());
    }

    println!("deleted: {}", node.delete("user:42").await?);
    println!("after delete: {:?}", node.get::<User>("user:42").await?);
    Ok(())
}
