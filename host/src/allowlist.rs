//! Which hosts a provider may reach: deny by default, checked in one type.
//!
//! An entry is `scheme://host:port` (port defaults to 80/443). `host` is a
//! DNS name, an IP address, or `*.domain` for any subdomain of `domain`
//! (not `domain` itself). A request passes when its URL matches an entry
//! exactly in scheme, host and port. Then, because a DNS name can point
//! anywhere (DNS rebinding), the addresses it resolves to are checked again
//! by [`address_permitted`] before a connection is made.

use std::net::IpAddr;

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

/// Whether a connection to `ip`, found by resolving the allowed DNS name
/// `host`, may be made. Never: unspecified, multicast, broadcast and
/// link-local addresses (169.254.169.254 is the cloud metadata service).
/// Loopback only when the name is `localhost`, so that a public name cannot
/// be pointed at services on the node. To reach such an address anyway,
/// allow it by IP literal.
pub fn address_permitted(host: &str, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let loopback_ok = host.eq_ignore_ascii_case("localhost");
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_link_local()
                || (v4.is_loopback() && !loopback_ok))
        }
        IpAddr::V6(v6) => {
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_unspecified()
                || v6.is_multicast()
                || link_local
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
    fn resolved_addresses(#[case] host: &str, #[case] ip: &str, #[case] ok: bool) {
        assert_eq!(address_permitted(host, ip.parse().unwrap()), ok);
    }
}
