//! How every dalc client reaches gateways.
//!
//! [`connect`] turns [`ClientOptions`] into a `dalc.v1.TaskService` client that:
//! * spreads calls round-robin over several gateways (`http://a:50051,http://b:50051`) or over
//!   every address a name resolves to (`dns:///host:port`, looked up again periodically);
//! * checks each gateway's health (`grpc.health.v1.Health/Check` for `dalc.v1.TaskService`)
//!   every few seconds and sends nothing to one that is not SERVING, answers an error or not
//!   at all, until it recovers;
//! * speaks TLS to `https://` addresses, trusting the `--ca-cert` PEM file;
//! * adds `authorization: Bearer <key>` to every call when given an API key.
//!
//! One plain address behaves as a plain tonic channel always did: connected at once, no health
//! checks (there is no other gateway to turn to).

mod address;
mod auth;
mod balance;

use std::{fmt, path::PathBuf, time::Duration};

use dalc_proto::v1::task_service_client::TaskServiceClient;
use tonic::service::interceptor::InterceptedService;

pub use crate::{
    address::{Target, parse_target, parse_targets},
    auth::ApiKey,
    balance::Balanced,
};

/// A `dalc.v1.TaskService` client over the balanced, authenticated gateways.
pub type DalcClient = TaskServiceClient<InterceptedService<Balanced, ApiKey>>;

/// The health service name whose status says a gateway takes tasks.
pub const HEALTH_SERVICE: &str = "dalc.v1.TaskService";

/// Where the gateways are and how to talk to them.
#[derive(Clone)]
pub struct ClientOptions {
    /// Gateway addresses; each entry may be a comma-separated list.
    pub addrs: Vec<String>,
    /// Sent as `authorization: Bearer <key>` on every call (never logged).
    pub api_key: Option<String>,
    /// PEM file of the CA certificate that signed the gateways' certificates (for `https://`
    /// addresses, and `dns:///` ones, which then use TLS).
    pub ca_cert: Option<PathBuf>,
    /// How long connecting to one gateway may take.
    pub connect_timeout: Duration,
    /// How often each gateway's health is checked (several gateways only).
    pub health_interval: Duration,
    /// A health check not answered within this counts as a failure.
    pub health_timeout: Duration,
    /// How often `dns:///` names are looked up again.
    pub resolve_interval: Duration,
}

impl ClientOptions {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
    pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

    /// Options for `addrs` with the defaults: no API key, no CA certificate.
    pub fn new<S: Into<String>>(addrs: impl IntoIterator<Item = S>) -> ClientOptions {
        ClientOptions {
            addrs: addrs.into_iter().map(Into::into).collect(),
            api_key: None,
            ca_cert: None,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            health_interval: Self::DEFAULT_HEALTH_INTERVAL,
            health_timeout: Self::DEFAULT_HEALTH_TIMEOUT,
            resolve_interval: Self::DEFAULT_RESOLVE_INTERVAL,
        }
    }
}

// By hand: the derived one would print the API key.
impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("addrs", &self.addrs)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .field("connect_timeout", &self.connect_timeout)
            .field("health_interval", &self.health_interval)
            .field("health_timeout", &self.health_timeout)
            .field("resolve_interval", &self.resolve_interval)
            .finish()
    }
}

/// Why no client could be made. Never contains the API key.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no gateway address given")]
    NoAddress,
    #[error("invalid gateway address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },
    #[error("{addr} uses TLS: give the CA certificate that signed the gateway's (--ca-cert FILE)")]
    MissingCaCert { addr: String },
    #[error("cannot read the CA certificate {}: {source}", path.display())]
    CaCert {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid API key: it must be printable ASCII")]
    InvalidApiKey,
    #[error("cannot set up TLS for {addr}: {source}")]
    Tls {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("cannot resolve {addr}: {reason}")]
    Resolve { addr: String, reason: String },
    /// No gateway answered: `addrs` as given, `details` per address.
    #[error("cannot reach {} at {addrs}: {details}", if *.several { "any gateway" } else { "the gateway" })]
    Unreachable {
        addrs: String,
        details: String,
        several: bool,
    },
}

/// Connects to the gateways of `options`: see the crate documentation.
pub async fn connect(options: &ClientOptions) -> Result<DalcClient, ClientError> {
    let (balanced, api_key) = balance::connect(options).await?;
    Ok(TaskServiceClient::with_interceptor(balanced, api_key))
}
