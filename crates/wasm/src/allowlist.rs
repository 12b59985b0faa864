//! Which hosts a provider may reach: deny by default, checked in one type.
//!
//! An entry is `scheme://host:port` (port defaults to 80/443). `host` is a
//! DNS name, an IP address, or `*.domain` for any subdomain of `domain`
//! (not `domain` itself). A request passes when its URL matches an entry
//! exactly in scheme, host and port. Then, because a DNS name can point
//! anywhere (DNS rebinding), the addresses it resolves to are checked again
//! by [`address_permitted`] before a connection is made.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Url;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// A lowercase DNS name.
    Name(String),
    Ip(IpAddr),
    /// `*.example.com`, stored as `.example.com`.
    Subdomains(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    https: bool,
    host: HostPattern,
    port: u16,
}

/// The parsed `outbound.allowed_hosts` of one provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<Entry>,
}

impl Allowlist {
    pub fn parse(entries: &[String]) -> Result<Allowlist, String> {
        let entries = entries
            .iter()
            .map(|entry| parse_entry(entry).map_err(|why| format!("{entry:?}: {why}")))
            .collect::<Result<_, _>>()?;
        Ok(Allowlist { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether every entry of `other` is also an entry of `self`.
    pub fn covers(&self, other: &Allowlist) -> bool {
        other
            .entries
            .iter()
            .all(|entry| self.entries.contains(entry))
    }

    /// Whether `url` may be requested. The error says why not.
    pub fn check(&self, url: &Url) -> Result<(), String> {
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("scheme {other:?} is not allowed")),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| "URL has no port".to_string())?;
        let host = match url.host() {
            Some(url::Host::Domain(name)) => Requested::Name(name.to_ascii_lowercase()),
            Some(url::Host::Ipv4(ip)) => Requested::Ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Requested::Ip(IpAddr::V6(ip)),
            None => return Err("URL has no host".into()),
        };
        let allowed = self.entries.iter().any(|entry| {
            entry.https == https
                && entry.port == port
                && match (&entry.host, &host) {
                    (HostPattern::Name(a), Requested::Name(b)) => a == b,
                    (HostPattern::Ip(a), Requested::Ip(b)) => a == b,
                    (HostPattern::Subdomains(suffix), Requested::Name(b)) => {
                        b.ends_with(suffix.as_str()) && b.len() > suffix.len()
                    }
                    _ => false,
                }
        });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "{}://{}:{port} is not in the provider's allowed_hosts",
                url.scheme(),
                url.host_str().unwrap_or_default()
            ))
        }
    }
}

enum Requested {
    Name(String),
    Ip(IpAddr),
}

fn parse_entry(entry: &str) -> Result<Entry, String> {
    let (scheme, rest) = entry
        .split_once("://")
        .ok_or("expected scheme://host:port")?;
    let https = match scheme {
        "https" => true,
        "http" => false,
        _ => return Err("scheme must be http or https".into()),
    };
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err("only scheme://host:port, no path or credentials".into());
    }
    let default_port = if https { 443 } else { 80 };
    let (host, port) = split_host_port(rest)?;
    let port = match port {
        Some(port) => port.parse::<u16>().map_err(|_| "port is not a number")?,
        None => default_port,
    };
    let host = if let Some(domain) = host.strip_prefix("*.") {
        check_dns_name(domain)?;
        HostPattern::Subdomains(format!(".{}", domain.to_ascii_lowercase()))
    } else if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        HostPattern::Ip(ip)
    } else {
        check_dns_name(host)?;
        HostPattern::Name(host.to_ascii_lowercase())
    };
    Ok(Entry { https, host, port })
}

fn split_host_port(rest: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed [ in IPv6 address")?;
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err("junk after IPv6 address".into()),
        };
    }
    Ok(match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    })
}

fn check_dns_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid host name"))
    }
}

