//! The driver: starts Redis if needed and the instances, sends load and
//! invalidations, shows a live view and a summary.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::request;
use crate::instance::{Stats, User, DELETION_CHECK_FREQUENCY};

/// Child processes, killed when dropped (normal end, error or Ctrl-C).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One invalidation and how long each instance took to serve the new value.
struct Check {
    id: u64,
    /// Per instance: time from the rename's acknowledgement to the first
    /// read that returned the new name (None: never within the wait).
    fresh_after: Vec<Option<Duration>>,
}

pub async fn run(args: &[String]) -> i32 {
    let n: usize = crate::flag(args, "--instances", 3).clamp(1, 20);
    let duration = Duration::from_secs(crate::flag(args, "--duration", 20));
    let rate: u64 = crate::flag(args, "--rate", 200).clamp(1, 5000);
    let every = Duration::from_secs(crate::flag(args, "--invalidate-every", 2).max(1));
    let keys: u64 = crate::flag(args, "--keys", 100).max(20);
    let ram_mb: u64 = crate::flag(args, "--ram-mb", 64).max(1);
    let faults = args.iter().any(|a| a == "--faults");
    let report: Option<String> = args
        .iter()
        .position(|a| a == "--report")
        .and_then(|i| args.get(i + 1).cloned());

    let mut children = Children(Vec::new());
    let url = match std::env::var("REDIS_URL") {
        Ok(url) => url,
        Err(_) => match start_redis() {
            Ok((url, child)) => {
                children.0.push(child);
                url
            }
            Err(msg) => {
                eprintln!("{msg}");
                return 1;
            }
        },
    };
    if let Err(e) = reset(&url).await {
        eprintln!("cannot use Redis at {url}: {e}");
        return 1;
    }

    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot find this program: {e}");
            return 1;
        }
    };
    let ports: Vec<u16> = (1..=n as u16).map(|i| 8080 + i).collect();
    for port in &ports {
        let child = Command::new(&exe)
            .args([
                "--instance",
                "--port",
                &port.to_string(),
                "--redis-url",
                &url,
                "--ram-mb",
                &ram_mb.to_string(),
            ])
            .stdin(Stdio::null())
            .spawn();
        match child {
            Ok(c) => children.0.push(c),
            Err(e) => {
                eprintln!("cannot start an instance: {e}");
                return 1;
            }
        }
    }
    for port in &ports {
        let up = wait_until(Duration::from_secs(15), || async {
            request(*port, "GET", "/stats")
                .await
                .is_ok_and(|(s, _)| s == 200)
        })
        .await;
        if !up {
            eprintln!("instance on port {port} did not start (is the port free?)");
            return 1;
        }
    }
    println!(
        "{n} instances up on ports {ports:?}, Redis at {url}; running {duration:?} at {rate} req/s"
    );

    let pids: Vec<u32> = children
        .0
        .iter()
        .rev()
        .take(n)
        .rev()
        .map(Child::id)
        .collect();
    let load = tokio::spawn(load(ports.clone(), rate, duration, keys));
    let fault_task = faults.then(|| tokio::spawn(inject_faults(url.clone(), duration)));
    let mut samples: Vec<String> = Vec::new();
    let mut next_sample = Instant::now();
    let mut checks = Vec::new();
    let started = Instant::now();
    let mut next_view = Instant::now();
    let mut next_rename = Instant::now() + every;
    let mut k = 0u64;
    loop {
        let now = Instant::now();
        if now >= started + duration {
            break;
        }
        if now >= next_view {
            view(&ports, started.elapsed(), &checks).await;
            next_view = now + Duration::from_secs(1);
        }
        if report.is_some() && now >= next_sample {
            for (port, pid) in ports.iter().zip(&pids) {
                if let Some(s) = stats(*port).await {
                    samples.push(format!(
                        "{:.0},{port},{},{},{},{}",
                        started.elapsed().as_secs_f64(),
                        rss_kib(*pid).unwrap_or(0),
                        s.ram_bytes,
                        s.ram_entries,
                        s.ram_capacity_bytes,
                    ));
                }
            }
            next_sample = now + Duration::from_secs(10);
        }
        if now >= next_rename {
            k += 1;
            match rename_and_check(&ports, k % 20, k).await {
                Ok(c) => checks.push(c),
                Err(e) => eprintln!("rename failed: {e}"),
            }
            next_rename = Instant::now() + every;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                println!("\nstopping");
                return 130;
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let (sent, errors) = load.await.unwrap_or((0, 0));
    let injected = match fault_task {
        Some(t) => t.await.unwrap_or(0),
        None => 0,
    };
    if let Some(path) = &report {
        let mut csv = String::from("seconds,port,rss_kib,ram_bytes,ram_entries,ram_budget_bytes\n");
        for line in &samples {
            csv.push_str(line);
            csv.push('\n');
        }
        if let Err(e) = std::fs::write(path, csv) {
            eprintln!("cannot write {path}: {e}");
        }
    }
    if faults {
        println!("faults injected: {injected}");
    }
    view(&ports, started.elapsed(), &checks).await;
    summary(&ports, &checks, sent, errors)
}

/// Starts a throwaway redis-server on a free loopback port.
fn start_redis() -> Result<(String, Child), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|_| {
            "redis-server is not installed: run the demo with `./scripts/demo.sh`, which installs it \
             (Debian/Ubuntu), or install it yourself, or point REDIS_URL at a Redis you own"
                .to_owned()
        })?;
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .is_ok()
        {
            return Ok((url, child));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("redis-server did not start".to_owned())
}

