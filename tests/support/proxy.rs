//! A TCP proxy in front of a test server: partitions, slow links, failovers.

use std::time::Duration;

/// What a [`Proxy`] does with traffic.
const FORWARD: u8 = 0;
const REFUSE: u8 = 1;
const BLACKHOLE: u8 = 2;

/// A TCP proxy in front of a test server, so that one node can be cut off
/// from Redis while the others keep talking to it (a network partition).
///
/// Runs on its own threads, so it keeps forwarding whatever the test's
/// runtime is doing. Stops (and closes every connection) on drop.
pub struct Proxy {
    port: u16,
    shared: std::sync::Arc<ProxyShared>,
}

struct ProxyShared {
    mode: std::sync::atomic::AtomicU8,
    /// The port new connections are forwarded to.
    target: std::sync::atomic::AtomicU16,
    /// Added before forwarding each chunk, in microseconds.
    delay_us: std::sync::atomic::AtomicU64,
    stop: std::sync::atomic::AtomicBool,
    /// Both ends of every forwarded connection, and the connections held
    /// open without an answer while black-holed.
    conns: std::sync::Mutex<Vec<std::net::TcpStream>>,
}

impl ProxyShared {
    fn close_all(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|p| p.into_inner()));
        for c in conns {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn keep(&self, s: &std::net::TcpStream) {
        if let Ok(c) = s.try_clone() {
            self.conns.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
    }
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `127.0.0.1:target_port`.
    pub fn start(target_port: u16) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = std::sync::Arc::new(ProxyShared {
            mode: std::sync::atomic::AtomicU8::new(FORWARD),
            target: std::sync::atomic::AtomicU16::new(target_port),
            delay_us: std::sync::atomic::AtomicU64::new(0),
            stop: std::sync::atomic::AtomicBool::new(false),
            conns: std::sync::Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                match s.mode.load(Ordering::SeqCst) {
                    REFUSE => drop(client),
                    BLACKHOLE => s.keep(&client),
                    _ => {
                        let target = s.target.load(Ordering::SeqCst);
                        let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        s.keep(&client);
                        s.keep(&server);
                        for (from, to) in [(&client, &server), (&server, &client)] {
                            let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone())
                            else {
                                continue;
                            };
                            let s = s.clone();
                            std::thread::spawn(move || {
                                use std::io::{Read, Write};
                                let mut buf = [0u8; 16 * 1024];
                                loop {
                                    let n = match from.read(&mut buf) {
                                        Ok(0) | Err(_) => break,
                                        Ok(n) => n,
                                    };
                                    let delay = s.delay_us.load(Ordering::Relaxed);
                                    if delay > 0 {
                                        std::thread::sleep(Duration::from_micros(delay));
                                    }
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                }
            }
        });
        Proxy { port, shared }
    }

    /// The proxy's own port (what a replica is pointed at to replicate
    /// through it).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the server behind the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Closes every connection and refuses new ones (they are accepted and
    /// closed at once): Redis looks down to whoever uses this proxy.
    pub fn cut(&self) {
        self.set_mode(REFUSE);
    }

    /// Closes every connection; new ones are accepted but never answered
    /// (a partition that drops packets: connecting hangs, not fails).
    pub fn blackhole(&self) {
        self.set_mode(BLACKHOLE);
    }

    /// Delays every chunk forwarded in either direction by `d` (zero: none),
    /// on existing and new connections: a slow network path.
    pub fn set_delay(&self, d: Duration) {
        self.shared
            .delay_us
            .store(d.as_micros() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every connection and forwards new ones to `port` (a failover
    /// behind one address, as a DNS name or a virtual IP gives).
    pub fn retarget(&self, port: u16) {
        self.shared
            .target
            .store(port, std::sync::atomic::Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Forwards new connections again (black-holed ones are closed).
    pub fn restore(&self) {
        self.set_mode(FORWARD);
    }

    fn set_mode(&self, mode: u8) {
        self.shared
            .mode
            .store(mode, std::sync::atomic::Ordering::SeqCst);
        self.shared.close_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.close_all();
        // Wake the accept loop so that it sees `stop`.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}
