//! Test hosts: network namespaces joined to the test's own namespace by
//! veth pairs, so that one machine plays several hosts. A process started
//! with `ip netns exec NAME` sees only its host's interfaces; it reaches the
//! test's namespace (where PostgreSQL and Redis listen) over its veth.
//!
//! Needs root (CI runs as root). Every namespace and link is removed when
//! the [`TestHosts`] is dropped; names carry the test process's pid, so
//! concurrent runs never collide.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// One test host: a network namespace and its link to the test's namespace.
pub struct TestHost {
    /// The namespace's name, for `ip netns exec`.
    pub netns: String,
    /// The host's own address (inside its namespace).
    pub addr: IpAddr,
    /// The address of the test's side of the link: where the host reaches
    /// services of the test.
    pub gateway: IpAddr,
    /// The test's end of the veth pair (removing it removes both ends).
    link: String,
}

/// A set of test hosts, removed on drop.
pub struct TestHosts {
    pub hosts: Vec<TestHost>,
    /// The network all hosts and their gateways are in, as CIDR, for access
    /// rules (pg_hba).
    pub network: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {} failed (this test needs root and iproute2): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl TestHosts {
    /// Makes `count` hosts, each on its own /30 link to the test's
    /// namespace, all inside one /24 picked from the process id.
    pub fn new(count: u8) -> TestHosts {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let run = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // 10.201.0.0/16, a /24 per (pid, run): private addresses that exist
        // only on these links.
        let subnet = ((pid.wrapping_mul(7).wrapping_add(run)) % 250) as u8;
        let mut made = TestHosts {
            hosts: Vec::new(),
            network: format!("10.201.{subnet}.0/24"),
        };
        for n in 0..count {
            let tag = format!("{}{}{n}", pid % 100_000, (b'a' + (run % 26) as u8) as char);
            let netns = format!("chat{tag}");
            let link = format!("ch{tag}h");
            let inner = format!("ch{tag}n");
            let gateway = Ipv4Addr::new(10, 201, subnet, n * 4 + 1);
            let addr = Ipv4Addr::new(10, 201, subnet, n * 4 + 2);
            ip(&["netns", "add", &netns]);
            made.hosts.push(TestHost {
                netns: netns.clone(),
                addr: addr.into(),
                gateway: gateway.into(),
                link: link.clone(),
            });
            ip(&["link", "add", &link, "type", "veth", "peer", "name", &inner]);
            ip(&["link", "set", &inner, "netns", &netns]);
            ip(&["addr", "add", &format!("{gateway}/30"), "dev", &link]);
            ip(&["link", "set", &link, "up"]);
            let inside = |args: &[&str]| {
                let mut full = vec!["netns", "exec", &netns, "ip"];
                full.extend_from_slice(args);
                ip(&full);
            };
            inside(&["addr", "add", &format!("{addr}/30"), "dev", &inner]);
            inside(&["link", "set", &inner, "up"]);
            inside(&["link", "set", "lo", "up"]);
        }
        made
    }

    /// The addresses of the test's side of every link.
    pub fn gateways(&self) -> Vec<IpAddr> {
        self.hosts.iter().map(|h| h.gateway).collect()
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        for host in &self.hosts {
            // Best effort: a failure here must not hide the test's own.
            let _ = Command::new("ip")
                .args(["link", "del", &host.link])
                .output();
            let _ = Command::new("ip")
                .args(["netns", "del", &host.netns])
                .output();
        }
    }
}