/// Addresses no provider may reach through a DNS name: cloud metadata and
/// host-communication services, which hand out credentials to whoever asks
/// from the node. Link-local ranges (169.254.0.0/16, fe80::/10) are refused
/// as a whole besides these.
///
/// Sources:
/// - 169.254.169.254: AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
///   (docs.aws.amazon.com "Instance metadata service", cloud.google.com
///   "About VM metadata", learn.microsoft.com "Azure Instance Metadata
///   Service"); 169.254.170.2: AWS ECS task credentials; 169.254.0.23:
///   Tencent Cloud (link-local, refused as a range).
/// - 168.63.129.16: Azure WireServer (learn.microsoft.com "What is IP
///   address 168.63.129.16").
/// - 100.100.100.200: Alibaba Cloud ECS metadata
///   (alibabacloud.com "Overview of ECS instance metadata").
/// - 192.0.0.192: Oracle Cloud legacy metadata (docs.oracle.com
///   "Getting Instance Metadata").
/// - fd00:ec2::254: AWS IMDS over IPv6; fd00:ec2::/32 also holds the
///   Amazon DNS resolver and time service (docs.aws.amazon.com "Configure
///   the instance metadata options", "Amazon Time Sync Service").
/// - fd20:ce::254: GCP metadata over IPv6 (cloud.google.com "About VM
///   metadata", IPv6 access).
const METADATA_V4: &[Ipv4Addr] = &[
    Ipv4Addr::new(168, 63, 129, 16),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(192, 0, 0, 192),
];

/// IPv6 ranges refused as metadata services: (prefix, prefix length).
const METADATA_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0xfd20, 0x00ce, 0, 0, 0, 0, 0, 0x254), 128),
];

fn in_prefix(ip: Ipv6Addr, prefix: Ipv6Addr, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    (u128::from(ip) & mask) == (u128::from(prefix) & mask)
}

/// The IPv4 address an IPv6 address carries, in every form a connection
/// could reach it through: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`, deprecated but still routed by some stacks), IPv4-translated
/// (`::ffff:0:a.b.c.d`, SIIT), NAT64 (`64:ff9b::/96` and the local-use
/// `64:ff9b:1::/48`, RFC 6052 / 8215), 6to4 (`2002:AABB:CCDD::/48`) and
/// Teredo (`2001::/32`, client address inverted in the last 32 bits).
fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(v6);
    let low32 = Ipv4Addr::from(bits as u32);
    let segments = v6.segments();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    // ::a.b.c.d, but not :: and ::1.
    if bits >> 32 == 0 && bits > 1 {
        return Some(low32);
    }
    if bits >> 32 == 0xffff_0000 {
        return Some(low32);
    }
    if in_prefix(v6, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96)
        || in_prefix(v6, Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48)
    {
        return Some(low32);
    }
    if segments[0] == 0x2002 {
        let [a, b] = segments[1].to_be_bytes();
        let [c, d] = segments[2].to_be_bytes();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    if segments[0] == 0x2001 && segments[1] == 0 {
        return Some(Ipv4Addr::from(!(bits as u32)));
    }
    None
}

