//! A second host for tests that need a client which is *not* on the proxy's loopback: a
//! network namespace made by the test, joined to this one by a veth pair with addresses
//! from 198.18.0.0/15 (the range set aside for network tests, RFC 2544) that exist only on
//! that pair. Everything is removed on drop. Making one needs `CAP_NET_ADMIN` (root);
//! [`RemoteHost::create`] says why it could not, so a test can skip with that message.

use std::net::Ipv4Addr;
use std::process::Command;

/// A network namespace with one link to this host.
pub struct RemoteHost {
    name: String,
    host_link: String,
    subnet: u8,
}

impl RemoteHost {
    /// Makes the namespace `fg<tag><pid>`; `tag` (a few letters) tells apart the hosts of
    /// one test process. The error says which `ip` command failed and why.
    pub fn create(tag: &str) -> Result<RemoteHost, String> {
        let pid = std::process::id();
        let name = format!("fg{tag}{}", pid % 100_000);
        // A /30 of its own per process, so that parallel test processes do not collide.
        let subnet = (pid % 250) as u8 + 1;
        let host = RemoteHost {
            host_link: format!("{name}h"),
            name,
            subnet,
        };
        let (here, there) = (host.host_ip(), host.remote_ip());
        let ns = host.name.clone();
        let peer = format!("{ns}n");
        let steps: [Vec<String>; 8] = [
            vec!["netns".into(), "add".into(), ns.clone()],
            args(&[
                "link",
                "add",
                &host.host_link,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ]),
            args(&["link", "set", &peer, "netns", &ns]),
            args(&["addr", "add", &format!("{here}/30"), "dev", &host.host_link]),
            args(&["link", "set", &host.host_link, "up"]),
            args(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{there}/30"),
                "dev",
                &peer,
            ]),
            args(&["-n", &ns, "link", "set", &peer, "up"]),
            args(&["-n", &ns, "link", "set", "lo", "up"]),
        ];
        for step in steps {
            let out = Command::new("ip")
                .args(&step)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`ip {}` failed: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(host)
    }

    /// This host's end of the link (where a proxy listens for the remote host).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, 1)
    }

    /// The remote host's address, as the proxy sees its clients.
    pub fn remote_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, 2)
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        // Deleting the namespace removes the pair, but not always before this returns.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
    }
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}
