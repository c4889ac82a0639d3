//! The client's address, for the per-IP rate limits and the audit log: the TCP peer,
//! or, behind proxies, the `X-Forwarded-For` entry that the farthest trusted proxy
//! appended.
//!
//! Every proxy appends the address it received the request from, so with `hops` trusted
//! proxies in front of Corral (CloudFront then an ALB: 2) the last `hops` entries were
//! written by them and the one `hops` places from the right is the client as the outer
//! proxy saw it. Everything to its left was written by the client and is ignored: taking
//! the leftmost entry would let every request choose its own address (and so its own
//! rate-limit bucket and audit IP).

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use crate::state::AppState;

#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl ClientIp {
    pub fn key(&self) -> String {
        self.0.map_or_else(|| "unknown".into(), |ip| ip.to_string())
    }
}

/// The client address of a request from `peer` carrying `forwarded_for` (the
/// `X-Forwarded-For` values, in order), behind `hops` trusted proxies (0: none, the
/// header is ignored). A header with fewer entries than `hops` came through fewer
/// proxies: its leftmost entry is then the nearest to the client that a proxy wrote.
/// An entry that is not an address falls back to the peer.
pub fn resolve(forwarded_for: &[&str], peer: Option<IpAddr>, hops: u32) -> Option<IpAddr> {
    if hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = forwarded_for
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if entries.iter().all(|e| e.is_empty()) {
        return peer;
    }
    let hops = usize::try_from(hops).unwrap_or(usize::MAX);
    let index = entries.len().saturating_sub(hops);
    entries[index].parse().ok().or(peer)
}

/// Puts the `ClientIp` of every request (API and gateway) in its extensions.
pub async fn middleware(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let forwarded: Vec<&str> = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let ip = ClientIp(resolve(&forwarded, peer, state.settings.trusted_proxy_hops));
    request.extensions_mut().insert(ip);
    next.run(request).await
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .unwrap_or(ClientIp(None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn counted_from_the_right() {
        let peer = ip("10.0.0.9");
        // Client-written "6.6.6.6", then CloudFront wrote the client, the ALB CloudFront.
        let header = ["6.6.6.6, 203.0.113.7, 130.176.0.1"];
        assert_eq!(resolve(&header, peer, 2), ip("203.0.113.7"));
        assert_eq!(resolve(&header, peer, 1), ip("130.176.0.1"));
        assert_eq!(
            resolve(&header, peer, 0),
            peer,
            "no trusted proxy: the peer"
        );
        // The same entries over several header lines.
        let lines = ["6.6.6.6", "203.0.113.7", "130.176.0.1"];
        assert_eq!(resolve(&lines, peer, 2), ip("203.0.113.7"));
    }

    #[test]
    fn a_forged_prefix_does_not_change_the_answer() {
        let peer = ip("10.0.0.9");
        for forged in ["1.2.3.4", "1.2.3.4, 5.6.7.8", "garbage", ""] {
            let header = format!("{forged}, 203.0.113.7, 130.176.0.1");
            assert_eq!(
                resolve(&[header.as_str()], peer, 2),
                ip("203.0.113.7"),
                "{header}"
            );
        }
    }

    #[test]
    fn short_missing_or_bad_headers() {
        let peer = ip("10.0.0.9");
        assert_eq!(resolve(&["203.0.113.7"], peer, 2), ip("203.0.113.7"));
        assert_eq!(resolve(&[], peer, 2), peer);
        assert_eq!(resolve(&[" "], peer, 2), peer);
        assert_eq!(resolve(&["1.2.3.4, nonsense"], peer, 1), peer);
        assert_eq!(resolve(&["2001:db8::1"], None, 1), ip("2001:db8::1"));
        assert_eq!(resolve(&["1.2.3.4"], peer, u32::MAX), ip("1.2.3.4"));
    }
}
