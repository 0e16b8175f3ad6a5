//! "The local network": a subnet of one of the speaker's own interfaces.
//!
//! A private-range test (RFC 1918, ULA) is wrong both ways: a phone on the same Wi-Fi usually
//! talks over its global IPv6 address (refused), while any private address routed from another
//! network (a VPN, the ISP's carrier-grade NAT side) is accepted. The interfaces' own addresses
//! and netmasks say what is really on-link, so the check is done against them, read afresh for
//! every connection (DHCP and SLAAC change them under a running daemon; `getifaddrs` is one
//! netlink dump, far cheaper than the TLS-less HTTP request that follows).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One interface address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Subnet {
    /// True when `ip` is inside this subnet (same family, same first `prefix` bits).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = prefix_mask_u32(self.prefix);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = prefix_mask_u128(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn prefix_mask_u32(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - u32::from(p)),
    }
}

fn prefix_mask_u128(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p if p >= 128 => u128::MAX,
        p => u128::MAX << (128 - u32::from(p)),
    }
}

/// IPv4-mapped IPv6 peers (a dual-stack listener) are judged as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// The decision, pure: loopback and link-local peers are on-link by definition; anything else
/// must be inside a subnet of one of `subnets`.
pub fn is_lan_with(peer: IpAddr, subnets: &[Subnet]) -> bool {
    let peer = canonical(peer);
    let on_link = match peer {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    // A zero prefix would make the whole Internet "local" (a point-to-point link with a /0
    // mask, some VPNs): such an interface does not define a LAN.
    on_link
        || subnets
            .iter()
            .any(|s| s.prefix > 0 && s.contains(peer) && !s.addr.is_unspecified())
}

/// Whether `peer` is on a subnet of one of this machine's interfaces now.
pub fn is_lan(peer: IpAddr) -> bool {
    is_lan_with(peer, &interface_subnets())
}

/// Every IPv4/IPv6 address of every interface that is up, with its prefix length.
pub fn interface_subnets() -> Vec<Subnet> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs; every pointer
    // read is checked for null and only read while the list is alive.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            log::debug!(
                "getifaddrs: {}; only loopback counts as local",
                std::io::Error::last_os_error()
            );
            return out;
        }
        let mut cursor = head;
        while !cursor.is_null() {
            let ifa = &*cursor;
            cursor = ifa.ifa_next;
            if ifa.ifa_flags & (libc::IFF_UP as libc::c_uint) == 0 {
                continue;
            }
            if let (Some(addr), Some(mask)) =
                (sockaddr_ip(ifa.ifa_addr), sockaddr_ip(ifa.ifa_netmask))
            {
                out.push(Subnet {
                    addr,
                    prefix: mask_prefix(mask),
                });
            }
        }
        libc::freeifaddrs(head);
    }
    out
}

/// # Safety
/// `sa` is null or points to a sockaddr of the size its family says.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    match i32::from((*sa).sa_family) {
        libc::AF_INET => {
            let sin = &*(sa as *const libc::sockaddr_in);
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            let sin6 = &*(sa as *const libc::sockaddr_in6);
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

fn mask_prefix(mask: IpAddr) -> u8 {
    let ones = match mask {
        IpAddr::V4(m) => u32::from(m).leading_ones(),
        IpAddr::V6(m) => u128::from(m).leading_ones(),
    };
    u8::try_from(ones).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str, prefix: u8) -> Subnet {
        Subnet {
            addr: s.parse().unwrap(),
            prefix,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A speaker on a home Wi-Fi: 192.168.1.10/24 and a global 2001:db8:1:2::10/64.
    fn home() -> Vec<Subnet> {
        vec![
            net("127.0.0.1", 8),
            net("192.168.1.10", 24),
            net("2001:db8:1:2::10", 64),
            net("fe80::1", 64),
        ]
    }

    #[test]
    fn a_phone_with_a_global_ipv6_on_the_same_64_is_local() {
        assert!(is_lan_with(ip("2001:db8:1:2:a1b2:c3d4:e5f6:1"), &home()));
        // The private-range test refused exactly this.
        assert!(!ip("2001:db8:1:2:a1b2:c3d4:e5f6:1").is_loopback());
    }

    #[test]
    fn a_private_address_from_another_subnet_is_refused() {
        assert!(!is_lan_with(ip("10.8.0.5"), &home()));
        assert!(!is_lan_with(ip("192.168.2.20"), &home()));
        assert!(!is_lan_with(ip("fd00::5"), &home()));
        assert!(!is_lan_with(ip("2001:db8:1:3::1"), &home()));
        assert!(!is_lan_with(ip("8.8.8.8"), &home()));
    }

    #[test]
    fn same_subnet_loopback_link_local_and_mapped_are_local() {
        assert!(is_lan_with(ip("192.168.1.77"), &home()));
        assert!(is_lan_with(ip("::ffff:192.168.1.77"), &home()));
        assert!(!is_lan_with(ip("::ffff:192.168.9.77"), &home()));
        assert!(is_lan_with(ip("127.0.0.1"), &[]));
        assert!(is_lan_with(ip("::1"), &[]));
        assert!(is_lan_with(ip("169.254.3.4"), &[]));
        assert!(is_lan_with(ip("fe80::abcd"), &[]));
    }

    #[test]
    fn a_zero_prefix_does_not_make_everything_local() {
        assert!(!is_lan_with(ip("8.8.8.8"), &[net("10.0.0.1", 0)]));
        assert!(is_lan_with(ip("10.1.255.3"), &[net("10.1.0.1", 16)]));
        assert!(!is_lan_with(ip("10.2.0.3"), &[net("10.1.0.1", 16)]));
    }

    #[test]
    fn the_machines_own_interfaces_are_read() {
        let subnets = interface_subnets();
        // Every Linux machine (and network namespace) has loopback up with 127.0.0.1/8.
        assert!(
            subnets.contains(&net("127.0.0.1", 8)),
            "no 127.0.0.1/8 in {subnets:?}"
        );
        assert!(is_lan(ip("127.0.0.1")));
        assert!(!is_lan(ip("203.0.113.7")));
    }
}
