//! "The local network" on the real server, in two network namespaces joined by a veth pair: a
//! client on the speaker's subnet is served (over IPv4, and over a global IPv6 address on the
//! same /64, which the old private-range test refused), a client with a private address routed
//! from another subnet gets 403 (which the old test accepted).

mod netns;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use netns::NetNs;

const SPEAKER_V4: &str = "10.233.0.1";
const CLIENT_V4: &str = "10.233.0.2";
/// A private address on the client, outside every subnet of the speaker (routed to it).
const CLIENT_OTHER_V4: &str = "192.168.77.2";
const SPEAKER_V6: &str = "2001:db8:15::1";
const CLIENT_V6: &str = "2001:db8:15::2";
const PORT: u16 = 45730;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET /status.json from `from` (bound as the source address) to the speaker; the status line.
fn get_from(from: &str, to: &str) -> Result<String, String> {
    let local = SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0);
    let remote = SocketAddr::new(to.parse::<IpAddr>().unwrap(), PORT);
    let socket = match remote {
        SocketAddr::V4(_) => socket2_v4(),
        SocketAddr::V6(_) => socket2_v6(),
    };
    bind_connect(socket, local, remote).and_then(|mut stream| {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(
            stream,
            "GET /status.json HTTP/1.1\r\nHost: speaker\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| e.to_string())?;
        Ok(response.lines().next().unwrap_or_default().to_string())
    })
}

fn socket2_v4() -> i32 {
    // SAFETY: a plain socket(2) call; the fd is owned by the TcpStream made from it below.
    unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) }
}

fn socket2_v6() -> i32 {
    // SAFETY: as above.
    unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM, 0) }
}

/// std has no bind-before-connect; a few lines of libc do it.
fn bind_connect(fd: i32, local: SocketAddr, remote: SocketAddr) -> Result<TcpStream, String> {
    use std::os::fd::FromRawFd;
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh socket we own; TcpStream takes it over (and closes it).
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let raw = |addr: SocketAddr| -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: zeroed sockaddr_storage is a valid value; we fill the family's fields.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_in fits in sockaddr_storage.
                unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: 0,
                };
                // SAFETY: sockaddr_in6 fits in sockaddr_storage.
                unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (storage, len as libc::socklen_t)
    };
    use std::os::fd::AsRawFd;
    let (l, l_len) = raw(local);
    let (r, r_len) = raw(remote);
    // SAFETY: valid socket, valid addresses of the given lengths.
    unsafe {
        if libc::bind(
            stream.as_raw_fd(),
            &l as *const _ as *const libc::sockaddr,
            l_len,
        ) != 0
        {
            return Err(format!("bind {local}: {}", std::io::Error::last_os_error()));
        }
        if libc::connect(
            stream.as_raw_fd(),
            &r as *const _ as *const libc::sockaddr,
            r_len,
        ) != 0
        {
            return Err(format!(
                "connect {remote}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(stream)
}

#[test]
fn lan_means_a_subnet_of_the_speakers_own_interfaces() {
    if !netns::root_or_skip("lan_means_a_subnet_of_the_speakers_own_interfaces") {
        return;
    }
    let (speaker, client) = NetNs::pair("pisp-lan", SPEAKER_V4, CLIENT_V4);
    let veth_a = format!("va{}", std::process::id());
    let veth_b = format!("vb{}", std::process::id());
    // The client also has a private address on another subnet, routed to the speaker.
    client.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{CLIENT_OTHER_V4}/32"),
        "dev",
        &veth_b,
    ]);
    speaker.exec(&["ip", "route", "add", "192.168.77.0/24", "dev", &veth_a]);
    // And both have a global IPv6 address on one /64 (no DAD wait: the test is not about it).
    for (ns, addr, dev) in [
        (&speaker, SPEAKER_V6, &veth_a),
        (&client, CLIENT_V6, &veth_b),
    ] {
        ns.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            dev,
            "nodad",
        ]);
    }

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "cache = \"{}\"\ndisable-discovery = true\n\n[status]\nlisten = \"[::]:{PORT}\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _daemon = Daemon(
        speaker
            .command(env!("CARGO_BIN_EXE_pispeaker"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let client_name = client.name.clone();
    let results = std::thread::spawn(move || {
        netns::enter(&client_name);
        // Served from the same subnet (waiting for the daemon to listen).
        let deadline = Instant::now() + Duration::from_secs(60);
        let same_v4 = loop {
            match get_from(CLIENT_V4, SPEAKER_V4) {
                Ok(line) => break line,
                Err(e) => {
                    assert!(Instant::now() < deadline, "speaker not reachable: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        (
            same_v4,
            get_from(CLIENT_V6, SPEAKER_V6),
            get_from(CLIENT_OTHER_V4, SPEAKER_V4),
        )
    })
    .join()
    .unwrap();
    let (same_v4, same_v6, other) = results;
    assert!(same_v4.starts_with("HTTP/1.1 200"), "{same_v4}\n{}", log());
    let same_v6 = same_v6.unwrap_or_else(|e| panic!("{e}\n{}", log()));
    assert!(
        same_v6.starts_with("HTTP/1.1 200"),
        "a global IPv6 address on the same /64: {same_v6}"
    );
    let other = other.unwrap_or_else(|e| panic!("{e}\n{}", log()));
    assert!(
        other.starts_with("HTTP/1.1 403"),
        "a private address from another subnet: {other}"
    );
}
