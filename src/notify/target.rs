//! Outbound target policy: which URLs a channel may post to, and which addresses a
//! hostname may resolve to (checked at connect time, so DNS rebinding can't slip by).
use crate::config::ChannelKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Checks a channel URL at config time. Messages never include the URL itself
/// (it is a secret), only what is wrong with it.
pub fn check_url(kind: ChannelKind, raw: &str, allow_private: bool) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a valid URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => {
            return Err(
                "must be https (set [delivery] allow_private_targets = true to allow http)".into(),
            );
        }
        other => return Err(format!("scheme {other:?} is not allowed; use https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry user:password credentials".into());
    }
    let host = url.host().ok_or("has no host")?;
    if kind == ChannelKind::Teams
        && let url::Host::Domain(d) = &host
        && (d.ends_with(".webhook.office.com") || *d == "outlook.office.com")
    {
        return Err(
            "is a retired Office 365 connector URL; create a Teams Workflows webhook instead"
                .into(),
        );
    }
    if !allow_private {
        let ip = match host {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            url::Host::Domain(d)
                if d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") =>
            {
                return Err(
                    "points at localhost; set [delivery] allow_private_targets = true to allow it"
                        .into(),
                );
            }
            url::Host::Domain(_) => None,
        };
        if let Some(ip) = ip
            && !is_public(ip)
        {
            return Err(format!(
                "points at non-public address {ip}; set [delivery] allow_private_targets = true to allow it"
            ));
        }
    }
    Ok(())
}

/// True for globally routable unicast addresses: not loopback, private, link-local,
/// CGNAT, ULA, multicast, documentation, or a v4-mapped/NAT64 form of those.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let seg = v6.segments();
            // NAT64 well-known prefix 64:ff9b::/96 embeds an IPv4 address.
            if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
                let [a, b] = seg[6].to_be_bytes();
                let [c, d] = seg[7].to_be_bytes();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // ULA, incl. fd00:ec2::254
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
                // IPv4-compatible (deprecated) ::a.b.c.d
                || (seg[0..6] == [0, 0, 0, 0, 0, 0]))
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local() // includes 169.254.169.254 and 169.254.170.2
        || v4.is_broadcast()
        || v4.is_documentation()
        || v4.is_unspecified()
        || v4.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking
        || o[0] >= 240)
}

/// DNS resolver for outbound deliveries that drops every non-public address.
#[derive(Debug, Clone, Copy)]
pub struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = addrs.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let msg = format!(
                    "{host} resolves only to non-public addresses (allow_private_targets = false)"
                );
                return Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    msg,
                )) as _);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_addresses() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.170.2",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(s.parse().unwrap()), "{s} should be blocked");
        }
        for s in ["52.94.1.1", "2600:1f14::1", "64:ff9b::3432:0101"] {
            assert!(is_public(s.parse().unwrap()), "{s} should be allowed");
        }
    }

    #[test]
    fn url_policy() {
        let k = ChannelKind::Webhook;
        assert!(check_url(k, "https://hooks.example.com/x", false).is_ok());
        assert!(check_url(k, "http://hooks.example.com/x", false).is_err());
        assert!(check_url(k, "https://127.0.0.1/x", false).is_err());
        assert!(
            check_url(k, "https://2130706433/x", false).is_err(),
            "decimal IPv4 spelling"
        );
        assert!(
            check_url(k, "https://0x7f.1/x", false).is_err(),
            "hex IPv4 spelling"
        );
        assert!(check_url(k, "https://[::ffff:169.254.169.254]/x", false).is_err());
        assert!(check_url(k, "http://127.0.0.1:8080/x", true).is_ok());
        assert!(
            check_url(
                ChannelKind::Teams,
                "https://acme.webhook.office.com/webhookb2/x",
                false
            )
            .is_err()
        );
    }
}
