//! HTTP clients for calls chatdesk makes to the outside: providers' APIs, and addresses a tenant
//! chose (a generic inbox's receiver, a bot's model endpoint, a flow's webhook). The second kind
//! connects only where the outbound policy (`chatdesk_core::outbound`) allows, judged on the
//! address actually connected to, so a name cannot answer one address to a check and another to
//! the call; no client follows redirects (a redirect is an answer, not an instruction to call
//! somewhere else on a tenant's behalf).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chatdesk_core::outbound::{OutboundPolicy, Refused};

fn builder() -> reqwest::ClientBuilder {
    // reqwest is built without a bundled crypto provider: use ring, once per process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("chatdesk/", env!("CARGO_PKG_VERSION")))
}

/// A client for providers' APIs, with `timeout` per request.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    builder().timeout(timeout).connect_timeout(timeout.min(Duration::from_secs(5))).build()
}

/// A client for addresses a tenant chose, held to `policy`; `timeout` per request, or `None`
/// when each call sets its own.
pub fn guarded_client(
    policy: Arc<OutboundPolicy>,
    timeout: Option<Duration>,
) -> Result<reqwest::Client, reqwest::Error> {
    let connect = timeout.unwrap_or(Duration::from_secs(5)).min(Duration::from_secs(5));
    let mut builder = builder().connect_timeout(connect).dns_resolver(GuardedResolver { policy });
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    builder.build()
}

/// Why a URL a tenant gave cannot be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadUrl {
    #[error("must be an http:// or https:// URL")]
    Malformed,
    #[error("must not carry a user name or password")]
    Credentials,
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// Parses `raw` as the HTTP client will (the WHATWG URL rules, which turn `127.1.`,
/// `0x7f000001` or `2130706433` into 127.0.0.1) and checks the result against `policy`: the
/// scheme, and an address written in the URL, port and all. A name is checked again on the
/// addresses it resolves to when connecting ([`guarded_client`]). Call it before every call, so a
/// stored URL is held to the policy the process runs with now.
pub fn checked_url(policy: &OutboundPolicy, raw: &str) -> Result<reqwest::Url, BadUrl> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|_| BadUrl::Malformed)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(BadUrl::Credentials);
    }
    let port = url.port_or_known_default().unwrap_or(0);
    policy.check_url(url.scheme(), url.host_str(), port)?;
    Ok(url)
}

/// Whether a failed call was refused by the policy (rather than failing at the receiver).
pub fn refused_by_policy(error: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.downcast_ref::<Refused>().is_some() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Resolves names and keeps only the addresses the outbound policy allows, so the connection
/// goes to an address that was checked.
struct GuardedResolver {
    policy: Arc<OutboundPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                found.into_iter().filter(|address| policy.allows_resolved(&host, address.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(Refused::NotPublic) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
