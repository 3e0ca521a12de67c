//! RabbitMQ over AMQP 0-9-1 with lapin.
//!
//! Topology (names from [`QueueNames`]):
//! - `dalc.tasks`: the durable request queue. Classic (with priorities) or quorum (replicated,
//!   with a delivery limit); either dead-letters to `dalc.tasks.dead`.
//! - `dalc.reply.<gateway>`: one per gateway, named by the client, expiring once unused.
//! - `dalc.events`: a topic exchange of status events (routing key = status); each gateway binds
//!   its own expiring queue `dalc.events.<gateway>` to it.
//!
//! Two connections per broker handle, each re-established on demand after a failure: one that
//! publishes (tasks, replies, events) and one that consumes and acks. RabbitMQ blocks publishing
//! connections during a memory or disk alarm; acks and consumers on the other connection carry on,
//! and publishes fail fast with [`QueueError::Unavailable`] while the block lasts. Every publish
//! awaits its publisher confirm, bounded by a timeout so no caller hangs on a dead broker.

use std::{
    collections::BTreeMap,
    str::FromStr,
    sync::{
        Arc, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use dalc_domain::{Priority, Task};
use futures::{FutureExt, StreamExt, stream};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    message::Delivery as LapinDelivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions,
        BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
    uri::AMQPUri,
};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::{
    DeadLetterConsumer, Deliveries, Delivery, Destination, MalformedMessage, QueueError,
    QueueNames, Settle, TaskConsumer, TaskMessage, TaskPublisher, UpdateConsumer, UpdatePublisher,
    Updates,
    finish_on_drop::FinishOnDrop,
    message::{decode_update, encode_update},
};

/// Which kind of queue holds the tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// A single-node queue with message priorities (`x-max-priority`).
    #[default]
    Classic,
    /// A replicated Raft queue for clustered RabbitMQ, with a delivery limit; on RabbitMQ 3.10
    /// it has no priorities.
    Quorum,
}

impl FromStr for QueueType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(format!(
                "unknown queue type {other:?}: expected classic or quorum"
            )),
        }
    }
}

/// How to reach the broker and shape the topology.
#[derive(Clone)]
pub struct AmqpConfig {
    /// e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`
    pub url: String,
    pub names: QueueNames,
    pub queue_type: QueueType,
    /// Quorum queues: deliveries of one message before the broker dead-letters it.
    pub delivery_limit: u32,
    /// Classic queues: the highest message priority.
    pub max_priority: u8,
    /// The most tasks the request queue holds; past it the broker refuses publishes
    /// (`x-overflow: reject-publish`) and submissions answer RESOURCE_EXHAUSTED. `None`: no bound.
    pub max_queue_length: Option<u32>,
    /// Bound on connecting and on each publish confirm.
    pub operation_timeout: Duration,
    /// AMQP heartbeat, unless the URL sets one: a dead peer is noticed within about twice this.
    pub heartbeat: Duration,
    /// An unused reply or events queue is deleted after this long.
    pub reply_queue_expiry: Duration,
    /// The most updates a gateway's reply or events queue holds; past it the oldest are dropped
    /// (waiters fall back to the database).
    pub update_queue_max_length: u32,
    /// The most messages `dalc.tasks.dead` holds (the oldest go first) ...
    pub dead_letter_max_length: u32,
    /// ... and how long each stays there if no gateway consumes them.
    pub dead_letter_ttl: Duration,
    /// Shown in the RabbitMQ management UI (with " publish" or " consume" appended).
    pub connection_name: String,
    /// Where reconnects and publish-confirm latency are counted.
    pub metrics: Arc<dalc_telemetry::Metrics>,
}

impl std::fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConfig")
            // Never the password: configs end up in logs.
            .field("url", &redact_url(&self.url))
            .field("names", &self.names)
            .field("queue_type", &self.queue_type)
            .field("delivery_limit", &self.delivery_limit)
            .field("max_priority", &self.max_priority)
            .field("max_queue_length", &self.max_queue_length)
            .field("operation_timeout", &self.operation_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("reply_queue_expiry", &self.reply_queue_expiry)
            .field("update_queue_max_length", &self.update_queue_max_length)
            .field("dead_letter_max_length", &self.dead_letter_max_length)
            .field("dead_letter_ttl", &self.dead_letter_ttl)
            .field("connection_name", &self.connection_name)
            .finish_non_exhaustive()
    }
}

impl AmqpConfig {
    pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;
    pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_DEAD_LETTER_MAX_LENGTH: u32 = 100_000;
    pub const DEFAULT_DEAD_LETTER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