/// Whether a connection to `ip`, found by resolving the allowed DNS name
/// `host`, may be made. Never: unspecified, multicast, broadcast and
/// link-local addresses, and the metadata services above ([`METADATA_V4`],
/// [`METADATA_V6`]), also when embedded in an IPv6 address. Loopback only
/// when the name is `localhost`, so that a public name cannot be pointed at
/// services on the node. To reach such an address anyway, allow it by IP
/// literal.
pub fn address_permitted(host: &str, ip: IpAddr) -> bool {
    let loopback_ok = host.eq_ignore_ascii_case("localhost");
    let v4_permitted = |v4: Ipv4Addr| {
        !(v4.is_unspecified()
            || v4.is_multicast()
            || v4.is_broadcast()
            || v4.is_link_local()
            || METADATA_V4.contains(&v4)
            || (v4.is_loopback() && !loopback_ok))
    };
    match ip {
        IpAddr::V4(v4) => v4_permitted(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(v6) {
                return v4_permitted(v4);
            }
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            // fec0::/10, deprecated site-local: never a backend's address.
            let site_local = (v6.segments()[0] & 0xffc0) == 0xfec0;
            !(v6.is_unspecified()
                || v6.is_multicast()
                || link_local
                || site_local
                || METADATA_V6
                    .iter()
                    .any(|(prefix, len)| in_prefix(v6, *prefix, *len))
                || (v6.is_loopback() && !loopback_ok))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn list(entries: &[&str]) -> Allowlist {
        Allowlist::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn allows(allowlist: &Allowlist, url: &str) -> bool {
        allowlist.check(&Url::parse(url).unwrap()).is_ok()
    }

    #[rstest]
    #[case::none_allows_nothing(&[], "http://127.0.0.1:8200/v1/x", false)]
    #[case::exact_ip(&["http://127.0.0.1:8200"], "http://127.0.0.1:8200/v1/x", true)]
    #[case::other_port(&["http://127.0.0.1:8200"], "http://127.0.0.1:8201/", false)]
    #[case::other_scheme(&["http://127.0.0.1:8200"], "https://127.0.0.1:8200/", false)]
    #[case::exact_name(&["https://vault.example.com:8200"], "https://VAULT.example.com:8200/v1", true)]
    #[case::default_port(&["https://vault.example.com"], "https://vault.example.com/v1", true)]
    #[case::name_is_not_ip(&["https://vault.example.com"], "https://10.0.0.1/", false)]
    #[case::wildcard_subdomain(&["https://*.example.com"], "https://a.b.example.com/", true)]
    #[case::wildcard_not_apex(&["https://*.example.com"], "https://example.com/", false)]
    #[case::wildcard_not_suffix_trick(&["https://*.example.com"], "https://evilexample.com/", false)]
    #[case::ipv6(&["http://[::1]:8200"], "http://[::1]:8200/", true)]
    #[case::metadata_not_listed(&["http://127.0.0.1:8200"], "http://169.254.169.254/", false)]
    fn url_checks(#[case] entries: &[&str], #[case] url: &str, #[case] ok: bool) {
        assert_eq!(allows(&list(entries), url), ok);
    }

    #[rstest]
    #[case::no_scheme("vault:8200")]
    #[case::ftp("ftp://vault:21")]
    #[case::path("https://vault/v1")]
    #[case::userinfo("https://user@vault")]
    #[case::bad_port("https://vault:99999")]
    #[case::bad_name("https://va_ult")]
    fn bad_entries_are_refused(#[case] entry: &str) {
        assert!(Allowlist::parse(&[entry.to_string()]).is_err());
    }

    #[rstest]
    #[case::public("vault.example.com", "203.0.113.7", true)]
    #[case::private_range("vault.internal", "10.0.0.5", true)]
    #[case::metadata("vault.example.com", "169.254.169.254", false)]
    #[case::loopback_by_name("vault.example.com", "127.0.0.1", false)]
    #[case::loopback_localhost("localhost", "127.0.0.1", true)]
    #[case::mapped_loopback("vault.example.com", "::ffff:127.0.0.1", false)]
    #[case::v6_link_local("vault.example.com", "fe80::1", false)]
    #[case::unspecified("vault.example.com", "0.0.0.0", false)]
    #[case::alibaba_metadata("vault.example.com", "100.100.100.200", false)]
    #[case::azure_wireserver("vault.example.com", "168.63.129.16", false)]
    #[case::oracle_legacy_metadata("vault.example.com", "192.0.0.192", false)]
    #[case::ecs_credentials("vault.example.com", "169.254.170.2", false)]
    #[case::aws_imds_v6("vault.example.com", "fd00:ec2::254", false)]
    #[case::aws_dns_v6("vault.example.com", "fd00:ec2::253", false)]
    #[case::gcp_metadata_v6("vault.example.com", "fd20:ce::254", false)]
    #[case::nat64_metadata("vault.example.com", "64:ff9b::a9fe:a9fe", false)]
    #[case::nat64_local_use_metadata("vault.example.com", "64:ff9b:1::a9fe:a9fe", false)]
    #[case::nat64_public("vault.example.com", "64:ff9b::cb00:7107", true)]
    #[case::v4_compatible_metadata("vault.example.com", "::169.254.169.254", false)]
    #[case::v4_compatible_loopback("vault.example.com", "::127.0.0.1", false)]
    #[case::v4_translated_metadata("vault.example.com", "::ffff:0:a9fe:a9fe", false)]
    #[case::six_to_four_metadata("vault.example.com", "2002:a9fe:a9fe::1", false)]
    #[case::teredo_metadata("vault.example.com", "2001:0:4136:e378:8000:63bf:5601:5601", false)]
    #[case::site_local("vault.example.com", "fec0::1", false)]
    #[case::public_v6("vault.example.com", "2600:1f18::1", true)]
    #[case::v6_loopback_by_name("vault.example.com", "::1", false)]
    fn resolved_addresses(#[case] host: &str, #[case] ip: &str, #[case] ok: bool) {
        assert_eq!(address_permitted(host, ip.parse().unwrap()), ok);
    }
}
