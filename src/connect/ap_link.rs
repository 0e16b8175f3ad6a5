//! The access-point link: finding this process's TCP connection to Spotify's access point and
//! making the kernel notice quickly when it is dead.
//!
//! librespot notices a silently dropped connection (a Wi-Fi roam, a router reboot, an iptables
//! DROP) only through its keep-alive, which takes up to two minutes. TCP itself can do better:
//! with `SO_KEEPALIVE` and `TCP_USER_TIMEOUT` on the socket, the kernel errors the connection once
//! the peer stops acknowledging, librespot's reader sees the error, the session is invalidated and
//! the supervisor reconnects. librespot does not hand out its socket, but it lives in our process:
//! we find it through `/proc/self/net/tcp*` (the access point's port) and `/proc/self/fd`, and set
//! the options on that descriptor. The port is the one librespot logged it connected to (4070, or
//! 443 or 80 behind a firewall); on 443 our HTTPS connections are tuned too, which suits them as
//! well: a dead peer fails them and librespot retries instead of hanging. The same parsing serves `pispeaker drop-test`, which looks for the
//! daemon's connection from outside.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;
use std::path::Path;
use std::time::Duration;

/// The access point's preferred port. librespot falls back to 443 and 80 behind firewalls;
/// [`run_tuner`] follows whichever it connected to.
pub const AP_PORT: u16 = 4070;

/// TCP state `ESTABLISHED` in `/proc/net/tcp`.
const TCP_ESTABLISHED: u8 = 0x01;

/// One row of `/proc/<pid>/net/tcp` or `tcp6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpConnection {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub inode: u64,
}

impl TcpConnection {
    pub fn is_established(&self) -> bool {
        self.state == TCP_ESTABLISHED
    }
}

/// How fast a dead link is declared dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkTuning {
    /// Idle time before the first keep-alive probe.
    pub keepalive_idle: Duration,
    /// Time between probes.
    pub keepalive_interval: Duration,
    /// Unanswered probes before the kernel gives up.
    pub keepalive_count: u32,
    /// Longest time sent data may stay unacknowledged (`TCP_USER_TIMEOUT`).
    pub user_timeout: Duration,
}

impl Default for LinkTuning {
    /// About 25 s from the last sign of life to a dead socket, against librespot's ~2 min. The
    /// probes are 54-byte packets every few seconds on an idle link only: nothing on a Pi.
    fn default() -> Self {
        Self {
            keepalive_idle: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            keepalive_count: 3,
            user_timeout: Duration::from_secs(25),
        }
    }
}

/// Parses the text of `/proc/net/tcp` (IPv4) or `/proc/net/tcp6` (IPv6). Malformed rows are
/// skipped: the kernel's format is stable, but a parse error must never take the daemon down.
pub fn parse_proc_net_tcp(text: &str) -> Vec<TcpConnection> {
    text.lines().skip(1).filter_map(parse_row).collect()
}

fn parse_row(line: &str) -> Option<TcpConnection> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    let local = parse_endpoint(fields.next()?)?;
    let remote = parse_endpoint(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    // tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, inode
    let inode = fields.nth(5)?.parse().ok()?;
    Some(TcpConnection {
        local,
        remote,
        state,
        inode,
    })
}

/// `0100007F:0FE6` (IPv4) or 32 hex digits `:port` (IPv6); addresses are in host byte order per
/// 32-bit word.
fn parse_endpoint(field: &str) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => {
            let word = u32::from_str_radix(addr, 16).ok()?;
            IpAddr::V4(Ipv4Addr::from(word.swap_bytes()))
        }
        32 => {
            let mut octets = [0u8; 16];
            for (i, chunk) in octets.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.swap_bytes().to_be_bytes());
            }
            let v6 = Ipv6Addr::from(octets);
            // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Established TCP connections of a process (`None` = this process) whose remote port is `port`.