    pub fn new(url: impl Into<String>, names: QueueNames) -> Self {
        AmqpConfig {
            url: url.into(),
            names,
            queue_type: QueueType::Classic,
            delivery_limit: Self::DEFAULT_DELIVERY_LIMIT,
            max_priority: Priority::MAX,
            max_queue_length: None,
            operation_timeout: Self::DEFAULT_OPERATION_TIMEOUT,
            heartbeat: Duration::from_secs(10),
            reply_queue_expiry: Duration::from_secs(60),
            update_queue_max_length: 10_000,
            dead_letter_max_length: Self::DEFAULT_DEAD_LETTER_MAX_LENGTH,
            dead_letter_ttl: Self::DEFAULT_DEAD_LETTER_TTL,
            connection_name: "dalc".to_owned(),
            metrics: Arc::default(),
        }
    }
}

/// The largest AMQP frame we ask for, unless the URL sets `frame_max`. lapin keeps two ring
/// buffers of 32 frames per connection, and RabbitMQ's 128 KiB default makes that 8 MiB per
/// connection touched under load; dalc's messages are a few hundred bytes, and a larger one
/// simply travels in several frames.
const FRAME_MAX: u32 = 16 * 1024;

/// After a failed connect, publishes within this window fail fast instead of queueing up
/// behind another connect attempt (calls are refused at once for as long as the broker is
/// known to be down: see [`AmqpBroker::ready_to_publish`]).
const FAIL_FAST_WINDOW: Duration = Duration::from_millis(500);

/// Where health probes are published: a routing key no queue has, so the broker drops them.
const HEALTH_PROBE_ROUTING_KEY: &str = "dalc.health-probe.no-such-queue";

/// How many updates a gateway's update consumer holds unacked: bounds what lapin buffers when
/// routing lags.
const UPDATE_PREFETCH: u16 = 256;
/// Updates acked at once (well under the prefetch, so the consumer never stalls on its acks).
const UPDATE_ACK_EVERY: u64 = 32;

/// A handle on the broker. Clones share its two connections.
#[derive(Debug, Clone)]
pub struct AmqpBroker {
    config: Arc<AmqpConfig>,
    /// Publishes tasks, replies and events, on a confirm channel.
    publishing: Arc<Lane>,
    /// Consumes and acks; never publishes, so a broker alarm never blocks it.
    consuming: Arc<Lane>,
}

/// One connection, opened on demand and re-opened after a failure.
#[derive(Debug)]
struct Lane {
    role: Role,
    state: Mutex<LinkState>,
    /// Why the last connect failed, while none has succeeded since: the broker is known to be
    /// down. Outside `state`, whose lock a connect holds for as long as it takes. (Read for
    /// the publishing lane only: calls are refused on what publishing can do.)
    down: std::sync::Mutex<Option<QueueError>>,
    /// Whether a reconnect that `ready_to_publish` started is under way.
    reconnecting: AtomicBool,
}

