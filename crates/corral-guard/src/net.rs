//! Outbound fetches to places an admin names (model URLs, the Ollama registry, later
//! webhooks) are kept off the control plane's own network: loopback, link-local (with
//! the cloud metadata address 169.254.169.254 / fd00:ec2::254), private, CGNAT and
//! other non-public ranges are refused unless the operator allows them.
//!
//! Checking a URL's host name and then letting the HTTP client resolve it again would
//! leave a gap (DNS rebinding: public on the first lookup, 169.254.169.254 on the
//! second). So the check sits in the client's resolver: [`GuardedResolver`] resolves,
//! checks every address, and hands the client only those addresses to connect to.
//! IP literals never reach a resolver, so [`check_url`] covers them (and is the cheap
//! check when an admin enters a URL), and [`redirect_policy`] applies it to each
//! redirect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Redirects followed before giving up (reqwest's default limit).
const MAX_REDIRECTS: usize = 10;

/// Why a target was refused; the message names the host and the address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "{host} is {addr}, an internal address (loopback, link-local, private or reserved); \
         set allow_private_model_sources to fetch from it"
    )]
    Internal { host: String, addr: IpAddr },
    #[error("{0} names a local host; set allow_private_model_sources to fetch from it")]
    LocalName(String),
    #[error("{0}")]
    BadUrl(String),
}

/// Whether connecting to `ip` could reach something other than the public internet.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0                                   // "this network", 0.0.0.0
        || a == 10                           // private
        || a == 127                          // loopback
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 169 && b == 254)            // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 168)            // private
        || (a == 192 && b == 0 && c == 0)    // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 224 // multicast, reserved, broadcast
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    // Forms that carry an IPv4 address are judged by it: ::ffff:a.b.c.d (mapped),
    // ::a.b.c.d (compatible), 64:ff9b::a.b.c.d (NAT64) and 2002:aabb:ccdd:: (6to4).
    if let Some(v4) = embedded_v4(ip) {
        return is_internal_v4(v4);
    }
    let s = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (AWS metadata fd00:ec2::254)
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated, still routed by some)
        || (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0) // Teredo: its IPv4 part is obfuscated
        || s[0] == 0x0100 && s[1..4] == [0, 0, 0] // discard-only 100::/64
}

fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0; 5] && (s[5] == 0xffff || (s[5] == 0 && (s[6] != 0 || s[7] > 1))) {
        return Some(tail());
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail());
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// The cheap check, without DNS: an http(s) URL whose host is not an internal IP
/// literal nor `localhost`. Names that resolve inside are caught at connect time.
pub fn check_url(url: &str) -> Result<(), Refused> {
    let parsed = Url::parse(url).map_err(|e| Refused::BadUrl(format!("{url}: {e}")))?;
    check_parsed(&parsed)
}

fn check_parsed(url: &Url) -> Result<(), Refused> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused::BadUrl(format!("{url}: only http and https")));
    }
    match url.host() {
        Some(url::Host::Ipv4(v4)) => check_addr(&v4.to_string(), IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => check_addr(&v6.to_string(), IpAddr::V6(v6)),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                Err(Refused::LocalName(name))
            } else {
                Ok(())
            }
        }
        None => Err(Refused::BadUrl(format!("{url}: no host"))),
    }
}

fn check_addr(host: &str, addr: IpAddr) -> Result<(), Refused> {
    if is_internal(addr) {
        Err(Refused::Internal {
            host: host.to_owned(),
            addr,
        })
    } else {
        Ok(())
    }
}

/// Every address of `host`, or the first internal one as the refusal: a name with one
/// internal address among public ones is refused whole, since the client may pick any.
pub fn check_resolved(host: &str, addrs: &[SocketAddr]) -> Result<(), Refused> {
    addrs.iter().try_for_each(|a| check_addr(host, a.ip()))
}

/// A reqwest resolver that refuses names resolving to internal addresses; the client
/// then connects only to the addresses checked here.
#[derive(Debug, Clone, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            check_resolved(&host, &addrs)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Follows up to 10 redirects, each to a URL that passes [`check_url`] (its name, if
/// any, is checked again by the resolver on connect).
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error("too many redirects");
        }
        match check_parsed(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    })
}

