//! What the tests of the `fencegate` binary share: free loopback ports and how long a test
//! waits for the process before it fails.

use std::net::TcpListener;
use std::time::Duration;

/// How long a test waits for the binary to reach a state before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
