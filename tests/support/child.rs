//! This test binary run again as a child process, executing one of its
//! `#[ignore]`d tests: a node in another process, or one to kill with
//! SIGKILL mid-work. The ignored test does nothing unless the variable the
//! parent sets is there.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::spawn::{die_with_parent, on_spawner_thread};

/// A child process running one test of this binary. Killed (SIGKILL) and
/// reaped on drop, whatever happens to the parent test; killed too when the
/// test process dies.
pub struct ChildTest {
    process: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl ChildTest {
    /// Runs the ignored test `name`, alone, with `var` set to `value`. Its
    /// stdout is read line by line (see [`line_with`](Self::line_with)),
    /// its stdin written with [`send`](Self::send).
    pub fn spawn(name: &str, var: &str, value: &str) -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            name,
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env(var, value)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let mut process = on_spawner_thread(move || cmd.spawn().expect("spawn child test process"));
        let stdin = process.stdin.take();
        let stdout = process.stdout.take().expect("child stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildTest {
            process,
            stdin,
            lines,
        }
    }

    /// Waits `within` for a line of the child's stdout containing `marker`,
    /// and returns what follows the marker on it. (libtest prints
    /// `test <name> ... ` before the test's own output, on the same line.)
    pub async fn line_with(&mut self, marker: &str, within: Duration) -> String {
        let seen = tokio::time::timeout(within, async {
            while let Some(line) = self.lines.recv().await {
                if let Some(at) = line.find(marker) {
                    return Some(line[at + marker.len()..].to_string());
                }
            }
            None
        })
        .await;
        match seen {
            Ok(Some(rest)) => rest,
            Ok(None) => panic!("the child process exited before printing {marker:?}"),
            Err(_) => panic!("the child process did not print {marker:?} within {within:?}"),
        }
    }

    /// Writes `line` and a newline to the child's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("child stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to the child");
    }

    /// Waits `within` for the child to exit by itself, and returns how.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.process.try_wait().expect("child status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the child process did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for ChildTest {
    fn drop(&mut self) {
        self.kill();
    }
}