impl Lane {
    fn known_down(&self) -> Option<QueueError> {
        self.down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records how a connect ended: a failure makes the broker known to be down until a
    /// connect succeeds.
    fn connected(&self, state: &mut LinkState, outcome: Result<&Link, &QueueError>) {
        let failure = outcome.err().cloned();
        state.last_failure = failure.clone().map(|err| (Instant::now(), err));
        self.set_down(failure);
    }

    fn set_down(&self, failure: Option<QueueError>) {
        *self.down.lock().unwrap_or_else(PoisonError::into_inner) = failure;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Publish,
    Consume,
}

#[derive(Debug, Default)]
struct LinkState {
    link: Option<Link>,
    last_failure: Option<(Instant, QueueError)>,
    /// Whether a connection was ever made: the next one is then a reconnect.
    connected_before: bool,
}

#[derive(Debug, Clone)]
struct Link {
    connection: Arc<Connection>,
    /// Publishing lane: in confirm mode, shared by all publishes (lapin multiplexes confirms on
    /// one channel). Consuming lane: for declares and passive queue inspections.
    channel: Channel,
}

impl Link {
    fn is_live(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

impl AmqpBroker {
    /// Connects both lanes and declares the topology, so a misconfiguration shows at start-up.
    pub async fn connect(config: AmqpConfig) -> Result<Self, QueueError> {
        let lane = |role| {
            Arc::new(Lane {
                role,
                state: Mutex::new(LinkState::default()),
                down: std::sync::Mutex::new(None),
                reconnecting: AtomicBool::new(false),
            })
        };
        let broker = AmqpBroker {
            config: Arc::new(config),
            publishing: lane(Role::Publish),
            consuming: lane(Role::Consume),
        };
        broker.link(&broker.publishing).await?;
        broker.link(&broker.consuming).await?;
        Ok(broker)
    }

    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }

    /// Whether a publish has a chance right now, without waiting: `Err` while the broker blocks
    /// publishing, or is known to be down (the last connect failed and none has succeeded
    /// since). Lets a gateway refuse a call before writing it. While the broker is down, the
    /// reconnecting happens off the callers' path, so none of them waits on a connect.
    pub fn ready_to_publish(&self) -> Result<(), QueueError> {
        if let Some(err) = self.publishing.known_down() {
            self.reconnect_in_background();
            return Err(err);
        }
        let Ok(state) = self.publishing.state.try_lock() else {
            // A publish is taking the link: it will find out.
            return Ok(());
        };
        match &state.link {
            Some(link) if link.is_live() && link.connection.status().blocked() => {
                Err(QueueError::Blocked)
            }
            Some(link) if link.is_live() => Ok(()),
            // Lost: reconnect on a task of its own as well, whose outcome is recorded even if
            // every call that tries to publish meanwhile gives up on its own connect first (a
            // call's deadline can be shorter than a connect's timeout).
            _ => {
                drop(state);
                self.reconnect_in_background();
                Ok(())
            }
        }
    }

    /// Tries to reconnect the publishing lane on a task of its own, one attempt at a time (and
    /// at most one per [`FAIL_FAST_WINDOW`]): the first call after the broker is back finds it
    /// connected.
    fn reconnect_in_background(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.publishing.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        /// Clears the lane's `reconnecting` however the attempt ends (a panic, a runtime
        /// shutting down), so that a later call can start another.
        struct Reconnecting(Arc<Lane>);
        impl Drop for Reconnecting {
            fn drop(&mut self) {
                self.0.reconnecting.store(false, Ordering::Release);
            }
        }
        let reconnecting = Reconnecting(self.publishing.clone());
        let broker = self.clone();
        runtime.spawn(async move {
            let _ = broker.link(&broker.publishing).await;
            drop(reconnecting);
        });
    }

    /// A broker that let a publish wait a whole operation timeout for its confirm is not
    /// answering (a connection the network blackholed stays open until heartbeats notice, 20 s
    /// on): known to be down from now on, and its connection dropped, so that calls are refused
    /// at once and the next connect, in the background, says when it is back.
    fn forget_unresponsive(&self, link: &Link, err: &QueueError) {
        if link.connection.status().blocked() {
            // Answering, but holding publishes for an alarm: `ready_to_publish` refuses
            // calls as Blocked for as long as it lasts, on this connection.
            return;
        }
        self.publishing.set_down(Some(err.clone()));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let broker = self.clone();
        let connection = link.connection.clone();
        runtime.spawn(async move {
            let mut state = broker.publishing.state.lock().await;
            let same = |current: &Link| Arc::ptr_eq(&current.connection, &connection);
            if state.link.as_ref().is_some_and(same) {
                state.link = None;
            }
            drop(state);
            // lapin does not close a connection that is dropped; a silent peer never answers
            // the close either.
            let closing = connection.close(200, "the broker stopped answering".into());
            let _ = tokio::time::timeout(broker.config.operation_timeout, closing).await;
        });
    }

    /// The lane's live connection, re-established (topology included) if it was lost.
    async fn link(&self, lane: &Lane) -> Result<Link, QueueError> {
        let mut state = lane.state.lock().await;
        if let Some(link) = state.link.as_ref().filter(|link| link.is_live()) {
            return Ok(link.clone());
        }
        // Boxed: every publish awaits this function, and should not carry a connect's state.
        Box::pin(self.relink(lane, &mut state)).await
    }

    /// [`AmqpBroker::link`] when the lane's link is gone or dead.
    async fn relink(&self, lane: &Lane, state: &mut LinkState) -> Result<Link, QueueError> {
        if let Some(link) = state.link.take() {
            if link.connection.status().connected() {
                // Only the channel died (the broker closes a channel on a refused operation):
                // a new one on the same connection, rather than a second connection.
                match self.open_channel(&link.connection, lane.role).await {
                    Ok(channel) => {
                        let link = Link {
                            connection: link.connection,
                            channel,
                        };
                        state.link = Some(link.clone());
                        return Ok(link);
                    }
                    Err(err) => {
                        warn!(error = %err, lane = ?lane.role, "cannot reopen a channel; reconnecting")
                    }
                }
                // lapin does not close a connection that is dropped: close it, or it leaks.
                let connection = link.connection.clone();
                tokio::spawn(async move {
                    let _ = connection.close(200, "reconnecting".into()).await;
                });
            } else {
                warn!(lane = ?lane.role, "AMQP connection lost; reconnecting");
            }
        }
        if let Some((at, err)) = &state.last_failure
            && at.elapsed() < FAIL_FAST_WINDOW
        {
            return Err(err.clone());
        }
        match tokio::time::timeout(self.config.operation_timeout, self.open_link(lane.role)).await {
            Ok(Ok(link)) => {
                if state.connected_before {
                    self.config.metrics.broker_reconnects.inc();
                }
                state.connected_before = true;
                lane.connected(state, Ok(&link));
                state.link = Some(link.clone());
                Ok(link)
            }
            Ok(Err(err)) => {
                lane.connected(state, Err(&err));
                Err(err)
            }
            Err(_) => {
                let err = QueueError::Unavailable("timed out connecting to the broker".into());
                lane.connected(state, Err(&err));
                Err(err)
            }
        }
    }

    async fn open_link(&self, role: Role) -> Result<Link, QueueError> {
        let mut uri = AMQPUri::from_str(&self.config.url)
            .map_err(|e| QueueError::Broker(format!("invalid AMQP URL: {e}")))?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat =
                Some(u16::try_from(self.config.heartbeat.as_secs()).unwrap_or(10));
        }
        if uri.query.frame_max.is_none() {
            uri.query.frame_max = Some(FRAME_MAX);
        }
        let suffix = match role {
            Role::Publish => "publish",
            Role::Consume => "consume",
        };
        let name = format!("{} {suffix}", self.config.connection_name);
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = Connection::connect_uri(uri, properties).await?;
        let channel = self.open_channel(&connection, role).await?;
        info!(url = %redact_url(&self.config.url), lane = suffix, "connected to the message broker");
        Ok(Link {
            connection: Arc::new(connection),
            channel,
        })
    }

    /// A lane's channel: the topology declared on it, and confirm mode for publishing.
    async fn open_channel(
        &self,
        connection: &Connection,
        role: Role,
    ) -> Result<Channel, QueueError> {
        let channel = connection.create_channel().await?;
        self.declare_topology(&channel).await?;
        if role == Role::Publish {
            // Confirms turn "sent" into "stored by the broker": the basis of not losing tasks.
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
        }
        Ok(channel)
    }

    async fn declare_topology(&self, channel: &Channel) -> Result<(), QueueError> {
        let names = &self.config.names;
        // Durable, so status events survive a broker restart as a routing fabric.
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                names.events().into(),
                ExchangeKind::Topic,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        // Durable queues: tasks outlive a broker restart.
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut dead_letter_args = FieldTable::default();
        // Bounded: dead letters are finalised and acked by the gateways' dead-letter consumer;
        // if none runs, the oldest go first and none stays longer than the TTL.
        dead_letter_args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(i64::from(self.config.dead_letter_max_length)),
        );
        dead_letter_args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(
                i64::try_from(self.config.dead_letter_ttl.as_millis()).unwrap_or(i64::MAX),
            ),
        );
        channel
            .queue_declare(names.dead_letters().into(), durable, dead_letter_args)
            .await?;
        for queue in self.task_queues() {
            channel
                .queue_declare(queue.into(), durable, self.task_queue_arguments())
                .await?;
        }
        Ok(())
    }

