//! Network namespaces for tests that need real networking without touching the machine's own
//! network: each test gets a namespace (and, when asked, a veth pair to a second one) that is
//! deleted again when the guard drops, whatever way the test ends.
//!
//! These tests need root (CI runs as root). Without root they fail with a message that says so,
//! unless `PISPEAKER_SKIP_ROOT_TESTS=1` is set, in which case they print that they were skipped.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};

/// True when the test should run; false (with a printed notice) when the user opted out.
pub fn root_or_skip(test: &str) -> bool {
    if unsafe_geteuid() == 0 {
        return true;
    }
    if std::env::var_os("PISPEAKER_SKIP_ROOT_TESTS").is_some() {
        eprintln!(
            "SKIPPED {test}: needs root for network namespaces (PISPEAKER_SKIP_ROOT_TESTS set)"
        );
        return false;
    }
    panic!("{test} needs root for network namespaces and iptables; run the tests as root (CI does) or set PISPEAKER_SKIP_ROOT_TESTS=1 to skip it");
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// A namespace with loopback up and an interface `d0` carrying `addr/24`, with a multicast
    /// route, so mDNS works inside it and never leaves the machine. (`d0` is one end of a veth
    /// pair whose other end stays in the namespace: not every kernel has the dummy driver.)
    pub fn with_lan(prefix: &str, addr: &str) -> NetNs {
        let ns = NetNs::new(prefix);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&[
            "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1",
        ]);
        ns.exec(&["ip", "link", "set", "d1", "up"]);
        ns.exec(&["ip", "link", "set", "d0", "multicast", "on"]);
        ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "d0"]);
        ns.exec(&["ip", "link", "set", "d0", "up"]);
        ns.exec(&["ip", "route", "add", "224.0.0.0/4", "dev", "d0"]);
        ns
    }

    /// Two namespaces joined by a veth pair: `a` gets `addr_a/24`, `b` gets `addr_b/24`.
    pub fn pair(prefix: &str, addr_a: &str, addr_b: &str) -> (NetNs, NetNs) {
        let a = NetNs::new(&format!("{prefix}a"));
        let b = NetNs::new(&format!("{prefix}b"));
        let (va, vb) = (
            format!("va{}", std::process::id()),
            format!("vb{}", std::process::id()),
        );
        sh(&[
            "ip", "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb,
            "netns", &b.name,
        ]);
        a.exec(&["ip", "addr", "add", &format!("{addr_a}/24"), "dev", &va]);
        a.exec(&["ip", "link", "set", &va, "up"]);
        b.exec(&["ip", "addr", "add", &format!("{addr_b}/24"), "dev", &vb]);
        b.exec(&["ip", "link", "set", &vb, "up"]);
        (a, b)
    }

    /// An empty namespace with loopback up.
    pub fn new(prefix: &str) -> NetNs {
        let name = format!("{prefix}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace, panicking if it fails.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Moves the calling thread into the namespace. Threads it spawns afterwards inherit it,
    /// which is how an in-process client (an mDNS browser) joins the namespace.
    pub fn enter_current_thread(&self) {
        enter(&self.name)
    }
}

/// Moves the calling thread into the named namespace (see [`NetNs::enter_current_thread`]).
pub fn enter(name: &str) {
    {
        let file = File::open(format!("/var/run/netns/{name}"))
            .unwrap_or_else(|e| panic!("cannot open namespace {name}: {e}"));
        // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns failed: {}", std::io::Error::last_os_error());
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