/// Clears what a previous run left: the demo's cache and database keys.
async fn reset(url: &str) -> Result<(), String> {
    let node = cachenode::CacheNode::builder()
        .redis_url(url)
        .namespace("demo")
        .build()
        .await
        .map_err(|e| e.to_string())?;
    node.delete_all().await.map_err(|e| e.to_string())?;
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    for id in 0..20 {
        let _: () = redis::cmd("DEL")
            .arg(format!("demo-db:user:{id}"))
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    }
    node.shutdown().await;
    Ok(())
}

/// Reads random users from random instances at `rate` per second.
/// Resident memory of process `pid`, from /proc (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every few seconds, one fault on Redis: the bus subscriptions killed, or
/// every client paused for 300 ms. Returns how many were injected.
async fn inject_faults(url: String, duration: Duration) -> u64 {
    let end = Instant::now() + duration;
    let mut n = 0;
    while Instant::now() + Duration::from_secs(4) < end {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let Ok(client) = redis::Client::open(url.as_str()) else {
            continue;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        let mut cmd = redis::cmd("CLIENT");
        if n % 2 == 0 {
            cmd.arg("KILL").arg("TYPE").arg("pubsub");
        } else {
            cmd.arg("PAUSE").arg(300);
        }
        let _: redis::RedisResult<redis::Value> = cmd.query_async(&mut conn).await;
        n += 1;
    }
    n
}

async fn load(ports: Vec<u16>, rate: u64, duration: Duration, keys: u64) -> (u64, u64) {
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1000 * per_tick / rate));
    let end = Instant::now() + duration;
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut inflight = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        for _ in 0..per_tick {
            let port = ports[fastrand::usize(..ports.len())];
            // A skewed key choice: a few hot users, a long tail.
            let id = (fastrand::f64().powi(3) * keys as f64) as u64;
            inflight.push(tokio::spawn(async move {
                request(port, "GET", &format!("/users/{id}")).await
            }));
            sent += 1;
        }
        if inflight.len() > 256 {
            for h in inflight.drain(..) {
                if !matches!(h.await, Ok(Ok((200, _)))) {
                    errors += 1;
                }
            }
        }
    }
    for h in inflight {
        if !matches!(h.await, Ok(Ok((200, _)))) {
            errors += 1;
        }
    }
    (sent, errors)
}

