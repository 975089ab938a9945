//! Where the gateway may POST completions: the callback addresses callers may give.
//!
//! Like Temporal's `callback.allowedAddresses`, `[callbacks] allowed` lists host patterns
//! (`*` matches any run of characters, an optional `:port`), each with `allow_insecure` for
//! plain http. A host that matches a pattern is governed by its rules alone and may resolve to
//! any address (the operator listed it). Any other host must use https and reach only public
//! addresses: never loopback, private, link-local, unique-local, shared, multicast or the
//! gateway's own. Names are checked after resolution, by the resolver of the very connection
//! that delivers ([`CallbackResolver`]), so a DNS answer cannot change between check and use.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::dns::Name;

/// Why a callback URL or an allow-list entry is refused; the text names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackRefused {
    #[error("callback URL {0:?} is not a valid URL")]
    NotAUrl(String),
    #[error("callback URL {0:?} must be an absolute http(s) URL")]
    NotAbsolute(String),
    #[error("callback URL {0:?} must use https")]
    OtherScheme(String),
    #[error(
        "callback URL {0:?} must use https: plain http only to hosts listed in [callbacks] allowed with allow_insecure = true"
    )]
    PlainHttp(String),
    #[error(
        "callback URL {url:?} must use https: the [callbacks] allowed rule {rule:?} does not set allow_insecure"
    )]
    InsecureNotAllowed { url: String, rule: String },
    #[error(
        "callback URL {url:?} is not allowed: port {port} is not in the [callbacks] allowed rules for {host} ({rules})"
    )]
    PortNotListed {
        url: String,
        port: u16,
        host: String,
        rules: String,
    },
    #[error(
        "callback URL {url:?} is not allowed: {host} is {why}; callbacks go only to public addresses unless the host is listed in [callbacks] allowed"
    )]
    NotPublic {
        url: String,
        host: String,
        why: &'static str,
    },
    #[error("{0:?} is not a host pattern like \"*.example.com\" or \"callbacks.example.com:8443\"")]
    BadPattern(String),
    #[error("{0:?} has an invalid port")]
    BadPort(String),
}

/// One `[callbacks] allowed` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedCallback {
    /// Host pattern, lower case; `*` matches any run of characters.
    pub host: String,
    /// Only this port when set.
    pub port: Option<u16>,
    /// Whether plain `http://` is allowed to these hosts.
    pub allow_insecure: bool,
}

impl AllowedCallback {
    /// Parses `host-pattern[:port]` (`[v6]:port` for IPv6 literals).
    pub fn parse(pattern: &str, allow_insecure: bool) -> Result<Self, CallbackRefused> {
        let pattern = pattern.trim().to_ascii_lowercase();
        let (host, port) = split_port(&pattern)?;
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*' | ':');
        if host.is_empty() || !host.chars().all(valid) {
            return Err(CallbackRefused::BadPattern(pattern));
        }
        Ok(AllowedCallback {
            host: host.to_owned(),
            port,
            allow_insecure,
        })
    }

    /// Loopback over plain http or https: what `dev` and local tests allow.
    pub fn loopback() -> Vec<AllowedCallback> {
        ["localhost", "127.0.0.1", "::1"]
            .into_iter()
            .map(|host| AllowedCallback {
                host: host.into(),
                port: None,
                allow_insecure: true,
            })
            .collect()
    }

    fn describe(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }
}

fn split_port(pattern: &str) -> Result<(&str, Option<u16>), CallbackRefused> {
    let bad_port = || CallbackRefused::BadPort(pattern.to_owned());
    if let Some(rest) = pattern.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad_port)?;
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port.parse().map_err(|_| bad_port())?))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(bad_port()),
        };
    }
    match pattern.rsplit_once(':') {
        // A bare IPv6 literal has several colons and no port.
        Some((host, port)) if !host.contains(':') => {
            Ok((host, Some(port.parse().map_err(|_| bad_port())?)))
        }
        _ => Ok((pattern, None)),
    }
}

/// `*` matches any run of characters (dots included, as in Temporal's patterns).
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(text) = text.strip_prefix(head) else {
                return false;
            };
            (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .any(|i| glob(rest, &text[i..]))
        }
    }
}

