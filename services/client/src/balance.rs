//! Round-robin over the healthy gateways, and the loop that keeps "healthy" true.
//!
//! Our own small balancer rather than tonic's `balance_channel`: that one picks by
//! power-of-two-choices (calls made one at a time land at random, not in turn), and it quietly
//! drops an endpoint whose connection fails, which would then need re-adding behind its back.
//! Here membership is ours alone: every gateway keeps its lazily (re)connecting channel, and
//! the health loop only flips whether calls may go to it.
//!
//! When no gateway is healthy, calls go to all of them anyway: a real error (or a gateway
//! that has just recovered) beats an invented "no healthy gateway".

use std::{
    collections::HashSet,
    error::Error as StdError,
    future::{Future, poll_fn},
    pin::Pin,
    sync::{
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tonic::{
    Code, Request, Status,
    body::Body,
    codegen::{Service, StdError as BoxError, http},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tracing::{info, warn};

use crate::{
    ApiKey, ClientError, ClientOptions, HEALTH_SERVICE,
    address::{Target, authority, parse_targets},
};

/// A `tower` service that sends each call to the next healthy gateway in turn. Cheap to
/// clone: clones share the gateways and the turn.
#[derive(Debug, Clone)]
pub struct Balanced {
    pool: Arc<Pool>,
}

#[derive(Debug)]
struct Pool {
    members: RwLock<Vec<Member>>,
    next: AtomicUsize,
    /// A health loop watches the members: only then may a failed call take one out (the loop
    /// brings it back).
    managed: bool,
}

#[derive(Debug, Clone)]
struct Member {
    /// The gateway's URL, as logged and reported.
    key: String,
    /// Which target (address as given) it comes from: a `dns:///` name's addresses are
    /// replaced together when the name is looked up again.
    source: usize,
    channel: Channel,
    healthy: bool,
}

impl Balanced {
    /// The gateways a call may go to now (for reports and tests).
    pub fn healthy_gateways(&self) -> Vec<String> {
        read(&self.pool.members)
            .iter()
            .filter(|m| m.healthy)
            .map(|m| m.key.clone())
            .collect()
    }

    fn new(members: Vec<Member>, managed: bool) -> Balanced {
        Balanced {
            pool: Arc::new(Pool {
                members: RwLock::new(members),
                next: AtomicUsize::new(first_turn()),
                managed,
            }),
        }
    }
}

/// Where a new client's turns start: anywhere, so that one-call commands (each a process of its
/// own, making one call) spread over the gateways instead of all calling the first one.
fn first_turn() -> usize {
    use std::hash::{BuildHasher, Hasher};
    // Randomly keyed by the standard library, per process: no dependency for a random number.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    usize::try_from(random % 1024).unwrap_or(0)
}

impl Pool {
    /// The next gateway in turn among the healthy ones (all of them when none is).
    fn pick(&self) -> Option<(String, Channel)> {
        let members = read(&self.members);
        let healthy = members.iter().filter(|m| m.healthy).count();
        let candidates = if healthy == 0 { members.len() } else { healthy };
        if candidates == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % candidates;
        members
            .iter()
            .filter(|m| healthy == 0 || m.healthy)
            .nth(turn)
            .map(|m| (m.key.clone(), m.channel.clone()))
    }

    /// A call to `key` failed at the transport: stop sending to it until a health check
    /// passes, rather than fail the next calls in turn too.
    fn mark_down(&self, key: &str, error: &dyn StdError) {
        if !self.managed {
            return;
        }
        let mut members = write(&self.members);
        if let Some(member) = members.iter_mut().find(|m| m.key == key && m.healthy) {
            member.healthy = false;
            warn!(gateway = %key, error = %chain(error), "call to gateway failed; sending to the others until its health check passes");
        }
    }

    fn snapshot(&self) -> Vec<(String, Channel)> {
        read(&self.members)
            .iter()
            .map(|m| (m.key.clone(), m.channel.clone()))
            .collect()
    }

    fn apply(&self, results: &[(String, Result<(), String>)]) {
        let mut members = write(&self.members);
        for (key, result) in results {
            let Some(member) = members.iter_mut().find(|m| &m.key == key) else {
                continue;
            };
            match (result, member.healthy) {
                (Ok(()), false) => {
                    member.healthy = true;
                    info!(gateway = %key, "gateway is serving; sending calls to it");
                }
                (Err(reason), true) => {
                    member.healthy = false;
                    warn!(gateway = %key, %reason, "gateway failed its health check; sending to the others until it recovers");
                }
                _ => {}
            }
        }
    }

    /// Replaces the members that came from `source` by `found`, keeping those still there
    /// (with their connections and health) and adding the new ones as unhealthy until probed.
    fn replace_source(&self, source: usize, found: Vec<(String, Endpoint)>) {
        let mut members = write(&self.members);
        let keys: HashSet<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        members.retain(|m| {
            let keep = m.source != source || keys.contains(m.key.as_str());
            if !keep {
                info!(gateway = %m.key, "gateway no longer resolved; removed");
            }
            keep
        });
        for (key, endpoint) in found {
            if members.iter().all(|m| m.key != key) {
                info!(gateway = %key, "gateway resolved; added once its health check passes");
                members.push(Member {
                    key,
                    source,
                    channel: endpoint.connect_lazy(),
                    healthy: false,
                });
            }
        }
    }
}

impl Service<http::Request<Body>> for Balanced {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is the chosen gateway's, awaited in `call`: the choice is made per call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let picked = self.pool.pick();
        let pool = self.pool.clone();
        Box::pin(async move {
            let Some((key, mut channel)) = picked else {
                // A Status, so tonic passes its code through instead of calling it UNKNOWN.
                return Err(
                    Box::new(Status::unavailable("no gateway address resolved")) as BoxError
                );
            };
            let result = async {
                poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(request).await
            }
            .await;
            if let Err(err) = &result {
                pool.mark_down(&key, err);
            }
            result.map_err(Into::into)
        })
    }
}

/// Builds endpoints: timeouts, keep-alives and TLS as the options say.
#[derive(Debug, Clone)]
struct Dialer {
    ca: Option<Certificate>,
    connect_timeout: Duration,
}

impl Dialer {
    fn new(options: &ClientOptions, targets: &[Target]) -> Result<Dialer, ClientError> {
        let ca = match &options.ca_cert {
            Some(path) => Some(Certificate::from_pem(std::fs::read(path).map_err(
                |source| ClientError::CaCert {
                    path: path.clone(),
                    source,
                },
            )?)),
            None => None,
        };
        if ca.is_none()
            && let Some(target) = targets.iter().find(|t| t.needs_tls())
        {
            // No system roots are built in: without a CA every handshake would fail later.
            return Err(ClientError::MissingCaCert {
                addr: target.to_string(),
            });
        }
        Ok(Dialer {
            ca,
            connect_timeout: options.connect_timeout,
        })
    }

    fn endpoint(&self, url: &str, host: &str, tls: bool) -> Result<Endpoint, ClientError> {
        let endpoint = Channel::from_shared(url.to_owned())
            .map_err(|err| ClientError::InvalidAddress {
                addr: url.to_owned(),
                reason: err.to_string(),
            })?
            .connect_timeout(self.connect_timeout)
            // A gateway that vanishes without closing its connections (host down, network
            // cut) is noticed by its silence to pings, not only by the next call.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        match (&self.ca, tls) {
            (Some(ca), true) => endpoint
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(ca.clone())
                        .domain_name(host),
                )
                .map_err(|source| ClientError::Tls {
                    addr: url.to_owned(),
                    source,
                }),
            _ => Ok(endpoint),
        }
    }

    /// The gateways of one target: itself, or every address its name resolves to (TLS when
    /// a CA certificate is given, checked against the name).
    async fn resolve(&self, target: &Target) -> Result<Vec<(String, Endpoint)>, ClientError> {
        match target {
            Target::Url { url, host, tls } => {
                Ok(vec![(url.clone(), self.endpoint(url, host, *tls)?)])
            }
            Target::Dns { host, port } => {
                let tls = self.ca.is_some();
                let scheme = if tls { "https" } else { "http" };
                let resolve_error = |reason: String| ClientError::Resolve {
                    addr: target.to_string(),
                    reason,
                };
                let lookup = tokio::net::lookup_host(authority(host, *port));
                let addrs = tokio::time::timeout(self.connect_timeout, lookup)
                    .await
                    .map_err(|_| resolve_error("no answer in time".into()))?
                    .map_err(|err| resolve_error(err.to_string()))?;
                let mut found: Vec<(String, Endpoint)> = Vec::new();
                for addr in addrs {
                    let url = format!("{scheme}://{addr}");
                    if found.iter().all(|(k, _)| *k != url) {
                        let endpoint = self.endpoint(&url, host, tls)?;
                        found.push((url, endpoint));
                    }
                }
                if found.is_empty() {
                    return Err(resolve_error("no addresses".into()));
                }
                Ok(found)
            }
        }
    }
}

