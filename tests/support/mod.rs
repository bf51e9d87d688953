//! Test support, shared by every test file (`mod support;`).
//!
//! - [`server`]: real `redis-server` processes on free loopback ports, each
//!   owned by one test and killed on drop, even when the test panics; it
//!   never touches a server it did not start. Also `MONITOR`, TLS servers.
//! - [`cluster`]: a real six-server Redis Cluster on loopback.
//! - [`proxy`]: a TCP proxy to cut one node off, slow it down, or fail over.
//! - [`acl`]: the README's ACL and a user restricted to a namespace.
//! - [`nodes`]: how a test file builds its nodes; what a node holds in RAM.
//! - [`bus`]: the bus's counter and log on the server; waits for nodes to
//!   apply what was published.
//! - [`wait`]: polling a condition.
//! - [`child`]: this test binary run again as a child process.
//! - [`spawn`]: how every process above is started, so that none outlives
//!   the test process, even one that is killed.
//! - [`cli`]: the operator binary as a child process (feature `cli`).
//!
//! Every test binary compiles all of it and uses a part.
#![allow(dead_code, unused_imports)]

pub mod acl;
pub mod bus;
pub mod child;
#[cfg(feature = "cli")]
pub mod cli;
pub mod cluster;
pub mod nodes;
pub mod proxy;
pub mod server;
pub mod spawn;
pub mod wait;

pub use acl::{create_user, user_url, ACL_COMMANDS};
pub use bus::{
    bus_seq, caught_up, dropped_within_a_hop, fill, last_logged_body, log_key,
    log_without_publishing, publish, seq_key, HOP,
};
pub use child::ChildTest;
pub use cluster::TestCluster;
pub use nodes::{connect, health, in_ram, node, node_in, ram_value, subscribed, Nodes, PLAIN};
pub use proxy::Proxy;
#[cfg(feature = "tls")]
pub use server::TlsRedis;
pub use server::{clients, free_port, Monitor, TestRedis};
pub use wait::{eventually, time_until};
