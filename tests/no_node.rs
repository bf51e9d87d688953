//! A cached function called before any node is installed: it runs uncached,
//! its deletions do nothing, and that is logged once per function (no
//! global node is ever installed in this test binary).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

static CALLS: AtomicU32 = AtomicU32::new(0);

#[cachenode::cached]
async fn get_user(id: u64) -> String {
    CALLS.fetch_add(1, Ordering::SeqCst);
    format!("user-{id}")
}

/// Everything the subscriber writes, for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn calls_without_a_node_run_uncached_and_are_logged_once() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    assert_eq!(get_user(1).await, "user-1");
    assert_eq!(get_user(1).await, "user-1");
    assert_eq!(
        CALLS.load(Ordering::SeqCst),
        2,
        "no node: every call computes"
    );
    assert!(!get_user::delete(&1).await.unwrap(), "nothing to delete");

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("no cache node"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning for the function: {log}");
    assert!(
        warnings[0].contains("no_node.get_user") && warnings[0].contains("install_global"),
        "it names the function and the fix: {}",
        warnings[0]
    );
}