/// See [`crate::connect`].
pub(crate) async fn connect(options: &ClientOptions) -> Result<(Balanced, ApiKey), ClientError> {
    let targets = parse_targets(&options.addrs)?;
    let api_key = ApiKey::new(options.api_key.as_deref())?;
    let dialer = Dialer::new(options, &targets)?;

    if let [target @ Target::Url { .. }] = targets.as_slice() {
        // One gateway: nothing to balance or fail over to; connected as a plain channel.
        let members = connect_now(&dialer, target, 0).await?;
        return Ok((Balanced::new(members, false), api_key));
    }

    let mut members = Vec::new();
    let mut failures = Vec::new();
    for (source, target) in targets.iter().enumerate() {
        match dialer.resolve(target).await {
            Ok(found) => {
                for (key, endpoint) in found {
                    if members.iter().all(|m: &Member| m.key != key) {
                        members.push(Member {
                            key,
                            source,
                            channel: endpoint.connect_lazy(),
                            healthy: false,
                        });
                    }
                }
            }
            Err(err) => failures.push(err.to_string()),
        }
    }
    let balanced = Balanced::new(members, true);
    // The first check may include connecting: it gets the connect timeout.
    let first_wait = options.connect_timeout.max(options.health_timeout);
    let results = probe_all(
        balanced.pool.snapshot(),
        &api_key,
        first_wait,
        Some(options.health_timeout),
    )
    .await;
    balanced.pool.apply(&results);
    if balanced.healthy_gateways().is_empty() {
        failures.extend(
            results
                .into_iter()
                .filter_map(|(key, result)| result.err().map(|reason| format!("{key}: {reason}"))),
        );
        return Err(ClientError::Unreachable {
            addrs: targets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            details: failures.join("; "),
            several: true,
        });
    }
    tokio::spawn(health_loop(
        Arc::downgrade(&balanced.pool),
        dialer,
        targets,
        api_key.clone(),
        options.clone(),
    ));
    Ok((balanced, api_key))
}