/// The callback address policy: the allow-list and the gateway's own addresses.
#[derive(Debug, Clone, Default)]
pub struct CallbackPolicy {
    rules: Vec<AllowedCallback>,
    own: Vec<IpAddr>,
}

impl CallbackPolicy {
    pub fn new(rules: Vec<AllowedCallback>, own: Vec<IpAddr>) -> Self {
        CallbackPolicy { rules, own }
    }

    fn rules_for(&self, host: &str) -> impl Iterator<Item = &AllowedCallback> {
        let host = host.to_ascii_lowercase();
        self.rules.iter().filter(move |r| glob(&r.host, &host))
    }

    /// Checks a callback URL before it is sealed and before each delivery: the scheme, the
    /// port and, for an address literal or `localhost`, the address. Names are checked again
    /// after resolution. The error names the rule that refused.
    pub fn check_url(&self, url: &str) -> Result<(), CallbackRefused> {
        let uri: Uri = url
            .parse()
            .map_err(|_| CallbackRefused::NotAUrl(url.to_owned()))?;
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return Err(CallbackRefused::NotAbsolute(url.to_owned()));
        };
        let secure = match scheme {
            "https" => true,
            "http" => false,
            _ => return Err(CallbackRefused::OtherScheme(url.to_owned())),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let listed: Vec<&AllowedCallback> = self.rules_for(host).collect();
        if !listed.is_empty() {
            let Some(rule) = listed.iter().find(|r| r.port.is_none_or(|p| p == port)) else {
                return Err(CallbackRefused::PortNotListed {
                    url: url.to_owned(),
                    port,
                    host: host.to_owned(),
                    rules: listed
                        .iter()
                        .map(|r| r.describe())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            if !secure && !rule.allow_insecure {
                return Err(CallbackRefused::InsecureNotAllowed {
                    url: url.to_owned(),
                    rule: rule.describe(),
                });
            }
            return Ok(());
        }
        if !secure {
            return Err(CallbackRefused::PlainHttp(url.to_owned()));
        }
        let literal = host.parse::<IpAddr>().ok();
        let loopback_name = host.eq_ignore_ascii_case("localhost")
            || host.to_ascii_lowercase().ends_with(".localhost");
        if loopback_name {
            return Err(refused(url, host, "a loopback name"));
        }
        if let Some(ip) = literal
            && let Err(why) = self.public(ip)
        {
            return Err(refused(url, host, why));
        }
        Ok(())
    }

    /// Whether a resolved address of `host` may be connected to.
    fn address_allowed(&self, host: &str, ip: IpAddr) -> Result<(), &'static str> {
        if self.rules_for(host).next().is_some() {
            return Ok(());
        }
        self.public(ip)
    }

    fn public(&self, ip: IpAddr) -> Result<(), &'static str> {
        match non_public(ip) {
            Some(why) => Err(why),
            None if self.own.contains(&ip) => Err("one of the gateway's own addresses"),
            None => Ok(()),
        }
    }
}

fn refused(url: &str, host: &str, why: &'static str) -> CallbackRefused {
    CallbackRefused::NotPublic {
        url: url.to_owned(),
        host: host.to_owned(),
        why,
    }
}

/// Why `ip` is not a public address, if it is not.
fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => non_public_v4(v4),
            None => non_public_v6(v6),
        },
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if a == 0 || ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("not a unicast address")
    } else {
        None
    }
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() || ip.is_multicast() {
        Some("not a unicast address")
    } else if first & 0xfe00 == 0xfc00 {
        Some("a unique-local address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else {
        None
    }
}

/// The resolution refused every address of a name.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to addresses callbacks may not reach ({why})")]
pub struct RefusedAddress {
    host: String,
    why: &'static str,
}

/// Resolves callback hosts and keeps only the addresses the policy allows; the connection
/// then goes to those addresses and no others.
#[derive(Clone)]
pub struct CallbackResolver {
    policy: Arc<CallbackPolicy>,
}