    /// The request queues: one classic queue with message priorities, or for quorum queues
    /// (which have none on RabbitMQ 3.10) a second queue for interactive work, drained first.
    fn task_queues(&self) -> Vec<String> {
        let names = &self.config.names;
        match self.config.queue_type {
            QueueType::Classic => vec![names.tasks()],
            QueueType::Quorum => vec![names.interactive_tasks(), names.tasks()],
        }
    }

    /// The request queue a task of `priority` goes to.
    fn task_queue_for(&self, priority: Priority) -> String {
        let names = &self.config.names;
        match self.config.queue_type {
            QueueType::Quorum if priority >= Priority::INTERACTIVE => names.interactive_tasks(),
            _ => names.tasks(),
        }
    }

    fn task_queue_arguments(&self) -> FieldTable {
        let names = &self.config.names;
        let mut args = FieldTable::default();
        // Rejected (without requeue) and over-limit messages go to the dead-letter queue via the
        // default exchange, so they can be inspected instead of vanishing.
        args.insert("x-dead-letter-exchange".into(), long_string(""));
        args.insert(
            "x-dead-letter-routing-key".into(),
            long_string(&names.dead_letters()),
        );
        if let Some(max_length) = self.config.max_queue_length {
            args.insert(
                "x-max-length".into(),
                AMQPValue::LongLongInt(i64::from(max_length)),
            );
            // Refuse (nack) new tasks rather than drop the oldest: the submitter hears
            // RESOURCE_EXHAUSTED, and nothing it was promised is lost.
            args.insert("x-overflow".into(), long_string("reject-publish"));
        }
        match self.config.queue_type {
            QueueType::Classic => {
                args.insert(
                    "x-max-priority".into(),
                    AMQPValue::ShortShortUInt(self.config.max_priority),
                );
            }
            QueueType::Quorum => {
                args.insert("x-queue-type".into(), long_string("quorum"));
                // A poison message cannot cycle forever between crashing workers.
                args.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongInt(
                        i32::try_from(self.config.delivery_limit).unwrap_or(i32::MAX),
                    ),
                );
            }
        }
        args
    }

    /// Publishes on the confirm channel and waits for the broker's verdict, within the
    /// operation timeout. `mandatory` makes an unroutable message an error instead of a drop.
    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), QueueError> {
        let link = self.link(&self.publishing).await?;
        if link.connection.status().blocked() {
            // A publish now would wait for the alarm to clear: answer at once instead.
            return Err(QueueError::Blocked);
        }
        let options = BasicPublishOptions {
            mandatory,
            ..Default::default()
        };
        // Timed to the broker's verdict (an ack or a nack; a channel that failed first gave
        // none) whoever awaits it: a sync call its task's end answered stops waiting for the
        // confirm (see `FinishOnDrop`), and the confirms it leaves to finish on their own are
        // the slow ones, the ones this histogram is for.
        let started = Instant::now();
        let confirm_seconds = self.config.metrics.publish_confirm_seconds.clone();
        // Boxed: held by every publish awaiting its confirm, and large (lapin's futures).
        let publish = Box::pin(async {
            let confirm = link
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    body,
                    properties,
                )
                .await?
                .inspect(move |verdict| {
                    if verdict.is_ok() {
                        confirm_seconds.observe(started.elapsed().as_secs_f64());
                    }
                });
            // A caller may stop waiting (a sync call its task's end answered, a timeout): the
            // confirm is still awaited, or lapin would keep it as long as the channel lives.
            FinishOnDrop::new(confirm).await
        });
        let confirmed = tokio::time::timeout(self.config.operation_timeout, publish).await;
        let confirmation = match confirmed {
            Ok(Ok(confirmation)) => confirmation,
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => {
                let err = QueueError::Unavailable(
                    "timed out waiting for the broker's publish confirm".into(),
                );
                self.forget_unresponsive(&link, &err);
                return Err(err);
            }
        };
        if confirmation.is_nack() {
            return Err(QueueError::Nacked(format!(
                "broker nacked the publish to {routing_key}"
            )));
        }
        if let Some(returned) = confirmation.take_message() {
            return Err(QueueError::Refused(format!(
                "no queue for {routing_key}: {}",
                returned.reply_text
            )));
        }
        Ok(())
    }

    /// Deletes this deployment's durable queues and exchange; for tests and teardown.
    pub async fn delete_topology(&self) -> Result<(), QueueError> {
        let link = self.link(&self.consuming).await?;
        let names = &self.config.names;
        for queue in [
            names.tasks(),
            names.interactive_tasks(),
            names.dead_letters(),
        ] {
            link.channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        link.channel
            .exchange_delete(names.events().into(), Default::default())
            .await?;
        Ok(())
    }

    /// Messages ready in `queue` (e.g. [`QueueNames::tasks`] or [`QueueNames::dead_letters`]),
    /// within the operation timeout: a stalled broker must not hold a stats call.
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, QueueError> {
        let link = self.link(&self.consuming).await?;
        let count = async {
            // A passive declare on a throwaway channel: if the queue is missing the broker closes
            // that channel, not the shared publisher.
            let channel = link.connection.create_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let queue = channel
                .queue_declare(queue.into(), passive, FieldTable::default())
                .await?;
            let _ = channel.close(200, "done".into()).await;
            Ok::<_, lapin::Error>(queue.message_count())
        };
        match tokio::time::timeout(self.config.operation_timeout, count).await {
            Ok(count) => Ok(count?),
            Err(_) => Err(QueueError::Unavailable(
                "timed out reading a queue's depth".into(),
            )),
        }
    }

    /// Closes both connections politely (the broker requeues anything unacked at once).
    pub async fn close(&self) {
        for lane in [&self.publishing, &self.consuming] {
            if let Some(link) = lane.state.lock().await.link.take() {
                let _ = link.connection.close(200, "shutting down".into()).await;
            }
        }
    }
}

