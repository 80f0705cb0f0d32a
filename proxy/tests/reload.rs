//! SIGHUP reloads the settings of a running `fencegate serve` instead of ending it: the
//! live settings change (max_connections, log_level), the others are refused with a log
//! line naming them, a file that does not parse is refused, and open sessions stay; a
//! certificate renewed at the same path is presented to sessions that start after the reload.
//!
//! Runs the real binary against a stand-in upstream that accepts connections and never
//! answers (a session then holds its place while it waits for the server), so no
//! PostgreSQL is needed.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::{free_port, DEADLINE};

/// An upstream that accepts and keeps every connection, silent, counting them.
fn silent_upstream() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for conn in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            kept.push(conn);
        }
    });
    (port, accepted)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The proxy process and every line it logged so far.
struct Proxy {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn start(config: &Path) -> Proxy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fencegate"))
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("FENCEGATE_LOG")
            .env_remove("FENCEGATE_LOG_LEVEL")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fencegate");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Proxy { child, log }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn logged(&self, needle: &[&str]) -> bool {
        let log = self.log.lock().unwrap();
        log.iter().any(|l| needle.iter().all(|n| l.contains(n)))
    }

    /// Waits for a log line with every part of `needle`; fails at once, with the log, when
    /// the proxy has exited instead.
    fn wait_logged(&mut self, needle: &[&str]) {
        let start = Instant::now();
        while !self.logged(needle) {
            self.assert_running();
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for a log line with {needle:?}; log: {:#?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_running(&mut self) {
        let status = self.child.try_wait().expect("try_wait");
        assert!(
            status.is_none(),
            "fencegate exited: {status:?}; log: {:#?}",
            self.log.lock().unwrap()
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn startup(port: u16) -> TcpStream {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let params = b"user\0app\0database\0app\0\0";
    let len = (8 + params.len()) as i32;
    let mut packet = len.to_be_bytes().to_vec();
    packet.extend_from_slice(&196608i32.to_be_bytes());
    packet.extend_from_slice(params);
    conn.write_all(&packet).expect("startup");
    conn
}

/// The SQLSTATE of the ErrorResponse the proxy answers with, if it answers within 2 s.
fn answered_sqlstate(conn: &mut TcpStream) -> Option<String> {
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = Vec::new();
    let _ = conn.read_to_end(&mut buf);
    let at = buf.windows(2).position(|w| w == b"\0C".as_slice())?;
    Some(String::from_utf8_lossy(&buf[at + 2..at + 7]).into_owned())
}

/// The proxy's `/status` object.
fn status(metrics_port: u16) -> serde_json::Value {
    let mut conn = TcpStream::connect(("127.0.0.1", metrics_port)).expect("metrics endpoint");
    conn.write_all(b"GET /status HTTP/1.1\r\nHost: fencegate\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Two different free loopback ports (a port freed by the first probe may be handed out
/// again by the second).
fn two_free_ports() -> (u16, u16) {
    let first = TcpListener::bind("127.0.0.1:0").expect("bind");
    let second = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ports = (
        first.local_addr().unwrap().port(),
        second.local_addr().unwrap().port(),
    );
    drop((first, second));
    ports
}

fn write_config(path: &Path, body: &str) {
    std::fs::write(path, body).expect("write config");
}

#[test]
fn sighup_reloads_live_settings_and_refuses_the_rest() {
    let dir = std::env::temp_dir().join(format!("fencegate-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("fencegate.toml");
    let (upstream, accepted) = silent_upstream();
    let (port, metrics) = two_free_ports();
    let settings = |listen: u16| {
        format!(
            "listen = \"127.0.0.1:{listen}\"\nupstream = \"127.0.0.1:{upstream}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\n"
        )
    };
    let base = settings(port);
    write_config(&config, &format!("{base}max_connections = 1\n"));
    let mut proxy = Proxy::start(&config);
    proxy.wait_logged(&["fencegate serving"]);

    // One place: the first session holds it while the server stays silent.
    let _first = startup(port);
    wait_for("the first session upstream", || {
        accepted.load(Ordering::SeqCst) == 1
    });
    let mut refused = startup(port);
    assert_eq!(answered_sqlstate(&mut refused).as_deref(), Some("53300"));
    assert_eq!(status(metrics)["sessions"]["limit"], 1);

    // Raise the limit, ask for debug logs, and try to move the listener.
    let moved = free_port();
    write_config(
        &config,
        &format!(
            "{}max_connections = 2\nlog_level = \"debug\"\n",
            settings(moved)
        ),
    );
    proxy.signal("HUP");
    proxy.wait_logged(&["reload: changed", "max_connections"]);
    proxy.wait_logged(&["listen cannot change while serving"]);
    proxy.assert_running();
    assert_eq!(status(metrics)["sessions"]["limit"], 2);
    assert_eq!(status(metrics)["reloads"]["applied"], 1);
    let _second = startup(port);
    wait_for("a second session under the raised limit", || {
        accepted.load(Ordering::SeqCst) == 2
    });
    assert!(
        TcpStream::connect(("127.0.0.1", moved)).is_err(),
        "the listener did not move"
    );
    // Debug lines now show: a connection that leaves before its startup packet.
    drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
    proxy.wait_logged(&["DEBUG", "session closed"]);

    // A file that does not parse changes nothing.
    write_config(&config, "max_connections = = 1\n");
    proxy.signal("HUP");
    proxy.wait_logged(&["reload refused"]);
    proxy.assert_running();
    assert_eq!(status(metrics)["reloads"]["refused"], 1);
    let mut third = startup(port);
    assert_eq!(
        answered_sqlstate(&mut third).as_deref(),
        Some("53300"),
        "still 2 places, both held"
    );

    proxy.signal("TERM");
    wait_for("fencegate to exit", || {
        matches!(proxy.child.try_wait(), Ok(Some(_)))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes a self-signed certificate for `name` and its key over `cert` and `key`.
fn make_certificate(name: &str, cert: &Path, key: &Path) {
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", &format!("/CN={name}")])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .stderr(Stdio::null())
        .status()
        .expect("run openssl req");
    assert!(status.success(), "openssl req for {name}");
}

/// The subject of the certificate the proxy presents to a client that asks for TLS
/// (SSLRequest, then the handshake), as `openssl s_client` reports it.
fn presented_subject(port: u16) -> String {
    let output = Command::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with("subject="))
        .map(str::to_string)
        .unwrap_or_else(|| format!("no certificate presented: {text}"))
}

#[test]
fn sighup_presents_a_renewed_certificate_to_new_sessions() {
    let dir = std::env::temp_dir().join(format!("fencegate-reload-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    make_certificate("before-renewal", &cert, &key);
    let config = dir.join("fencegate.toml");
    let (upstream, _) = silent_upstream();
    let (port, metrics) = two_free_ports();
    write_config(
        &config,
        &format!(
            "listen = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{upstream}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n"
        ),
    );
    let mut proxy = Proxy::start(&config);
    proxy.wait_logged(&["fencegate serving"]);
    assert!(
        presented_subject(port).contains("CN = before-renewal"),
        "{}",
        presented_subject(port)
    );

    // Renewed in place (same paths, as certbot or a secret mount does), then SIGHUP.
    make_certificate("after-renewal", &cert, &key);
    assert!(presented_subject(port).contains("before-renewal"));
    proxy.signal("HUP");
    wait_for("the reload to be applied", || {
        status(metrics)["reloads"]["applied"] == 1
    });
    proxy.assert_running();
    let subject = presented_subject(port);
    assert!(subject.contains("CN = after-renewal"), "{subject}");

    // A broken key leaves the renewed certificate in place.
    std::fs::write(&key, "not a key").unwrap();
    proxy.signal("HUP");
    proxy.wait_logged(&["client TLS not changed"]);
    proxy.assert_running();
    let subject = presented_subject(port);
    assert!(subject.contains("CN = after-renewal"), "{subject}");
    let _ = std::fs::remove_dir_all(&dir);
}
