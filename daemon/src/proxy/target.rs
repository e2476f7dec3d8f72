//! Where a request may go: link-local and cloud-metadata addresses are never
//! targets, whether named directly or reached through DNS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Names that resolve to cloud metadata services.
const METADATA_NAMES: &[&str] = &[
    "metadata.google.internal",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

pub fn forbidden_name(host: &str) -> bool {
    METADATA_NAMES.contains(&host) || host.parse::<IpAddr>().is_ok_and(forbidden_ip)
}

pub fn forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden_v4(v4),
            // fe80::/10 link-local, and AWS's IPv6 metadata address.
            None => {
                (v6.segments()[0] & 0xffc0) == 0xfe80
                    || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
            }
        },
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    // 169.254.0.0/16 holds 169.254.169.254; 100.100.100.200 is Alibaba's metadata service.
    ip.is_link_local() || ip == Ipv4Addr::new(100, 100, 100, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_link_local_are_refused() {
        for host in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "100.100.100.200",
            "metadata.google.internal",
        ] {
            assert!(forbidden_name(host), "{host}");
        }
        for host in ["127.0.0.1", "10.0.0.1", "api.openai.com", "::1"] {
            assert!(!forbidden_name(host), "{host}");
        }
    }
}