#[async_trait]
impl TaskPublisher for AmqpBroker {
    fn destination(&self) -> Destination {
        Destination {
            system: "rabbitmq",
            queue: self.config.names.tasks(),
        }
    }

    fn ready(&self) -> Result<(), QueueError> {
        self.ready_to_publish()
    }

    async fn check(&self) -> Result<(), QueueError> {
        // A confirmed publish nobody receives (the default exchange drops it: no such queue).
        // RabbitMQ tells a connection it is blocked by an alarm only once it publishes, so the
        // probe is what notices an alarm while no task is being submitted, and then calls are
        // refused before anything is written.
        let probe = BasicProperties::default().with_delivery_mode(1);
        self.publish_confirmed("", HEALTH_PROBE_ROUTING_KEY, false, b"", probe)
            .await
    }

    async fn publish_task(&self, message: &TaskMessage) -> Result<(), QueueError> {
        let id: ShortString = message.task_id.to_string().into();
        let mut headers = FieldTable::default();
        for (key, value) in &message.headers {
            headers.insert(key.as_str().into(), long_string(value));
        }
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            // Persistent: a confirmed task survives a broker restart.
            .with_delivery_mode(2)
            .with_message_id(id.clone())
            .with_correlation_id(id)
            .with_headers(headers);
        if let Some(reply_to) = &message.reply_to {
            properties = properties.with_reply_to(reply_to.as_str().into());
        }
        if message.priority != Priority::default() {
            properties = properties.with_priority(message.priority.get());
        }
        if let Some(deadline) = message.deadline {
            // Per-message TTL: past its deadline the broker dead-letters the task instead of
            // handing it to a worker; the gateway's sweeper then records it as EXPIRED.
            properties = properties.with_expiration(expiration_ms(deadline).to_string().into());
        }
        let queue = self.task_queue_for(message.priority);
        // Mandatory: if the request queue is missing the task must not silently vanish.
        let published = self
            .publish_confirmed("", &queue, true, &message.encode_body(), properties)
            .await;
        match published {
            // With a length bound, a nack is the broker refusing a task into a full queue.
            Err(QueueError::Nacked(_)) if self.config.max_queue_length.is_some() => {
                Err(QueueError::Full)
            }
            other => other,
        }
    }

