//! Tells when a network address appears, so discovery and the supervisor act at once instead of
//! waiting out a backoff (a Pi whose Wi-Fi associates a minute after boot, an access point
//! switched back on).
//!
//! A `NETLINK_ROUTE` socket subscribed to the IPv4/IPv6 address groups receives an
//! `RTM_NEWADDR` message from the kernel whenever an address is added to an interface. Only
//! addresses wider than the host scope count (loopback's do not). libc only: no new crate.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use log::{debug, warn};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// `RT_SCOPE_HOST` in `<linux/rtnetlink.h>`: an address usable on this host only (loopback).
const RT_SCOPE_HOST: u8 = 254;
const NLMSG_HDRLEN: usize = 16;

/// Counts address arrivals; receivers see a new value after each one.
pub type AddressEvents = watch::Receiver<u64>;

/// Watches for new addresses until `shutdown`, bumping the returned counter on each. If the
/// socket cannot be opened (no netlink, a sandbox), the counter never moves and the backoffs
/// do the work, as before.
pub fn spawn(mut shutdown: watch::Receiver<bool>) -> AddressEvents {
    let (tx, rx) = watch::channel(0u64);
    let socket = match open() {
        Ok(socket) => socket,
        Err(e) => {
            warn!("cannot watch for network addresses ({e}); relying on retry delays");
            return rx;
        }
    };
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                ready = socket.readable() => {
                    let mut guard = match ready {
                        Ok(guard) => guard,
                        Err(e) => {
                            warn!("network address watch stopped: {e}");
                            return;
                        }
                    };
                    let read = guard.try_io(|fd| {
                        // SAFETY: reading into a buffer we own, of the length passed.
                        let n = unsafe {
                            libc::recv(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0)
                        };
                        if n < 0 {
                            Err(io::Error::last_os_error())
                        } else {
                            Ok(n as usize)
                        }
                    });
                    match read {
                        Ok(Ok(n)) => {
                            let added = new_addresses(&buffer[..n]);
                            if added > 0 {
                                debug!("netlink: {added} new network address(es)");
                                tx.send_modify(|count| *count += 1);
                            }
                        }
                        // ENOBUFS: the kernel dropped messages; something changed, so say so.
                        Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                            tx.send_modify(|count| *count += 1);
                        }
                        Ok(Err(e)) => {
                            warn!("network address watch stopped: {e}");
                            return;
                        }
                        Err(_would_block) => {}
                    }
                }
            }
        }
    });
    rx
}

fn open() -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_nl is valid; the fields that matter are set below.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    address.nl_groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    // SAFETY: binding our socket to a correctly sized sockaddr_nl.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the OwnedFd is moved into the AsyncFd, so it stays open and the same descriptor
    // for the AsyncFd's whole life.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Counts `RTM_NEWADDR` messages for addresses wider than the host scope in a netlink datagram.
pub fn new_addresses(mut data: &[u8]) -> usize {
    let mut count = 0;
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDRLEN || len > data.len() {
            break;
        }
        // struct ifaddrmsg { family, prefixlen, flags, scope, index }
        if kind == libc::RTM_NEWADDR && len >= NLMSG_HDRLEN + 8 {
            let scope = data[NLMSG_HDRLEN + 3];
            if scope < RT_SCOPE_HOST {
                count += 1;
            }
        }
        // Messages are 4-byte aligned.
        let advance = (len + 3) & !3;
        data = data.get(advance..).unwrap_or(&[]);
    }
    count
}

/// True when some interface has an address wider than loopback's: without one, libmdns fails
/// at once ("No such device") and there is nobody to be visible to.
pub fn has_usable_address() -> bool {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        // Cannot tell: let discovery try.
        return true;
    }
    let mut found = false;
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned, until its null end.
        let entry = unsafe { &*cursor };
        if let Some(ip) = ip_of(entry.ifa_addr) {
            let loopback = ip.is_loopback();
            let link_local_v6 =
                matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
            if !loopback && !link_local_v6 {
                found = true;
                break;
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: the list came from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    found
}

fn ip_of(address: *const libc::sockaddr) -> Option<IpAddr> {
    if address.is_null() {
        return None;
    }
    // SAFETY: the family field is valid for every sockaddr; the cast matches the family.
    unsafe {
        match i32::from((*address).sa_family) {
            libc::AF_INET => {
                let v4 = &*(address as *const libc::sockaddr_in);
                Some(IpAddr::from(v4.sin_addr.s_addr.to_ne_bytes()))
            }
            libc::AF_INET6 => {
                let v6 = &*(address as *const libc::sockaddr_in6);
                Some(IpAddr::from(v6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, scope: u8) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + 8) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[libc::AF_INET as u8, 24, 0, scope, 2, 0, 0, 0]);
        m
    }

    #[test]
    fn counts_new_addresses_beyond_loopback() {
        let mut data = message(libc::RTM_NEWADDR, 0);
        data.extend(message(libc::RTM_NEWADDR, RT_SCOPE_HOST));
        data.extend(message(libc::RTM_DELADDR, 0));
        data.extend(message(libc::RTM_NEWADDR, 253));
        assert_eq!(new_addresses(&data), 2);
        assert_eq!(new_addresses(&data[..5]), 0, "truncated");
    }
}