/// Applies the guard to a client under construction, unless `allow_private`. With the
/// guard on, proxies from the environment are not used: a proxy resolves names where
/// this guard cannot see them.
pub fn guard(builder: reqwest::ClientBuilder, allow_private: bool) -> reqwest::ClientBuilder {
    if allow_private {
        return builder;
    }
    builder
        .dns_resolver(Arc::new(GuardedResolver))
        .redirect(redirect_policy())
        .no_proxy()
}

/// The guard's refusal in a reqwest error's cause chain, if that is what failed it.
pub fn refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(err);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<Refused>() {
            return Some(r);
        }
        cause = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn internal(s: &str) -> bool {
        is_internal(s.parse().unwrap())
    }

    #[test]
    fn internal_ranges() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "127.0.0.1",
            "127.255.255.254",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.0.8",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.1.2.3",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::",
            "2001:db8::1",
            "2001:0:4136:e378::1",
        ] {
            assert!(internal(ip), "{ip} is internal");
        }
    }

    #[test]
    fn public_addresses() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.0.1",
            "192.169.0.1",
            "104.18.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!internal(ip), "{ip} is public");
        }
    }

    #[test]
    fn urls_with_internal_literals_or_local_names_are_refused() {
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:11434/x.gguf",
            "http://[::1]/x",
            "http://[::ffff:7f00:1]/x",
            "http://[fd00:ec2::254]/",
            "https://10.0.0.5/m.gguf",
            "http://0.0.0.0/",
            "http://localhost:8080/",
            "http://LOCALHOST./",
            "http://metadata.localhost/",
            // Shorthand forms of 127.0.0.1 that URL parsing normalises.
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
        ] {
            assert!(check_url(url).is_err(), "{url} refused");
        }
        for url in [
            "https://huggingface.co/m.gguf",
            "http://8.8.8.8/x",
            "https://registry.ollama.ai",
        ] {
            assert_eq!(check_url(url), Ok(()), "{url}");
        }
        assert!(matches!(
            check_url("file:///etc/passwd"),
            Err(Refused::BadUrl(_))
        ));
        assert!(matches!(check_url("not a url"), Err(Refused::BadUrl(_))));
    }

    #[test]
    fn a_name_with_any_internal_address_is_refused() {
        let public: SocketAddr = "8.8.8.8:0".parse().unwrap();
        let meta: SocketAddr = "169.254.169.254:0".parse().unwrap();
        assert_eq!(check_resolved("a.example", &[public]), Ok(()));
        assert_eq!(
            check_resolved("a.example", &[public, meta]),
            Err(Refused::Internal {
                host: "a.example".into(),
                addr: meta.ip()
            })
        );
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_resolve_inside() {
        let name: Name = "localhost".parse().unwrap();
        let err = match GuardedResolver.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        assert!(
            matches!(refusal(err.as_ref()), Some(Refused::Internal { .. })),
            "{err}"
        );
    }

    /// Through a real client and a real server on loopback: refused with the guard,
    /// allowed without; a redirect from an allowed host to an internal literal is
    /// refused too.
    #[tokio::test]
    async fn clients_with_the_guard_do_not_connect_inside() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            }
        });
        let by_name = format!("http://localhost:{port}/");
        let guarded = guard(reqwest::Client::builder(), false).build().unwrap();
        let err = guarded.get(&by_name).send().await.unwrap_err();
        assert!(
            matches!(refusal(&err), Some(Refused::Internal { .. })),
            "{err:?}"
        );
        let open = guard(reqwest::Client::builder(), true).build().unwrap();
        let body = open
            .get(&by_name)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "ok");
    }

    /// A server that redirects every request to `to`.
    async fn redirecting(to: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            }
        });
        base
    }

    #[tokio::test]
    async fn redirects_to_internal_literals_are_refused() {
        // The policy alone (the first hop is on loopback, which the resolver would
        // refuse before any redirect).
        let client = reqwest::Client::builder()
            .redirect(redirect_policy())
            .build()
            .unwrap();
        let base = redirecting("http://169.254.169.254/latest/meta-data/").await;
        let err = client.get(&base).send().await.unwrap_err();
        assert!(err.is_redirect(), "{err:?}");
        assert!(
            matches!(refusal(&err), Some(Refused::Internal { .. })),
            "{err:?}"
        );
    }
}