/// Connects to every gateway of `target` at once (a wrong address fails here, not as the
/// first call's error).
async fn connect_now(
    dialer: &Dialer,
    target: &Target,
    source: usize,
) -> Result<Vec<Member>, ClientError> {
    let mut members = Vec::new();
    for (key, endpoint) in dialer.resolve(target).await? {
        let channel = endpoint
            .connect()
            .await
            .map_err(|err| ClientError::Unreachable {
                addrs: key.clone(),
                details: chain(&err),
                several: false,
            })?;
        members.push(Member {
            key,
            source,
            channel,
            healthy: true,
        });
    }
    Ok(members)
}

/// Checks every gateway's health every `health_interval`, and looks `dns:///` names up again
/// every `resolve_interval`; ends when the last client of the pool is dropped.
async fn health_loop(
    pool: Weak<Pool>,
    dialer: Dialer,
    targets: Vec<Target>,
    api_key: ApiKey,
    options: ClientOptions,
) {
    let mut ticks = tokio::time::interval(options.health_interval.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once, and `connect` has just checked every gateway.
    ticks.tick().await;
    let mut resolved_at = Instant::now();
    loop {
        ticks.tick().await;
        let Some(strong) = pool.upgrade() else {
            return;
        };
        if resolved_at.elapsed() >= options.resolve_interval {
            resolved_at = Instant::now();
            for (source, target) in targets.iter().enumerate() {
                if !matches!(target, Target::Dns { .. }) {
                    continue;
                }
                match dialer.resolve(target).await {
                    Ok(found) => strong.replace_source(source, found),
                    // The last answer stands: a resolver hiccup must not empty the pool.
                    Err(err) => warn!(error = %err, "looking up the gateways again failed"),
                }
            }
        }
        let members = strong.snapshot();
        // Not held while probing: dropping the last client ends the loop at the next tick.
        drop(strong);
        let results = probe_all(members, &api_key, options.health_timeout, None).await;
        match pool.upgrade() {
            Some(strong) => strong.apply(&results),
            None => return,
        }
    }
}

/// Checks every gateway at once and returns their answers, in the gateways' order (so that
/// reports list them as given): once all have answered, or, with a `patience`, once one serves
/// and that long has passed. A new client must not wait on a gateway that does not answer when
/// it has another; a check still out then is dropped, and the health loop asks again.
async fn probe_all(
    members: Vec<(String, Channel)>,
    api_key: &ApiKey,
    wait: Duration,
    patience: Option<Duration>,
) -> Vec<(String, Result<(), String>)> {
    let patience = patience.map(|patience| tokio::time::Instant::now() + patience);
    let mut probes = tokio::task::JoinSet::new();
    for (order, (key, channel)) in members.into_iter().enumerate() {
        let api_key = api_key.clone();
        probes.spawn(async move { (order, key, probe(channel, api_key, wait).await) });
    }
    let mut results = Vec::new();
    loop {
        let serving = results
            .iter()
            .any(|(_, _, result): &(_, _, Result<(), _>)| result.is_ok());
        let next = match patience.filter(|_| serving) {
            Some(patience) => match tokio::time::timeout_at(patience, probes.join_next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => probes.join_next().await,
        };
        let Some(joined) = next else { break };
        // A probe that panicked says nothing about its gateway: it stays as it was.
        if let Ok(result) = joined {
            results.push(result);
        }
    }
    results.sort_by_key(|(order, _, _)| *order);
    results
        .into_iter()
        .map(|(_, key, result)| (key, result))
        .collect()
}

/// One health check: Ok when the gateway says SERVING for the task service.
async fn probe(channel: Channel, api_key: ApiKey, wait: Duration) -> Result<(), String> {
    let mut health = HealthClient::with_interceptor(channel, api_key);
    let mut request = Request::new(HealthCheckRequest {
        service: HEALTH_SERVICE.to_owned(),
    });
    request.set_timeout(wait);
    match tokio::time::timeout(wait, health.check(request)).await {
        Err(_) => Err(format!("no answer within {wait:?}")),
        Ok(Ok(response)) => match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(other.as_str_name().to_owned()),
        },
        // A server without a health service cannot say; calls will tell.
        Ok(Err(status)) if status.code() == Code::Unimplemented => Ok(()),
        Ok(Err(status)) => Err(status_text(&status)),
    }
}

fn status_text(status: &Status) -> String {
    // A transport failure's message only repeats the top of its cause: the cause says more.
    match status.source() {
        Some(source) => format!("{:?}: {}", status.code(), chain(source)),
        None => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// An error and its causes, `a: b: c` (transport errors say little at the top).
fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The members are only held for a lookup or an update; a poisoned lock (a panicking holder)
/// still holds consistent data.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
