//! `fencegate health`, the container health check: exit status 0 and a `healthy:` line
//! while a real `fencegate serve` answers on its metrics endpoint (the address given as a
//! flag, as `FENCEGATE_METRICS_LISTEN`, or read from serve's config file), 1 and an
//! `unhealthy:` line once it is gone, when something else answers, and when nothing answers
//! in time.
//!
//! Runs the real binary; the proxy's upstream is a closed port (no client connects, so no
//! PostgreSQL is needed).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

mod support;
use support::{free_port, DEADLINE};

/// `fencegate health ARGS` with `env` set and no FENCEGATE_* variable inherited.
fn health(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fencegate"));
    cmd.arg("health").args(args);
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("FENCEGATE_")) {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    let Output { status, stdout, .. } = cmd.output().expect("run fencegate health");
    let line = String::from_utf8_lossy(&stdout).trim_end().to_string();
    (status.code().unwrap_or(-1), line)
}

/// A `fencegate serve` reading `config`; killed on drop.
struct Serve(Child);

impl Serve {
    fn start(config: &Path) -> Serve {
        let child = Command::new(env!("CARGO_BIN_EXE_fencegate"))
            .args(["serve", "--config"])
            .arg(config)
            .env("FENCEGATE_LOG", "warn")
            .spawn()
            .expect("start fencegate serve");
        Serve(child)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn healthy_while_serving_and_unhealthy_once_stopped() {
    let dir = std::env::temp_dir().join(format!("fencegate-health-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("fencegate.toml");
    let metrics = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        &config,
        format!(
            "listen = '127.0.0.1:{}'\nupstream = '127.0.0.1:{}'\nmetrics_listen = '{metrics}'\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let mut serve = Serve::start(&config);

    // From the config file, the way the container image's HEALTHCHECK finds it.
    let start = Instant::now();
    let (code, line) = loop {
        let (code, line) = health(&[], &[("FENCEGATE_CONFIG", config_arg)]);
        if code == 0 || start.elapsed() > DEADLINE {
            break (code, line);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, 0, "{line}");
    let expected = format!(
        "healthy: fencegate {} at {metrics}, 0 session(s) open",
        env!("CARGO_PKG_VERSION")
    );
    assert!(line.starts_with(&expected), "{line}");
    // The flag and the environment name the address too, and win over the file.
    assert_eq!(health(&["--metrics-listen", &metrics], &[]).0, 0);
    assert_eq!(health(&[], &[("FENCEGATE_METRICS_LISTEN", &metrics)]).0, 0);
    let closed = format!("127.0.0.1:{}", free_port());
    let (code, _) = health(
        &["--metrics-listen", &closed],
        &[("FENCEGATE_CONFIG", config_arg)],
    );
    assert_eq!(code, 1, "the flag must win over the file");

    let status = Command::new("kill")
        .args(["-TERM", &serve.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(serve.0.wait().unwrap().success());
    let (code, line) = health(&["--config", config_arg], &[]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with(&format!("unhealthy: nothing answers at {metrics}: ")),
        "{line}"
    );
    let (code, line) = health(&["--config", "/nonexistent/fencegate.toml"], &[]);
    assert_eq!(code, 1, "{line}");
    assert!(line.starts_with("unhealthy: "), "{line}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unhealthy_when_something_else_answers_or_nothing_answers_in_time() {
    // A server that answers every request with 503.
    let refusing = TcpListener::bind("127.0.0.1:0").unwrap();
    let refusing_addr = refusing.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut conn in refusing.incoming().flatten() {
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request);
            let _ = conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        }
    });
    let (code, line) = health(&["--metrics-listen", &refusing_addr], &[]);
    assert_eq!(code, 1, "{line}");
    assert_eq!(
        line,
        format!("unhealthy: {refusing_addr} answered \"HTTP/1.1 503 Service Unavailable\"")
    );

    // A server that accepts and never answers: the timeout ends the check.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let start = Instant::now();
    let (code, line) = health(
        &["--metrics-listen", &silent_addr, "--timeout", "300ms"],
        &[],
    );
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with(&format!(
            "unhealthy: no complete answer from {silent_addr}: "
        )),
        "{line}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    drop(silent);
}