pub fn connections_to_port(pid: Option<u32>, port: u16) -> io::Result<Vec<TcpConnection>> {
    let base = match pid {
        Some(pid) => format!("/proc/{pid}/net"),
        // thread-self: the namespace of the calling thread (all of the daemon's threads share one;
        // a test thread that joined a namespace sees that namespace).
        None => "/proc/thread-self/net".to_string(),
    };
    let mut found = Vec::new();
    for file in ["tcp", "tcp6"] {
        match fs::read_to_string(Path::new(&base).join(file)) {
            Ok(text) => found.extend(
                parse_proc_net_tcp(&text)
                    .into_iter()
                    .filter(|c| c.is_established() && c.remote.port() == port),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

/// Established connections to `port` that process `pid` owns: `/proc/<pid>/net/tcp` lists the
/// whole network namespace (another Spotify client on the same Pi too), so only rows whose
/// socket inode is one of the process's descriptors (`/proc/<pid>/fd`) are kept.
pub fn owned_connections_to_port(pid: u32, port: u16) -> io::Result<Vec<TcpConnection>> {
    let mut owned = HashSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(entry) = entry else { continue };
        let Ok(target) = fs::read_link(entry.path()) else {
            continue; // closed between readdir and readlink
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            owned.insert(inode);
        }
    }
    Ok(connections_to_port(Some(pid), port)?
        .into_iter()
        .filter(|c| c.inode != 0 && owned.contains(&c.inode))
        .collect())
}

/// The descriptors of this process that are the socket with `inode`.
fn own_fds_for_inode(inode: u64) -> io::Result<Vec<RawFd>> {
    let wanted = format!("socket:[{inode}]");
    let mut fds = Vec::new();
    for entry in fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Ok(target) = fs::read_link(entry.path()) else {
            continue; // closed between readdir and readlink
        };
        if target.as_os_str() == wanted.as_str() {
            if let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                fds.push(fd);
            }
        }
    }
    Ok(fds)
}

/// Sets keep-alive and user-timeout options on a connected TCP socket.
pub fn tune_fd(fd: RawFd, tuning: &LinkTuning) -> io::Result<()> {
    set_opt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_opt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        clamp_secs(tuning.keepalive_idle),
    )?;
    set_opt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        clamp_secs(tuning.keepalive_interval),
    )?;
    set_opt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPCNT,
        i32::try_from(tuning.keepalive_count.max(1)).unwrap_or(i32::MAX),
    )?;
    set_opt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        i32::try_from(tuning.user_timeout.as_millis()).unwrap_or(i32::MAX),
    )
}

fn clamp_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

fn set_opt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed; setsockopt only reads it. A stale
    // or non-socket fd makes the call fail with EBADF/ENOTSOCK, which we return.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Tunes this process's access-point connections, each once. Called every few seconds by the
/// supervisor's watchdog, so a reconnect's new socket is tuned within one poll.
#[derive(Debug, Default)]
pub struct ApLinkTuner {
    tuning: LinkTuning,
    port: u16,
    tuned: HashSet<u64>,
}

impl ApLinkTuner {
    pub fn new(port: u16, tuning: LinkTuning) -> Self {
        Self {
            tuning,
            port,
            tuned: HashSet::new(),
        }
    }

    /// Tunes new connections; returns the ones tuned by this call.
    pub fn tune_new(&mut self) -> io::Result<Vec<TcpConnection>> {
        self.tune_new_on(self.port)
    }

    /// As [`Self::tune_new`] for connections to `port` (the access point moved to a fallback).
    pub fn tune_new_on(&mut self, port: u16) -> io::Result<Vec<TcpConnection>> {
        self.port = port;
        let current = connections_to_port(None, port)?;
        // Forget sockets that are gone so the set stays small over months of uptime.
        self.tuned
            .retain(|inode| current.iter().any(|c| c.inode == *inode));
        let mut newly = Vec::new();
        for conn in current {
            if conn.inode == 0 || self.tuned.contains(&conn.inode) {
                continue;
            }
            let fds = own_fds_for_inode(conn.inode)?;
            for fd in &fds {
                tune_fd(*fd, &self.tuning)?;
            }
            // Remembered either way so it is looked at once; reported only when it was ours
            // (the namespace may hold another client's connection to the same port).
            self.tuned.insert(conn.inode);
            if !fds.is_empty() {
                newly.push(conn);
            }
        }
        Ok(newly)
    }
}

/// Keeps tuning new access-point connections every `period` until `shutdown` turns true. A
/// failure (no /proc, say) is logged once and the task keeps trying: it is an improvement on top
/// of librespot's own keep-alive, never a reason to stop the speaker.
pub async fn run_tuner(
    tuning: LinkTuning,
    period: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tuner = ApLinkTuner::new(AP_PORT, tuning);
    let mut failing = false;
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        match tune_current_port(&mut tuner) {
            Ok(tuned) => {
                failing = false;
                for conn in tuned {
                    log::debug!(
                        "access-point link {} -> {}: keep-alive and {} s user timeout set",
                        conn.local,
                        conn.remote,
                        tuning.user_timeout.as_secs()
                    );
                }
            }
            Err(e) if !failing => {
                failing = true;
                log::warn!("cannot tune the access-point connection ({e}); relying on librespot's keep-alive");
            }
            Err(_) => {}
        }
    }
}

