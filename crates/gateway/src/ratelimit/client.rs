//! Who a client is, as the limits count it.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use flotilla_identity::Principal;

/// The client a request is counted against.
///
/// | the caller | the client |
/// | --- | --- |
/// | a user's token (authenticated route) | `user:SUBJECT` |
/// | a machine's token (client credentials: its subject is its client id) | `client:CLIENT_ID` |
/// | anyone on a public route (a token is not checked there, so not believed) | `ip:ADDRESS`, an IPv6 address by its /64 (one host's share of a network) |
/// | no address known (a test calling the stack directly) | `unknown`: one bucket for all |
///
/// The address is the connection's peer: an `X-Forwarded-For` header comes from the client
/// and is never believed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// A user, by the subject of their token.
    User(Arc<str>),
    /// A machine client, by its client id.
    Machine(Arc<str>),
    /// An anonymous caller, by address (an IPv6 address's /64).
    Address(IpAddr),
    /// An anonymous caller whose address is not known.
    Unknown,
}

impl Client {
    /// The client of a request whose exchange carries `extensions`: the [`Principal`] the
    /// authentication layer put there, else the connection's address (`ConnectInfo`).
    pub fn of(extensions: &http::Extensions) -> Self {
        if let Some(principal) = extensions.get::<Principal>() {
            return match &principal.client_id {
                Some(id) if *id == principal.subject => Client::Machine(Arc::from(id.as_str())),
                _ => Client::User(Arc::from(principal.subject.as_str())),
            };
        }
        match extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(peer)) => Client::Address(network_of(peer.ip())),
            None => Client::Unknown,
        }
    }
}

/// The address a client is counted by: an IPv4 address (mapped into IPv6 or not) as it is, an
/// IPv6 address's /64 (a host usually has a whole /64 to pick addresses from).
fn network_of(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !(u128::from(u64::MAX));
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

impl fmt::Display for Client {
    /// The client as a key: `user:alice`, `client:ci`, `ip:192.0.2.1`, `ip:2001:db8::/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::User(subject) => write!(f, "user:{subject}"),
            Client::Machine(id) => write!(f, "client:{id}"),
            Client::Address(IpAddr::V4(v4)) => write!(f, "ip:{v4}"),
            Client::Address(IpAddr::V6(v6)) => write!(f, "ip:{v6}/64"),
            Client::Unknown => f.write_str("unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(subject: &str, client_id: Option<&str>) -> Principal {
        Principal {
            subject: subject.to_owned(),
            client_id: client_id.map(str::to_owned),
            roles: Vec::new(),
            scopes: Vec::new(),
            expires_at: 0,
            token_id: None,
            token: Arc::from("t"),
        }
    }

    fn client_of(principal: Option<Principal>, peer: Option<&str>) -> String {
        let mut extensions = http::Extensions::new();
        if let Some(principal) = principal {
            extensions.insert(principal);
        }
        if let Some(peer) = peer {
            let peer: SocketAddr = peer.parse().expect("an address");
            extensions.insert(ConnectInfo(peer));
        }
        Client::of(&extensions).to_string()
    }

    #[test]
    fn a_token_names_the_client_before_the_address() {
        let peer = Some("192.0.2.7:40000");
        assert_eq!(
            client_of(Some(principal("alice", None)), peer),
            "user:alice"
        );
        assert_eq!(
            client_of(Some(principal("alice", Some("shop-web"))), peer),
            "user:alice",
            "a user's token issued through a client is the user's"
        );
        assert_eq!(
            client_of(Some(principal("reporting", Some("reporting"))), peer),
            "client:reporting"
        );
        assert_eq!(client_of(None, peer), "ip:192.0.2.7");
        assert_eq!(client_of(None, None), "unknown");
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_its_address() {
        assert_eq!(
            client_of(None, Some("[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:443")),
            "ip:2001:db8:1:2::/64"
        );
        assert_eq!(
            client_of(None, Some("[2001:db8:1:2::9]:443")),
            client_of(None, Some("[2001:db8:1:2:ffff::1]:80")),
            "one /64, one client"
        );
        assert_eq!(
            client_of(None, Some("[::ffff:192.0.2.9]:1")),
            "ip:192.0.2.9"
        );
    }
}