    async fn depth(&self) -> Result<Option<u64>, QueueError> {
        let mut depth = 0u64;
        for queue in self.task_queues() {
            depth += u64::from(self.queue_depth(&queue).await?);
        }
        Ok(Some(depth))
    }
}

#[async_trait]
impl TaskConsumer for AmqpBroker {
    fn source(&self) -> Destination {
        self.destination()
    }

    async fn consume_tasks(&self, prefetch: u16) -> Result<Deliveries, QueueError> {
        // The first queue is the most urgent (quorum: the interactive one); a delivery waiting
        // there is always taken before the next one of the queue behind it.
        let mut lanes = Vec::new();
        for queue in self.task_queues() {
            // Bounded prefetch: a worker holds at most this many unacked tasks per queue, the
            // rest stay queued for other workers (and for priorities to reorder).
            let (channel, consumer) = self.consume_queue(&queue, prefetch).await?;
            // When the worker stops consuming (shutdown), the broker must stop pushing it tasks
            // nobody will read; the channel stays open for the acks of tasks still in flight.
            let canceller = CancelOnDrop(Some((channel, consumer.tag())));
            let deliveries = consumer.map(move |delivery| {
                let _cancels_the_consumer_when_the_stream_goes = &canceller;
                delivery.map(into_delivery).map_err(QueueError::from)
            });
            lanes.push(deliveries.boxed());
        }
        if lanes.len() > 1 {
            // Either consumer ending must end the merged stream (the worker then resubscribes
            // both), not leave it half alive.
            lanes = lanes
                .into_iter()
                .map(|lane| {
                    let ended = futures::stream::once(async {
                        Err(QueueError::Unavailable("a task consumer ended".into()))
                    });
                    lane.chain(ended).boxed()
                })
                .collect();
        }
        let mut lanes = lanes.into_iter();
        let first = lanes
            .next()
            .unwrap_or_else(|| futures::stream::empty().boxed());
        Ok(lanes.fold(first, |urgent, behind| {
            futures::stream::select_with_strategy(urgent, behind, |_: &mut ()| {
                futures::stream::PollNext::Left
            })
            .boxed()
        }))
    }
}

impl AmqpBroker {
    /// A consumer of `queue` on a channel of its own on the consuming connection, with manual
    /// acks (a message is removed only once it is settled) and at most `prefetch` unsettled.
    async fn consume_queue(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<(Channel, lapin::Consumer), QueueError> {
        let link = self.link(&self.consuming).await?;
        let channel = link.connection.create_channel().await?;
        // Declared again at every subscription, not only when the connection was made: a
        // queue deleted under its consumers (by an operator, or lost with a node) ends their
        // streams, and they subscribe again to a queue that is back, not to NOT_FOUND every
        // few seconds until another process happens to declare it.
        self.declare_topology(&channel).await?;
        channel
            .basic_qos(prefetch.max(1), BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, consumer))
    }
}

