//! RabbitMQ over AMQP 0-9-1 with lapin.
//!
//! Topology (names from [`QueueNames`]):
//! - `dalc.tasks`: the durable request queue. Classic (with priorities) or quorum (replicated,
//!   with a delivery limit); either dead-letters to `dalc.tasks.dead`.
//! - `dalc.reply.<gateway>`: one per gateway, named by the client, expiring once unused.
//! - `dalc.events`: a topic exchange of status events (routing key = status); each gateway binds
//!   its own expiring queue `dalc.events.<gateway>` to it.
//!
//! One connection per broker handle, re-established on demand after a failure; every publish
//! awaits its publisher confirm, bounded by a timeout so no caller hangs on a dead broker.

use std::{
    collections::BTreeMap,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use dalc_domain::Task;
use futures::{StreamExt, stream};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    message::Delivery as LapinDelivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
    uri::AMQPUri,
};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::{
    Deliveries, Delivery, Destination, MalformedMessage, QueueError, QueueNames, Settle,
    TaskConsumer, TaskMessage, TaskPublisher, UpdateConsumer, UpdatePublisher, Updates,
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
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`
    pub url: String,
    pub names: QueueNames,
    pub queue_type: QueueType,
    /// Quorum queues: deliveries of one message before the broker dead-letters it.
    pub delivery_limit: u32,
    /// Classic queues: the highest message priority.
    pub max_priority: u8,
    /// Bound on connecting and on each publish confirm.
    pub operation_timeout: Duration,
    /// AMQP heartbeat, unless the URL sets one: a dead peer is noticed within about twice this.
    pub heartbeat: Duration,
    /// An unused reply or events queue is deleted after this long.
    pub reply_queue_expiry: Duration,
    /// Shown in the RabbitMQ management UI.
    pub connection_name: String,
    /// Where reconnects and publish-confirm latency are counted.
    pub metrics: Arc<dalc_telemetry::Metrics>,
}

impl AmqpConfig {
    pub fn new(url: impl Into<String>, names: QueueNames) -> Self {
        AmqpConfig {
            url: url.into(),
            names,
            queue_type: QueueType::Classic,
            delivery_limit: 5,
            max_priority: 9,
            operation_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(10),
            reply_queue_expiry: Duration::from_secs(60),
            connection_name: "dalc".to_owned(),
            metrics: Arc::default(),
        }
    }
}

/// After a failed connect, callers within this window fail fast instead of queueing up behind
/// another connect attempt: a client hears UNAVAILABLE at once while the broker is away.
const FAIL_FAST_WINDOW: Duration = Duration::from_millis(500);

/// A handle on the broker. Clones share one connection.
#[derive(Debug, Clone)]
pub struct AmqpBroker {
    config: Arc<AmqpConfig>,
    link: Arc<Mutex<LinkState>>,
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
    /// In confirm mode; shared by all publishes (lapin multiplexes confirms on one channel).
    publisher: Channel,
}

impl AmqpBroker {
    /// Connects and declares the topology, so a misconfiguration shows at start-up.
    pub async fn connect(config: AmqpConfig) -> Result<Self, QueueError> {
        let broker = AmqpBroker {
            config: Arc::new(config),
            link: Arc::new(Mutex::new(LinkState::default())),
        };
        broker.link().await?;
        Ok(broker)
    }

    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }

    /// The live connection, re-established (topology included) if it was lost.
    async fn link(&self) -> Result<Link, QueueError> {
        let mut state = self.link.lock().await;
        if let Some(link) = &state.link {
            if link.connection.status().connected() && link.publisher.status().connected() {
                return Ok(link.clone());
            }
            warn!("AMQP connection lost; reconnecting");
            state.link = None;
        }
        if let Some((at, err)) = &state.last_failure
            && at.elapsed() < FAIL_FAST_WINDOW
        {
            return Err(err.clone());
        }
        match tokio::time::timeout(self.config.operation_timeout, self.open_link()).await {
            Ok(Ok(link)) => {
                if state.connected_before {
                    self.config.metrics.broker_reconnects.inc();
                }
                state.connected_before = true;
                state.last_failure = None;
                state.link = Some(link.clone());
                Ok(link)
            }
            Ok(Err(err)) => {
                state.last_failure = Some((Instant::now(), err.clone()));
                Err(err)
            }
            Err(_) => {
                let err = QueueError::Unavailable("timed out connecting to the broker".into());
                state.last_failure = Some((Instant::now(), err.clone()));
                Err(err)
            }
        }
    }

    async fn open_link(&self) -> Result<Link, QueueError> {
        let mut uri = AMQPUri::from_str(&self.config.url)
            .map_err(|e| QueueError::Broker(format!("invalid AMQP URL: {e}")))?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat =
                Some(u16::try_from(self.config.heartbeat.as_secs()).unwrap_or(10));
        }
        let properties = ConnectionProperties::default()
            .with_connection_name(self.config.connection_name.clone().into());
        let connection = Connection::connect_uri(uri, properties).await?;
        let publisher = connection.create_channel().await?;
        self.declare_topology(&publisher).await?;
        // Confirms turn "sent" into "stored by the broker": the basis of not losing tasks.
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        info!(url = %redact_url(&self.config.url), "connected to the message broker");
        Ok(Link {
            connection: Arc::new(connection),
            publisher,
        })
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
        channel
            .queue_declare(names.dead_letters().into(), durable, FieldTable::default())
            .await?;
        channel
            .queue_declare(names.tasks().into(), durable, self.task_queue_arguments())
            .await?;
        Ok(())
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
        let link = self.link().await?;
        let options = BasicPublishOptions {
            mandatory,
            ..Default::default()
        };
        let publish = async {
            let confirm = link
                .publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    body,
                    properties,
                )
                .await?
                .await?;
            Ok::<_, lapin::Error>(confirm)
        };
        let started = Instant::now();
        let confirmed = tokio::time::timeout(self.config.operation_timeout, publish).await;
        self.config
            .metrics
            .publish_confirm_seconds
            .observe(started.elapsed().as_secs_f64());
        let confirmation = match confirmed {
            Ok(Ok(confirmation)) => confirmation,
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => {
                return Err(QueueError::Unavailable(
                    "timed out waiting for the broker's publish confirm".into(),
                ));
            }
        };
        if confirmation.is_nack() {
            return Err(QueueError::Refused(format!(
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
        let link = self.link().await?;
        let names = &self.config.names;
        for queue in [names.tasks(), names.dead_letters()] {
            link.publisher
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        link.publisher
            .exchange_delete(names.events().into(), Default::default())
            .await?;
        Ok(())
    }

    /// Messages ready in `queue` (e.g. [`QueueNames::tasks`] or [`QueueNames::dead_letters`]).
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, QueueError> {
        let link = self.link().await?;
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
        Ok(queue.message_count())
    }

    /// Closes the connection politely (the broker requeues anything unacked at once).
    pub async fn close(&self) {
        if let Some(link) = self.link.lock().await.link.take() {
            let _ = link.connection.close(200, "shutting down".into()).await;
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
        if let Some(deadline) = message.deadline {
            // Per-message TTL: past its deadline the broker dead-letters the task instead of
            // handing it to a worker; the gateway's sweeper then records it as EXPIRED.
            let remaining_ms = (deadline - chrono::Utc::now()).num_milliseconds().max(0);
            properties = properties.with_expiration(remaining_ms.to_string().into());
        }
        let queue = self.config.names.tasks();
        // Mandatory: if the request queue is missing the task must not silently vanish.
        self.publish_confirmed("", &queue, true, &message.encode_body(), properties)
            .await
    }
}

#[async_trait]
impl TaskConsumer for AmqpBroker {
    fn source(&self) -> Destination {
        self.destination()
    }

    async fn consume_tasks(&self, prefetch: u16) -> Result<Deliveries, QueueError> {
        let link = self.link().await?;
        let channel = link.connection.create_channel().await?;
        // Bounded prefetch: a worker holds at most this many unacked tasks, the rest stay
        // queued for other workers.
        channel
            .basic_qos(prefetch.max(1), BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.config.names.tasks().into(),
                "".into(),
                // Manual acks (no_ack = false): a task is removed only once it is finished.
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let deliveries =
            consumer.map(|delivery| delivery.map(into_delivery).map_err(QueueError::from));
        Ok(deliveries.boxed())
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
    let message: Result<TaskMessage, MalformedMessage> =
        TaskMessage::decode_body(&delivery.data, reply_to, headers);
    let redelivered = delivery.redelivered;
    Delivery::new(
        message,
        redelivered,
        Box::new(AmqpSettle {
            acker: delivery.acker,
        }),
    )
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
    async fn consume_updates(&self, gateway_id: &str) -> Result<Updates, QueueError> {
        let names = &self.config.names;
        let link = self.link().await?;
        let channel = link.connection.create_channel().await?;

        let mut args = FieldTable::default();
        // A gateway that vanishes leaves no garbage: its queues go once unused for this long.
        let expiry_ms =
            i64::try_from(self.config.reply_queue_expiry.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-expires".into(), AMQPValue::LongLongInt(expiry_ms));
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
        channel
            .queue_bind(
                events_queue.as_str().into(),
                names.events().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        // Auto-ack: a lost update costs nothing (waiters fall back to the database), and
        // acking each one would double the traffic on the hot path.
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut streams = Vec::new();
        for queue in [&reply_queue, &events_queue] {
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    no_ack,
                    FieldTable::default(),
                )
                .await?;
            streams.push(consumer.boxed());
        }
        let updates = stream::select_all(streams)
            .take_while(|delivery| std::future::ready(delivery.is_ok()))
            .filter_map(|delivery| {
                std::future::ready(delivery.ok().and_then(|d| decode_update(&d.data)))
            });
        Ok(Updates {
            reply_to: reply_queue,
            stream: updates.boxed(),
        })
    }
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
    fn queue_types_parse() {
        assert_eq!("quorum".parse(), Ok(QueueType::Quorum));
        assert_eq!("classic".parse(), Ok(QueueType::Classic));
        assert!("lazy".parse::<QueueType>().is_err());
    }
}