/// One tuning pass on the port librespot's access point is on now.
fn tune_current_port(tuner: &mut ApLinkTuner) -> io::Result<Vec<TcpConnection>> {
    tuner.tune_new_on(crate::logging::ap_port_in_use().unwrap_or(AP_PORT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    const SAMPLE_V4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0FE6 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0200000A:A2F4 1E2A1FC1:0FE6 01 00000000:00000000 02:00000A1B 00000000  1000        0 67890 2 0000000000000000 20 4 30 10 -1
   2: garbage
";

    #[test]
    fn parses_ipv4_rows_and_skips_garbage() {
        let rows = parse_proc_net_tcp(SAMPLE_V4);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].local, "127.0.0.1:4070".parse().unwrap());
        assert!(!rows[0].is_established());
        assert_eq!(rows[1].local, "10.0.0.2:41716".parse().unwrap());
        assert_eq!(rows[1].remote, "193.31.42.30:4070".parse().unwrap());
        assert!(rows[1].is_established());
        assert_eq!(rows[1].inode, 67890);
    }

    #[test]
    fn parses_ipv6_and_v4_mapped_rows() {
        let text = "header
   0: 00000000000000000000000001000000:1F90 B80D0120000000000000000001000000:0FE6 01 00000000:00000000 00:00000000 00000000 0 0 111 1 0 0 0 0 0
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000200000A:0FE6 01 00000000:00000000 00:00000000 00000000 0 0 222 1 0 0 0 0 0
";
        let rows = parse_proc_net_tcp(text);
        assert_eq!(rows[0].local, "[::1]:8080".parse().unwrap());
        assert_eq!(rows[0].remote, "[2001:db8::1]:4070".parse().unwrap());
        assert_eq!(rows[1].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(rows[1].remote, "10.0.0.2:4070".parse().unwrap());
    }

    /// Defect 9: behind a firewall librespot's access point is on 443 or 80; the tuner follows
    /// the port librespot logged instead of looking at 4070 only.
    #[test]
    fn the_tuner_follows_the_port_librespot_connected_to() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _server = listener.accept().unwrap();
        crate::logging::note_session_info(&format!("Connecting to AP \"ap.spotify.com:{port}\""));
        let mut tuner = ApLinkTuner::new(AP_PORT, LinkTuning::default());
        let tuned = tune_current_port(&mut tuner).unwrap();
        let local = client.local_addr().unwrap();
        assert!(
            tuned.iter().any(|c| c.local == local),
            "the connection on port {port} is tuned: {tuned:?}"
        );
    }

    /// Another process's connection to the same port is listed namespace-wide but not owned.
    #[test]
    fn only_connections_the_process_owns_are_picked() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ours = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _server_side = listener.accept().unwrap();
        let mut other = std::process::Command::new("bash")
            .args([
                "-c",
                &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; sleep 30"),
            ])
            .spawn();
        let child = other
            .as_mut()
            .expect("bash (for its /dev/tcp) runs the other client");
        let (_other_side, other_addr) = listener.accept().unwrap();
        let me = std::process::id();
        let all = connections_to_port(Some(me), port).unwrap();
        let owned = owned_connections_to_port(me, port).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let ours = ours.local_addr().unwrap();
        // Rows are matched by address: on a busy machine the namespace may hold other
        // connections with the same remote port, which this test neither owns nor counts.
        assert!(owned.iter().any(|c| c.local == ours), "{owned:?}");
        assert!(!owned.iter().any(|c| c.local == other_addr), "{owned:?}");
        assert!(
            all.iter().any(|c| c.local == ours) && all.iter().any(|c| c.local == other_addr),
            "the namespace-wide list has both: {all:?}"
        );
    }

    #[test]
    fn finds_and_tunes_our_own_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _server = listener.accept().unwrap();
        let local = client.local_addr().unwrap();
        // The list is namespace-wide: on a busy machine (CI) another connection in the
        // namespace can have the same remote port, so the test looks for its own row only.
        let listed = connections_to_port(None, port).unwrap();
        assert!(listed.iter().any(|c| c.local == local), "{listed:?}");

        let mut tuner = ApLinkTuner::new(port, LinkTuning::default());
        let first = tuner.tune_new().unwrap();
        assert!(first.iter().any(|c| c.local == local), "{first:?}");
        let second = tuner.tune_new().unwrap();
        assert!(
            !second.iter().any(|c| c.local == local),
            "each socket is tuned once: {second:?}"
        );

        let mut value: i32 = 0;
        let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
        use std::os::fd::AsRawFd;
        // SAFETY: reading an int option into a local of the right size.
        let rc = unsafe {
            libc::getsockopt(
                client.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                (&mut value as *mut i32).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!(value, 25_000);
    }
}
