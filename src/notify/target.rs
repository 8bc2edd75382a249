//! Outbound target policy: which URLs a channel may post to, and which addresses a
//! hostname may resolve to (checked at connect time, so DNS rebinding can't slip by).
use super::{ChannelKind, DeliveryConfig};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr};

/// Where deliveries may go. With `allow_private_targets = false`: https only, the
/// per-kind host allow-lists apply, and every address must be public or inside an
/// explicitly allowed CIDR — checked for literal IPs here and for resolved names at
/// connect time by `notify::send::CheckedResolver`.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    pub allow_private: bool,
    pub allowed_cidrs: Vec<IpNet>,
    /// Per kind name: the hosts it may post to (empty: any public host).
    pub hosts: std::collections::BTreeMap<&'static str, Vec<String>>,
}

impl TargetPolicy {
    pub fn from_config(d: &DeliveryConfig) -> Result<TargetPolicy, String> {
        let allowed_cidrs = d
            .allowed_cidrs
            .iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .map_err(|_| format!("{c:?} is not a CIDR like \"10.20.0.0/16\""))
            })
            .collect::<Result<_, _>>()?;
        Ok(TargetPolicy {
            allow_private: d.allow_private_targets,
            allowed_cidrs,
            hosts: ChannelKind::all()
                .map(|k| (k.as_str(), d.hosts(k).to_vec()))
                .collect(),
        })
    }

    /// Public, or inside an allowed CIDR (v4-mapped forms are judged by their v4 address).
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        if self.allow_private || is_public(ip) {
            return true;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allowed_cidrs.iter().any(|n| n.contains(&ip))
    }

    fn hosts(&self, kind: ChannelKind) -> &[String] {
        self.hosts.get(kind.as_str()).map_or(&[], Vec::as_slice)
    }

    /// Checks a channel URL. Messages never include the URL itself (it is a secret),
    /// only what is wrong with it.
    pub fn check_url(&self, kind: ChannelKind, raw: &str) -> Result<(), String> {
        let url = url::Url::parse(raw).map_err(|e| format!("not a valid URL ({e})"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_private => {}
            "http" => {
                return Err(
                    "must be https (set [delivery] allow_private_targets = true to allow http)"
                        .into(),
                );
            }
            other => return Err(format!("scheme {other:?} is not allowed; use https")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry user:password credentials".into());
        }
        let host = url.host().ok_or("has no host")?;
        if let Some(why) = kind.refuse_url(&url) {
            return Err(why);
        }
        if self.allow_private {
            return Ok(());
        }
        let ip = match &host {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(*v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(*v6)),
            url::Host::Domain(d)
                if {
                    // `localhost.` is the same name, fully qualified.
                    let d = d.trim_end_matches('.').to_ascii_lowercase();
                    d == "localhost" || d.ends_with(".localhost")
                } =>
            {
                return Err(
                    "points at localhost; set [delivery] allow_private_targets = true to allow it"
                        .into(),
                );
            }
            url::Host::Domain(_) => None,
        };
        if let Some(ip) = ip
            && !self.ip_allowed(ip)
        {
            return Err(format!(
                "points at non-public address {ip}; add it to [delivery] allowed_cidrs or set allow_private_targets = true"
            ));
        }
        let allowed = self.hosts(kind);
        if !allowed.is_empty() {
            let h = host.to_string().to_ascii_lowercase();
            let ok = allowed.iter().any(|pat| match pat.strip_prefix("*.") {
                Some(suffix) => h.ends_with(&format!(".{}", suffix.to_ascii_lowercase())),
                None => h == pat.to_ascii_lowercase(),
            });
            if !ok {
                return Err(format!(
                    "host {h} is not in [delivery] {}_hosts ({})",
                    kind.as_str(),
                    allowed.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// True for globally reachable unicast addresses, by the IANA IPv4 and IPv6
/// Special-Purpose Address Registries; forms that embed an IPv4 address
/// (v4-mapped, NAT64, 6to4) are judged by that address, and Teredo, which tunnels
/// to an address we cannot see, is refused.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                Ipv4Addr::new(a, b, c, d)
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052).
            if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
                return is_public_v4(embedded(seg[6], seg[7]));
            }
            // 6to4 2002::/16 carries the IPv4 address in bits 16–48 (RFC 3056).
            if seg[0] == 0x2002 {
                return is_public_v4(embedded(seg[1], seg[2]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || seg[0..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible ::a.b.c.d (deprecated)
                || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1) // local-use NAT64 64:ff9b:1::/48
                || (seg[0] == 0x100 && seg[1..4] == [0, 0, 0]) // discard 100::/64
                || (seg[0] == 0x2001 && seg[1] < 0x200) // IETF protocol assignments 2001::/23, incl. Teredo 2001::/32
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || (seg[0] == 0x3fff && seg[1] < 0x1000) // documentation 3fff::/20
                || seg[0] == 0x5f00 // SRv6 SIDs 5f00::/16
                || (seg[0] & 0xfe00) == 0xfc00 // ULA fc00::/7, incl. fd00:ec2::254
                || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (seg[0] & 0xffc0) == 0xfec0) // site-local fec0::/10 (deprecated)
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
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments 192.0.0/24
        || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 6to4 relay anycast (deprecated)
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240) // reserved 240/4
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
            "2002:a9fe:a9fe::",    // 6to4 embedding 169.254.169.254
            "2002:0a00:0001::1",   // 6to4 embedding 10.0.0.1
            "2001::1",             // Teredo
            "2001:0:4136:e378::1", // Teredo
            "64:ff9b:1::a00:1",    // local-use NAT64
            "fec0::1",             // site-local
            "192.88.99.1",         // 6to4 relay anycast
            "3fff::1",             // documentation
            "100::1",              // discard
        ] {
            assert!(!is_public(s.parse().unwrap()), "{s} should be blocked");
        }
        for s in [
            "52.94.1.1",
            "2600:1f14::1",
            "64:ff9b::3432:0101",
            "2002:3432:0101::1",
        ] {
            assert!(is_public(s.parse().unwrap()), "{s} should be allowed");
        }
    }

    fn strict() -> TargetPolicy {
        TargetPolicy::from_config(&DeliveryConfig::default()).unwrap()
    }

    #[test]
    #[allow(non_snake_case)]
    fn url_policy_table() {
        let k = |n| ChannelKind::named(n).unwrap();
        let (Webhook, Slack, Teams) = (k("webhook"), k("slack"), k("teams"));
        let p = strict();
        let refused = [
            (Webhook, "http://hooks.example.com/x", "https"),
            (Webhook, "https://127.0.0.1/x", "non-public"),
            (Webhook, "https://2130706433/x", "non-public"), // decimal IPv4
            (Webhook, "https://0x7f.1/x", "non-public"),     // hex IPv4
            (Webhook, "https://0177.0.0.1/x", "non-public"), // octal IPv4
            (Webhook, "https://[::ffff:169.254.169.254]/x", "non-public"),
            (Webhook, "https://[fd00:ec2::254]/x", "non-public"),
            (Webhook, "https://169.254.170.2/x", "non-public"),
            (Webhook, "https://localhost/x", "localhost"),
            (Webhook, "https://localhost./x", "localhost"),
            (Webhook, "https://[2002:a9fe:a9fe::]/x", "non-public"),
            (
                Webhook,
                "https://user:pw@hooks.example.com/x",
                "credentials",
            ),
            (Webhook, "file:///etc/passwd", "scheme"),
            (Slack, "https://evil.example.com/services/x", "slack_hosts"),
            (Slack, "https://hooks.slack.com.evil.com/x", "slack_hosts"),
            (
                Teams,
                "https://acme.webhook.office.com/webhookb2/x",
                "retired",
            ),
            (Teams, "https://logic.azure.com.evil.io/x", "teams_hosts"),
        ];
        for (kind, url, why) in refused {
            let e = p.check_url(kind, url).expect_err(url);
            assert!(e.contains(why), "{url}: {e}");
        }
        for (kind, url) in [
            (Webhook, "https://hooks.example.com/x"),
            (Slack, "https://hooks.slack.com/services/T/B/x"),
            (Teams, "https://prod-01.westus.logic.azure.com/workflows/x"),
            (Teams, "https://x.environment.api.powerplatform.com/x"),
        ] {
            assert!(p.check_url(kind, url).is_ok(), "{url}");
        }
        let dev = TargetPolicy {
            allow_private: true,
            ..strict()
        };
        assert!(dev.check_url(Webhook, "http://127.0.0.1:8080/x").is_ok());
    }

    #[test]
    fn allowed_cidrs_admit_on_prem_servers() {
        let d = DeliveryConfig {
            allowed_cidrs: vec!["10.20.0.0/16".into()],
            ..DeliveryConfig::default()
        };
        let p = TargetPolicy::from_config(&d).unwrap();
        assert!(
            p.check_url(
                ChannelKind::named("webhook").unwrap(),
                "https://10.20.3.4/hook"
            )
            .is_ok()
        );
        assert!(p.ip_allowed("::ffff:10.20.3.4".parse().unwrap()));
        assert!(
            p.check_url(
                ChannelKind::named("webhook").unwrap(),
                "https://10.21.0.1/hook"
            )
            .is_err()
        );
        assert!(!p.ip_allowed("169.254.169.254".parse().unwrap()));
        let bad = DeliveryConfig {
            allowed_cidrs: vec!["ten".into()],
            ..DeliveryConfig::default()
        };
        assert!(TargetPolicy::from_config(&bad).unwrap_err().contains("ten"));
    }
}
