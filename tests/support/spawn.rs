//! How the tests start processes, so that none outlives the test process.
//!
//! A test that fails still drops what it owns (servers, children), and the
//! drops kill them. A test binary that is itself killed (SIGKILL, a CI
//! timeout, an interrupted `cargo test`) runs no `Drop`: so every process
//! the tests start asks the kernel, before it runs, to be killed when its
//! parent goes (`PR_SET_PDEATHSIG`, Linux). The kernel ties that to the
//! *thread* that spawned the child, not the process: servers and child test
//! processes are therefore spawned from one thread that lives as long as
//! the test process ([`on_spawner_thread`]), since a test's own thread, a
//! runtime worker or a blocking-pool thread may end while they should run.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// Makes the process `cmd` spawns get SIGKILL when the thread spawning it
/// ends (for one spawned by [`on_spawner_thread`]: when the test process
/// ends, however it ends). A no-op off Linux.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id();
        // SAFETY: the closure runs in the child between fork and exec and
        // makes only async-signal-safe system calls (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || pdeathsig(parent));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// [`die_with_parent`] for a tokio command (the CLI binary, spawned on the
/// test's own runtime, which lives as long as the test).
pub fn tokio_die_with_parent(cmd: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: as in `die_with_parent`.
        unsafe {
            cmd.pre_exec(move || pdeathsig(parent));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// In the child, before exec: SIGKILL when the parent thread ends; exits at
/// once if the parent already ended (after the fork, before this call).
#[cfg(target_os = "linux")]
fn pdeathsig(parent: u32) -> std::io::Result<()> {
    // SAFETY: plain system calls with constant arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() as u32 != parent {
            libc::_exit(1);
        }
    }
    Ok(())
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `f` on the thread that spawns every server and child process of
/// this test process, and returns what it returns.
pub fn on_spawner_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    static JOBS: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let jobs = JOBS.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("test-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    });
    let (done, result) = mpsc::channel();
    // A panic in `f` (a spawn that failed) is the caller's: it is carried
    // back and resumed here, and the spawner thread goes on.
    let job: Job = Box::new(move || {
        let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    jobs.lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .expect("spawner thread runs");
    match result.recv().expect("spawner thread answers") {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