/// Renames user `id` through the first instance, then polls every instance
/// until it serves the new name.
async fn rename_and_check(ports: &[u16], id: u64, k: u64) -> Result<Check, String> {
    // Make sure every instance holds the current value in RAM first.
    for port in ports {
        request(*port, "GET", &format!("/users/{id}")).await?;
    }
    let name = format!("renamed-{k}");
    let (status, body) = request(ports[0], "PUT", &format!("/users/{id}?name={name}")).await?;
    if status != 204 {
        return Err(format!("rename answered {status}: {body}"));
    }
    let acked = Instant::now();
    let wait = DELETION_CHECK_FREQUENCY * 3;
    let mut fresh_after = Vec::new();
    for port in ports {
        let mut seen = None;
        while acked.elapsed() < wait {
            if let Ok((200, body)) = request(*port, "GET", &format!("/users/{id}")).await {
                if serde_json::from_str::<User>(&body).is_ok_and(|u| u.name == name) {
                    seen = Some(acked.elapsed());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        fresh_after.push(seen);
    }
    Ok(Check { id, fresh_after })
}

async fn stats(port: u16) -> Option<Stats> {
    let (status, body) = request(port, "GET", "/stats").await.ok()?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

async fn view(ports: &[u16], elapsed: Duration, checks: &[Check]) {
    let mut out = String::new();
    out.push_str("\x1b[2J\x1b[H");
    out.push_str(&format!(
        "cachenode multi-instance demo   t = {:>4.0} s   invalidations checked: {}\n\n",
        elapsed.as_secs_f64(),
        checks.len()
    ));
    out.push_str(
        "instance  requests  RAM hit  Redis hit  computed  inval. applied  propagation p99  bus\n",
    );
    for port in ports {
        match stats(*port).await {
            Some(s) => {
                let calls = (s.ram_hits + s.redis_hits + s.computed).max(1) as f64;
                out.push_str(&format!(
                    ":{port:<7} {:>8}  {:>6.1}%  {:>8.1}%  {:>8}  {:>14}  {:>12.2} ms  {}\n",
                    s.requests,
                    100.0 * s.ram_hits as f64 / calls,
                    100.0 * s.redis_hits as f64 / calls,
                    s.computed,
                    s.invalidations_applied,
                    s.propagation_p99_ms,
                    if s.bus_connected { "up" } else { "DOWN" },
                ));
            }
            None => out.push_str(&format!(":{port:<7} (not answering)\n")),
        }
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}

fn summary(ports: &[u16], checks: &[Check], sent: u64, errors: u64) -> i32 {
    println!(
        "\nsummary: {sent} reads sent, {errors} failed; {} renames checked",
        checks.len()
    );
    let mut all_fresh = true;
    for (i, port) in ports.iter().enumerate() {
        let times: Vec<Duration> = checks.iter().filter_map(|c| c.fresh_after[i]).collect();
        let missed = checks.len() - times.len();
        all_fresh &= missed == 0;
        let worst = times.iter().max().copied().unwrap_or_default();
        println!(
            "  instance :{port}: served the new value after every rename: {}   worst time to a fresh read {:.1} ms",
            if missed == 0 { "yes".to_owned() } else { format!("NO ({missed} missed)") },
            worst.as_secs_f64() * 1e3,
        );
    }
    if let Some(c) = checks.last() {
        println!("  (last renamed user: {})", c.id);
    }
    println!(
        "  (a fresh read recomputes from the 30 ms database; the staleness bound is \
         deletion_check_period = {DELETION_CHECK_FREQUENCY:?} + one Redis round trip)"
    );
    if all_fresh && errors == 0 {
        println!("every instance dropped every invalidated value");
        0
    } else {
        1
    }
}

async fn wait_until<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + within;
    while Instant::now() < end {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