impl CallbackResolver {
    pub fn new(policy: Arc<CallbackPolicy>) -> Self {
        CallbackResolver { policy }
    }
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, BoxError>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Name> for CallbackResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let mut why = "no address";
            let allowed: Vec<SocketAddr> = resolved
                .filter(|addr| match policy.address_allowed(&host, addr.ip()) {
                    Ok(()) => true,
                    Err(reason) => {
                        why = reason;
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                return Err(RefusedAddress { host, why }.into());
            }
            Ok(allowed.into_iter())
        })
    }
}

/// Whether a delivery failed because the policy refused the address (never retried).
pub fn is_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<RefusedAddress>() {
            return true;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[(&str, bool)]) -> CallbackPolicy {
        let rules = rules
            .iter()
            .map(|(p, insecure)| AllowedCallback::parse(p, *insecure).unwrap())
            .collect();
        CallbackPolicy::new(rules, vec!["203.0.113.7".parse().unwrap()])
    }

    #[test]
    fn by_default_only_https_to_public_addresses() {
        let p = policy(&[]);
        assert!(p.check_url("https://callbacks.example.com/x").is_ok());
        assert!(p.check_url("https://8.8.8.8:8443/x").is_ok());
        for (url, why) in [
            ("http://callbacks.example.com/x", "must use https"),
            ("https://127.0.0.1:7080/metrics", "loopback"),
            ("https://[::1]/x", "loopback"),
            ("https://localhost/x", "loopback name"),
            ("https://api.localhost/x", "loopback name"),
            ("https://10.1.2.3/x", "private"),
            ("https://192.168.0.1/x", "private"),
            ("https://169.254.169.254/latest", "link-local"),
            ("https://[fd00::1]/x", "unique-local"),
            ("https://[fe80::1]/x", "link-local"),
            ("https://[::ffff:127.0.0.1]/x", "loopback"),
            ("https://100.64.0.1/x", "shared"),
            ("https://0.0.0.0/x", "unicast"),
            ("https://203.0.113.7/x", "gateway's own"),
            ("ftp://example.com/x", "https"),
            ("/relative", "absolute"),
        ] {
            let error = p.check_url(url).unwrap_err().to_string();
            assert!(error.contains(why), "{url}: {error}");
        }
    }

    #[test]
    fn listed_hosts_follow_their_rules() {
        let p = policy(&[("*.internal.example", false), ("127.0.0.1:9000", true)]);
        assert!(p.check_url("https://a.b.internal.example/cb").is_ok());
        assert!(p.check_url("http://127.0.0.1:9000/cb").is_ok());
        let e = p
            .check_url("http://a.internal.example/cb")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"*.internal.example\" does not set allow_insecure"),
            "{e}"
        );
        let e = p
            .check_url("http://127.0.0.1:9001/cb")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("port 9001 is not in the [callbacks] allowed rules"),
            "{e}"
        );
        // A listed name may resolve to a private address; an unlisted one may not.
        assert!(
            p.address_allowed("x.internal.example", "10.0.0.1".parse().unwrap())
                .is_ok()
        );
        assert!(
            p.address_allowed("evil.example", "10.0.0.1".parse().unwrap())
                .is_err()
        );
        assert!(
            p.address_allowed("evil.example", "8.8.8.8".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn patterns() {
        assert!(glob("*.example.com", "a.example.com"));
        assert!(!glob("*.example.com", "example.com"));
        assert!(glob("cb-*.example.com", "cb-1.example.com"));
        assert!(!glob("example.com", "example.com.evil"));
        assert_eq!(
            AllowedCallback::parse("[::1]:8080", true).unwrap().port,
            Some(8080)
        );
        assert_eq!(AllowedCallback::parse("::1", true).unwrap().host, "::1");
        assert!(AllowedCallback::parse("", false).is_err());
        assert!(AllowedCallback::parse("a/b", false).is_err());
        assert!(AllowedCallback::parse("a:port", false).is_err());
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses() {
        let mut resolver = CallbackResolver::new(Arc::new(policy(&[])));
        let name: Name = "localhost".parse().unwrap();
        let error = tower::Service::call(&mut resolver, name).await.unwrap_err();
        assert!(is_refused(error.as_ref()), "{error}");
        assert!(error.to_string().contains("loopback"), "{error}");
    }
}