fn into_delivery(delivery: LapinDelivery) -> Delivery {
    let properties = &delivery.properties;
    let reply_to = properties
        .reply_to()
        .as_ref()
        .map(|r| r.as_str().to_owned());
    let headers: BTreeMap<String, String> = properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter_map(|(key, value)| match value {
                    AMQPValue::LongString(text) => Some((key.to_string(), text.to_string())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let priority = properties
        .priority()
        .and_then(|priority| Priority::new(u32::from(priority)))
        .unwrap_or_default();
    let message: Result<TaskMessage, MalformedMessage> =
        TaskMessage::decode_body(&delivery.data, reply_to, headers, priority);
    let redelivered = delivery.redelivered;
    let death = properties.headers().as_ref().and_then(death_reason);
    Delivery::new(
        message,
        redelivered,
        Box::new(AmqpSettle {
            acker: delivery.acker,
        }),
    )
    .dead_lettered_for(death)
}

/// Why RabbitMQ dead-lettered a message (`rejected`, `expired`, `maxlen`, `delivery_limit`):
/// `x-first-death-reason`, or the newest `x-death` entry's `reason`.
fn death_reason(headers: &FieldTable) -> Option<String> {
    let table = headers.inner();
    if let Some(AMQPValue::LongString(reason)) = table.get("x-first-death-reason") {
        return Some(reason.to_string());
    }
    let Some(AMQPValue::FieldArray(deaths)) = table.get("x-death") else {
        return None;
    };
    deaths.as_slice().iter().find_map(|death| match death {
        AMQPValue::FieldTable(death) => match death.inner().get("reason") {
            Some(AMQPValue::LongString(reason)) => Some(reason.to_string()),
            _ => None,
        },
        _ => None,
    })
}

struct AmqpSettle {
    acker: lapin::Acker,
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        self.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    async fn reject(self: Box<Self>, requeue: bool) -> Result<(), QueueError> {
        self.acker.reject(BasicRejectOptions { requeue }).await?;
        Ok(())
    }
}

#[async_trait]
impl UpdatePublisher for AmqpBroker {
    async fn publish_update(&self, reply_to: Option<&str>, task: &Task) -> Result<(), QueueError> {
        let body = encode_update(task);
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_correlation_id(task.id.to_string().into())
            // Transient: an update is a hint, the database is the truth.
            .with_delivery_mode(1);
        let events = self.config.names.events();
        let event = self.publish_confirmed(
            &events,
            task.status.as_str(),
            false,
            &body,
            properties.clone(),
        );
        match reply_to {
            // Not mandatory: a reply to a gateway that is gone is dropped, harmlessly.
            Some(reply_to) => {
                let reply = self.publish_confirmed("", reply_to, false, &body, properties);
                let (reply, event) = tokio::join!(reply, event);
                reply.and(event)
            }
            None => event.await,
        }
    }
}

#[async_trait]
impl UpdateConsumer for AmqpBroker {
    async fn consume_updates(
        &self,
        gateway_id: &str,
        listen_for_events: bool,
    ) -> Result<Updates, QueueError> {
        let names = &self.config.names;
        let link = self.link(&self.consuming).await?;
        let channel = link.connection.create_channel().await?;
        // Manual acks with a bounded prefetch: lapin buffers at most this many updates if the
        // router lags, instead of whatever the broker pushes.
        channel
            .basic_qos(UPDATE_PREFETCH, BasicQosOptions::default())
            .await?;

        let mut args = FieldTable::default();
        // A gateway that vanishes leaves no garbage: its queues go once unused for this long.
        let expiry_ms =
            i64::try_from(self.config.reply_queue_expiry.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-expires".into(), AMQPValue::LongLongInt(expiry_ms));
        // Bounded: past this many the oldest updates are dropped; waiters read the database.
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(i64::from(self.config.update_queue_max_length)),
        );
        // Not durable, not exclusive: the queue outlives a brief disconnect (so replies sent
        // meanwhile wait for us) but not a broker restart, and x-expires cleans it up.
        let options = QueueDeclareOptions::default();

        let reply_queue = names.reply_queue(gateway_id);
        channel
            .queue_declare(reply_queue.as_str().into(), options, args.clone())
            .await?;
        let events_queue = names.events_queue(gateway_id);
        channel
            .queue_declare(events_queue.as_str().into(), options, args)
            .await?;
        if listen_for_events {
            self.bind_events(&channel, &events_queue, true).await?;
        }

        let mut consumers = Vec::new();
        for queue in [&reply_queue, &events_queue] {
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            // Each consumer's end (cancelled by the broker, or its channel closed) is marked, so
            // the merged stream ends with the first of them: the caller then rebuilds both,
            // re-declaring the queues, instead of living on with half its updates.
            consumers.push(
                consumer
                    .map(Some)
                    .chain(stream::once(std::future::ready(None)))
                    .boxed(),
            );
        }
        let closer = CloseOnDrop(Some(channel));
        let received = Arc::new(AtomicU64::new(0));
        let updates = stream::select_all(consumers)
            .take_while(|delivery| std::future::ready(matches!(delivery, Some(Ok(_)))))
            .filter_map(move |delivery| {
                let _closes_the_channel_when_the_stream_goes = &closer;
                let received = received.clone();
                async move {
                    let delivery = delivery?.ok()?;
                    // One ack for every UPDATE_ACK_EVERY updates (`multiple`: all up to this
                    // one, on both consumers): the prefetch bound without an ack frame per
                    // update. A lost update costs nothing (waiters fall back to the database),
                    // so acking before routing is fine.
                    if (received.fetch_add(1, Ordering::Relaxed) + 1)
                        .is_multiple_of(UPDATE_ACK_EVERY)
                    {
                        let multiple = BasicAckOptions { multiple: true };
                        let _ = delivery.acker.ack(multiple).await;
                    }
                    decode_update(&delivery.data)
                }
            });
        Ok(Updates {
            reply_to: reply_queue,
            stream: updates.boxed(),
        })
    }

    async fn listen_for_events(&self, gateway_id: &str, listen: bool) -> Result<(), QueueError> {
        let link = self.link(&self.consuming).await?;
        // A channel of its own: a refused bind (the queue expired) must not close another's.
        let channel = link.connection.create_channel().await?;
        let events_queue = self.config.names.events_queue(gateway_id);
        let bound = self.bind_events(&channel, &events_queue, listen).await;
        let _ = channel.close(200, "done".into()).await;
        bound
    }
}

impl AmqpBroker {
    /// Binds (or unbinds) a gateway's events queue to every status event.
    async fn bind_events(
        &self,
        channel: &Channel,
        events_queue: &str,
        bind: bool,
    ) -> Result<(), QueueError> {
        let exchange = self.config.names.events();
        if bind {
            channel
                .queue_bind(
                    events_queue.into(),
                    exchange.as_str().into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        } else {
            channel
                .queue_unbind(
                    events_queue.into(),
                    exchange.as_str().into(),
                    "#".into(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl DeadLetterConsumer for AmqpBroker {
    async fn consume_dead_letters(&self, prefetch: u16) -> Result<Deliveries, QueueError> {
        let (channel, consumer) = self
            .consume_queue(&self.config.names.dead_letters(), prefetch)
            .await?;
        let closer = CloseOnDrop(Some(channel));
        let deliveries = consumer.map(move |delivery| {
            let _closes_the_channel_when_the_stream_goes = &closer;
            delivery.map(into_delivery).map_err(QueueError::from)
        });
        Ok(deliveries.boxed())
    }
}

/// Closes a consumer's channel when its stream is dropped: a resubscription must not leave the
/// old channel's consumers pulling messages nobody reads.
struct CloseOnDrop(Option<Channel>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(channel) = self.0.take()
            && channel.status().connected()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = channel.close(200, "resubscribing".into()).await;
            });
        }
    }
}

/// Cancels a consumer when its stream is dropped, leaving its channel open for a while so that
/// held deliveries can still be acked, then closes it (lapin never closes a dropped channel; a
/// worker that resubscribes again and again must not pile them up). The broker pushes no more
/// after the cancel; whatever it pushed that nobody read, or that is still held when the channel
/// closes, goes back to the queue.
struct CancelOnDrop(Option<(Channel, ShortString)>);

/// How long a cancelled consumer's channel stays open for its held deliveries: the longest a
/// worker holds a result through an outage.
const CANCELLED_CHANNEL_LINGER: Duration = Duration::from_secs(150);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some((channel, tag)) = self.0.take()
            && channel.status().connected()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = channel
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await;
                tokio::time::sleep(CANCELLED_CHANNEL_LINGER).await;
                let _ = channel.close(200, "consumer cancelled".into()).await;
            });
        }
    }
}

/// The per-message TTL for a task due at `deadline`, in the range RabbitMQ accepts: a larger
/// expiration closes the publishing channel (PRECONDITION_FAILED) and fails every publish in
/// flight on it, so it is clamped whatever the caller computed.
pub(crate) fn expiration_ms(deadline: chrono::DateTime<chrono::Utc>) -> u32 {
    let remaining = (deadline - chrono::Utc::now()).num_milliseconds();
    u32::try_from(remaining.max(0)).unwrap_or(u32::MAX)
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.to_owned()))
}

/// A URL (AMQP or database) without its password, for logs and messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact_url("amqp://host:5672"), "amqp://host:5672");
    }

    #[test]
    fn configs_print_without_the_password() {
        let config = AmqpConfig::new("amqp://guest:secret@host/%2f", QueueNames::default());
        let printed = format!("{config:?}");
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains("guest:***@host"), "{printed}");
    }

    #[test]
    fn expirations_stay_in_the_brokers_range() {
        let now = chrono::Utc::now();
        assert_eq!(expiration_ms(now - chrono::Duration::hours(1)), 0);
        let far = now + chrono::Duration::days(3650);
        assert_eq!(expiration_ms(far), u32::MAX);
        let soon = expiration_ms(now + chrono::Duration::seconds(10));
        assert!((9_000..=10_000).contains(&soon), "{soon}");
    }

    #[test]
    fn queue_types_parse() {
        assert_eq!("quorum".parse(), Ok(QueueType::Quorum));
        assert_eq!("classic".parse(), Ok(QueueType::Classic));
        assert!("lazy".parse::<QueueType>().is_err());
    }
}
