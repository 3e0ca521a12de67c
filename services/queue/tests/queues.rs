//! The queue contract, run against RabbitMQ and against the in-process queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use dalc_domain::{Task, TaskStatus};
use dalc_queue::{
    DeadLetterConsumer, QueueError, QueueNames, TaskConsumer, TaskMessage, TaskPublisher,
    UpdateConsumer, UpdatePublisher,
    amqp::{AmqpBroker, AmqpConfig},
    memory::MemoryBroker,
};
use futures::StreamExt;

trait Broker: TaskPublisher + TaskConsumer + UpdatePublisher + UpdateConsumer {}
impl<T: TaskPublisher + TaskConsumer + UpdatePublisher + UpdateConsumer> Broker for T {}

const PATIENCE: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

/// The next delivery, which must come within [`PATIENCE`].
async fn next_delivery(deliveries: &mut dalc_queue::Deliveries) -> dalc_queue::Delivery {
    tokio::time::timeout(PATIENCE, deliveries.next())
        .await
        .expect("a delivery in time")
        .expect("the consumer is open")
        .expect("a delivery, not an error")
}

async fn amqp_pair() -> (AmqpBroker, AmqpBroker) {
    let names = QueueNames::new(dalc_testkit::unique_queue_prefix());
    let config = AmqpConfig::new(dalc_testkit::amqp_url(), names);
    let a = AmqpBroker::connect(config.clone())
        .await
        .expect("RabbitMQ is reachable");
    let b = AmqpBroker::connect(config).await.unwrap();
    (a, b)
}

fn message(expression: &str) -> TaskMessage {
    let mut message =
        TaskMessage::for_task(&Task::new(expression, None), Some("reply-here".into()));
    message.headers.insert(
        "traceparent".into(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
    );
    message
}

macro_rules! on_both_queues {
    ($($name:ident),* $(,)?) => {
        mod rabbitmq { $(
            #[tokio::test]
            async fn $name() {
                let (a, b) = super::amqp_pair().await;
                super::$name(&a, &b).await;
                a.delete_topology().await.unwrap();
            }
        )* }
        mod in_process { $(
            #[tokio::test]
            async fn $name() {
                let a = dalc_queue::memory::MemoryBroker::new();
                super::$name(&a, &a.clone()).await;
            }
        )* }
    };
}

on_both_queues!(
    published_tasks_arrive_whole,
    acked_tasks_are_gone,
    requeued_tasks_come_back_redelivered,
    prefetch_bounds_unsettled_deliveries,
    updates_reach_the_reply_queue_and_the_events_feed,
);

async fn published_tasks_arrive_whole(a: &impl Broker, b: &impl Broker) {
    let sent = message("1 + 1");
    a.publish_task(&sent).await.unwrap();
    let mut deliveries = b.consume_tasks(4).await.unwrap();
    let delivery = next_delivery(&mut deliveries).await;
    assert!(!delivery.redelivered);
    assert_eq!(delivery.message.as_ref().unwrap(), &sent);
    delivery.ack().await.unwrap();
}

async fn acked_tasks_are_gone(a: &impl Broker, b: &impl Broker) {
    a.publish_task(&message("1")).await.unwrap();
    let mut deliveries = b.consume_tasks(4).await.unwrap();
    let delivery = next_delivery(&mut deliveries).await;
    delivery.ack().await.unwrap();
    assert!(
        tokio::time::timeout(QUIET, deliveries.next())
            .await
            .is_err(),
        "nothing more"
    );
}

async fn requeued_tasks_come_back_redelivered(a: &impl Broker, b: &impl Broker) {
    let sent = message("2");
    a.publish_task(&sent).await.unwrap();
    let mut deliveries = b.consume_tasks(4).await.unwrap();
    let first = next_delivery(&mut deliveries).await;
    first.reject(true).await.unwrap();
    let again = next_delivery(&mut deliveries).await;
    assert!(again.redelivered);
    assert_eq!(again.message.as_ref().unwrap(), &sent);
    again.ack().await.unwrap();
}

async fn prefetch_bounds_unsettled_deliveries(a: &impl Broker, b: &impl Broker) {
    for n in 0..3 {
        a.publish_task(&message(&n.to_string())).await.unwrap();
    }
    let mut deliveries = b.consume_tasks(2).await.unwrap();
    let first = next_delivery(&mut deliveries).await;
    let second = next_delivery(&mut deliveries).await;
    assert!(
        tokio::time::timeout(QUIET, deliveries.next())
            .await
            .is_err(),
        "prefetch is 2"
    );
    first.ack().await.unwrap();
    let third = next_delivery(&mut deliveries).await;
    second.ack().await.unwrap();
    third.ack().await.unwrap();
}

async fn updates_reach_the_reply_queue_and_the_events_feed(a: &impl Broker, b: &impl Broker) {
    let mut updates = a.consume_updates("gw-a", true).await.unwrap();
    let mut other_gateway = a.consume_updates("gw-b", true).await.unwrap();
    let mut task = Task::new("1 + 1", None);
    task.status = TaskStatus::Succeeded;
    task.result = Some("2".into());

    b.publish_update(Some(&updates.reply_to), &task)
        .await
        .unwrap();
    // The accepting gateway hears it as a reply and as an event...
    for _ in 0..2 {
        let got = tokio::time::timeout(PATIENCE, updates.stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, task);
    }
    // ...and every other gateway as an event.
    let got = tokio::time::timeout(PATIENCE, other_gateway.stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, task);
    assert!(
        tokio::time::timeout(QUIET, updates.stream.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn rabbitmq_redelivers_what_a_dead_consumer_held() {
    let (a, b) = amqp_pair().await;
    a.publish_task(&message("3")).await.unwrap();
    let mut held = b.consume_tasks(1).await.unwrap();
    let _unacked = next_delivery(&mut held).await;
    b.close().await;
    let mut deliveries = a.consume_tasks(1).await.unwrap();
    let again = next_delivery(&mut deliveries).await;
    assert!(again.redelivered);
    again.ack().await.unwrap();
    a.delete_topology().await.unwrap();
}

#[tokio::test]
async fn rabbitmq_dead_letters_rejected_tasks() {
    let (a, b) = amqp_pair().await;
    a.publish_task(&message("4")).await.unwrap();
    let mut deliveries = b.consume_tasks(1).await.unwrap();
    let delivery = next_delivery(&mut deliveries).await;
    delivery.reject(false).await.unwrap();
    // The dead-letter queue is not ours to consume, so count it by declaring it passively.
    let names = a.config().names.clone();
    let dead = dead_letter_depth(&names).await;
    assert_eq!(dead, 1);
    a.delete_topology().await.unwrap();
}

#[tokio::test]
async fn rabbitmq_times_a_confirm_its_caller_stopped_waiting_for() {
    let (proxy, broker) = rabbitmq_through_a_proxy(AmqpConfig::DEFAULT_OPERATION_TIMEOUT).await;
    broker.publish_task(&message("1")).await.unwrap();
    let confirms = || confirms_timed(&broker.config().metrics.render());
    assert_eq!(confirms(), 1);

    // The broker hears nothing for a while: the caller gives up before the confirm comes, as a
    // sync call does whose task's end came back first.
    proxy.blackhole();
    let gave_up = tokio::time::timeout(QUIET, broker.publish_task(&message("2"))).await;
    assert!(gave_up.is_err(), "no confirm through a blackhole");
    proxy.restore();
    dalc_testkit::eventually(PATIENCE, async || confirms() >= 2).await;
    assert_eq!(confirms(), 2, "the confirm is timed all the same");
    // ... to when it came, after the silence.
    let timed = dalc_testkit::metric(
        &broker.config().metrics.render(),
        "dalc_publish_confirm_seconds_sum",
    );
    assert!(
        timed >= QUIET.as_secs_f64(),
        "confirms timed at {timed} s in all"
    );
    broker.delete_topology().await.unwrap();
}

/// Once a connect has failed, the broker is known to be down: every call is refused at once (a
/// gateway then writes nothing), not only for a moment after the failure, and never waits on a
/// connect; the reconnecting happens meanwhile off the callers' path, and the first call after
/// the broker is back finds it connected.
#[tokio::test]
async fn a_broker_known_to_be_down_refuses_at_once_until_it_is_back() {
    let (proxy, broker) = rabbitmq_through_a_proxy(Duration::from_secs(1)).await;
    broker.publish_task(&message("1")).await.unwrap();
    assert!(broker.ready().is_ok());

    // The broker accepts connections and never answers; the one we had is cut.
    proxy.blackhole();
    proxy.sever();
    let known_down = dalc_testkit::eventually(PATIENCE, async || {
        let lost = broker.publish_task(&message("2")).await;
        assert!(lost.is_err(), "no publish through a blackhole");
        broker.ready().is_err()
    })
    .await;
    assert!(
        known_down,
        "a failed connect makes the broker known to be down"
    );
    // Seconds later, through several background connects that time out, still refused at once.
    for _ in 0..20 {
        let asked = std::time::Instant::now();
        let ready = broker.ready();
        assert!(
            matches!(ready, Err(QueueError::Unavailable(_))),
            "known to be down: {ready:?}"
        );
        assert!(asked.elapsed() < Duration::from_millis(200), "at once");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    proxy.restore();
    publishes_again_once_back(&broker).await;
}

/// A broker that stops answering on an open connection (a network that blackholes it) is known
/// to be down after one publish waits out its confirm, not once heartbeats notice 20 s on: calls
/// are refused at once from then on, until the broker answers again.
#[tokio::test]
async fn a_broker_that_stops_answering_is_known_down_after_one_unconfirmed_publish() {
    let (proxy, broker) = rabbitmq_through_a_proxy(Duration::from_secs(1)).await;
    broker.publish_task(&message("1")).await.unwrap();

    proxy.blackhole();
    let unconfirmed = broker.publish_task(&message("2")).await;
    assert!(
        matches!(unconfirmed, Err(QueueError::Unavailable(_))),
        "{unconfirmed:?}"
    );
    let ready = broker.ready();
    assert!(
        matches!(ready, Err(QueueError::Unavailable(_))),
        "known to be down at once: {ready:?}"
    );

    proxy.restore();
    publishes_again_once_back(&broker).await;
}

/// How many publish confirms `metrics` (a scrape) timed: a count, so a whole number.
fn confirms_timed(metrics: &str) -> u64 {
    dalc_testkit::metric(metrics, "dalc_publish_confirm_seconds_count") as u64
}

/// A broker (queues of its own) reaching RabbitMQ through a proxy the test can cut or blackhole.
async fn rabbitmq_through_a_proxy(
    operation_timeout: Duration,
) -> (dalc_testkit::proxy::TcpProxy, AmqpBroker) {
    let (upstream, via_proxy) = rabbitmq_via_a_proxy();
    let proxy = dalc_testkit::proxy::TcpProxy::start_new(upstream).await;
    let names = QueueNames::new(dalc_testkit::unique_queue_prefix());
    let mut config = AmqpConfig::new(via_proxy(proxy.addr()), names);
    config.operation_timeout = operation_timeout;
    let broker = AmqpBroker::connect(config)
        .await
        .expect("RabbitMQ is reachable through the proxy");
    (proxy, broker)
}

/// Once the broker answers again: ready again without a publish, then publishing; then its
/// queues go.
async fn publishes_again_once_back(broker: &AmqpBroker) {
    let back = dalc_testkit::eventually(PATIENCE, async || broker.ready().is_ok()).await;
    assert!(back, "reconnected without a publish");
    broker.publish_task(&message("3")).await.unwrap();
    broker.delete_topology().await.unwrap();
}

/// The test broker's address, and its URL for a proxy at another address.
fn rabbitmq_via_a_proxy() -> (
    std::net::SocketAddr,
    impl Fn(std::net::SocketAddr) -> String,
) {
    let url = dalc_testkit::amqp_url();
    let uri: lapin::uri::AMQPUri = url.parse().expect("an AMQP URL");
    let authority = &uri.authority;
    let upstream =
        std::net::ToSocketAddrs::to_socket_addrs(&(authority.host.as_str(), authority.port))
            .expect("the broker's host resolves")
            .next()
            .expect("an address");
    let host_port = format!("{}:{}", authority.host, authority.port);
    assert!(url.contains(&host_port), "{url} names no {host_port}");
    (upstream, move |via: std::net::SocketAddr| {
        url.replacen(&host_port, &via.to_string(), 1)
    })
}

async fn dead_letter_depth(names: &QueueNames) -> u32 {
    // A broker configured with the dead-letter queue as its request queue can count it.
    let config = AmqpConfig::new(dalc_testkit::amqp_url(), QueueNames::new(names.prefix()));
    let broker = AmqpBroker::connect(config).await.unwrap();
    let mut depth = 0;
    for _ in 0..50 {
        depth = broker.queue_depth(&names.dead_letters()).await.unwrap();
        if depth > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    depth
}

#[tokio::test]
async fn in_process_queue_requeues_dropped_deliveries_and_dead_letters_rejects() {
    let broker = MemoryBroker::new();
    broker.publish_task(&message("5")).await.unwrap();
    broker.publish_task(&message("6")).await.unwrap();
    let mut deliveries = broker.consume_tasks(2).await.unwrap();
    let dropped = deliveries.next().await.unwrap().unwrap();
    drop(dropped);
    let again = deliveries.next().await.unwrap().unwrap();
    assert!(again.redelivered, "a dropped delivery comes back first");
    again.reject(false).await.unwrap();
    assert_eq!(broker.dead_letters().len(), 1);
    let last = deliveries.next().await.unwrap().unwrap();
    last.ack().await.unwrap();
    assert_eq!(broker.depth(), 0);
}

#[tokio::test]
async fn unreachable_rabbitmq_is_unavailable_quickly() {
    let config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:1/%2f", QueueNames::default());
    let started = std::time::Instant::now();
    let err = AmqpBroker::connect(config).await.unwrap_err();
    assert!(
        matches!(err, dalc_queue::QueueError::Unavailable(_)),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[tokio::test]
async fn rabbitmq_dead_letters_tasks_past_their_deadline() {
    let (a, b) = amqp_pair().await;
    let task = Task::new(
        "5",
        Some(chrono::Utc::now() + chrono::Duration::milliseconds(100)),
    );
    a.publish_task(&TaskMessage::for_task(&task, None))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut deliveries = b.consume_tasks(1).await.unwrap();
    assert!(
        tokio::time::timeout(QUIET, deliveries.next())
            .await
            .is_err(),
        "expired in the queue"
    );
    assert_eq!(dead_letter_depth(&a.config().names).await, 1);
    // The dead letter says why: its deadline passed in the queue.
    let mut dead = b.consume_dead_letters(4).await.unwrap();
    let letter = next_delivery(&mut dead).await;
    assert_eq!(letter.dead_letter_reason.as_deref(), Some("expired"));
    assert_eq!(letter.message.as_ref().unwrap().task_id, task.id);
    letter.ack().await.unwrap();
    a.delete_topology().await.unwrap();
}

#[tokio::test]
async fn status_events_flow_only_while_the_gateway_listens() {
    let (a, b) = amqp_pair().await;
    let mut updates = a.consume_updates("gw-quiet", false).await.unwrap();
    let mut task = Task::new("1", None);
    task.status = TaskStatus::Succeeded;
    b.publish_update(None, &task).await.unwrap();
    assert!(
        tokio::time::timeout(QUIET, updates.stream.next())
            .await
            .is_err(),
        "not listening: the broker drops the event"
    );
    a.listen_for_events("gw-quiet", true).await.unwrap();
    b.publish_update(None, &task).await.unwrap();
    let got = tokio::time::timeout(PATIENCE, updates.stream.next()).await;
    assert_eq!(got.unwrap().unwrap().id, task.id, "listening: it arrives");
    a.listen_for_events("gw-quiet", false).await.unwrap();
    b.publish_update(None, &task).await.unwrap();
    assert!(
        tokio::time::timeout(QUIET, updates.stream.next())
            .await
            .is_err()
    );
    a.delete_topology().await.unwrap();
}

#[tokio::test]
async fn rejected_dead_letters_say_so() {
    let (a, b) = amqp_pair().await;
    a.publish_task(&message("9")).await.unwrap();
    let mut deliveries = b.consume_tasks(1).await.unwrap();
    next_delivery(&mut deliveries)
        .await
        .reject(false)
        .await
        .unwrap();
    let mut dead = a.consume_dead_letters(4).await.unwrap();
    let letter = next_delivery(&mut dead).await;
    assert_eq!(letter.dead_letter_reason.as_deref(), Some("rejected"));
    letter.ack().await.unwrap();
    a.delete_topology().await.unwrap();
}

#[tokio::test]
async fn the_update_stream_ends_when_either_consumer_is_cancelled() {
    use lapin::{Connection, ConnectionProperties, options::QueueDeleteOptions};
    let (a, _b) = amqp_pair().await;
    let mut updates = a.consume_updates("gw-half", true).await.unwrap();
    // The broker cancels the events consumer (its queue is deleted under it)...
    let connection =
        Connection::connect(&dalc_testkit::amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let events_queue = a.config().names.events_queue("gw-half");
    channel
        .queue_delete(events_queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // ...so the whole stream ends, and the gateway rebuilds both instead of living on with
    // replies only.
    let ended = tokio::time::timeout(PATIENCE, updates.stream.next()).await;
    assert!(matches!(ended, Ok(None)), "the stream ends");
    let mut rebuilt = a.consume_updates("gw-half", true).await.unwrap();
    let mut task = Task::new("1", None);
    task.status = TaskStatus::Succeeded;
    a.publish_update(None, &task).await.unwrap();
    let got = tokio::time::timeout(PATIENCE, rebuilt.stream.next())
        .await
        .unwrap();
    assert_eq!(got.unwrap().id, task.id, "events flow again");
    connection.close(200, "done".into()).await.ok();
    a.delete_topology().await.unwrap();
}

#[tokio::test]
async fn a_consumer_whose_queues_were_deleted_declares_them_again() {
    use lapin::{Connection, ConnectionProperties, options::QueueDeleteOptions};
    let (a, b) = amqp_pair().await;
    let mut deliveries = b.consume_tasks(4).await.unwrap();
    let mut dead = b.consume_dead_letters(4).await.unwrap();
    // An operator (or a lost node) deletes the queues under their consumers...
    let connection =
        Connection::connect(&dalc_testkit::amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let names = &a.config().names;
    for queue in [names.tasks(), names.dead_letters()] {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    // ...so the broker ends both streams...
    let ended = tokio::time::timeout(PATIENCE, deliveries.next()).await;
    assert!(matches!(ended, Ok(None)), "the task stream ends");
    let ended = tokio::time::timeout(PATIENCE, dead.next()).await;
    assert!(matches!(ended, Ok(None)), "the dead-letter stream ends");
    // ...and subscribing again brings the queues back, rather than failing with NOT_FOUND
    // until some other process declares them.
    let mut deliveries = b.consume_tasks(4).await.unwrap();
    let _dead = b.consume_dead_letters(4).await.unwrap();
    a.publish_task(&message("3 * 3")).await.unwrap();
    let delivery = next_delivery(&mut deliveries).await;
    assert_eq!(delivery.message.as_ref().unwrap().expression, "3 * 3");
    delivery.ack().await.unwrap();
    connection.close(200, "done".into()).await.ok();
    a.delete_topology().await.unwrap();
}

/// Messages of `priority`, `count` of them, on `broker`.
async fn publish_with_priority(broker: &impl TaskPublisher, count: usize, priority: u32) {
    for n in 0..count {
        let mut task = Task::new(format!("{n}"), None);
        task.priority = dalc_domain::Priority::new(priority).unwrap();
        broker
            .publish_task(&TaskMessage::for_task(&task, None))
            .await
            .unwrap();
    }
}

/// The priorities of the first `count` deliveries, each acked.
async fn first_priorities(deliveries: &mut dalc_queue::Deliveries, count: usize) -> Vec<u8> {
    let mut seen = Vec::new();
    for _ in 0..count {
        let delivery = next_delivery(deliveries).await;
        seen.push(delivery.message.as_ref().unwrap().priority.get());
        delivery.ack().await.unwrap();
    }
    seen
}

#[tokio::test]
async fn interactive_work_overtakes_a_backlog_on_classic_and_quorum_queues() {
    for queue_type in [
        dalc_queue::amqp::QueueType::Classic,
        dalc_queue::amqp::QueueType::Quorum,
    ] {
        let names = QueueNames::new(dalc_testkit::unique_queue_prefix());
        let mut config = AmqpConfig::new(dalc_testkit::amqp_url(), names);
        config.queue_type = queue_type;
        let broker = AmqpBroker::connect(config.clone()).await.unwrap();
        publish_with_priority(&broker, 50, 0).await;
        publish_with_priority(&broker, 1, 5).await;
        let mut deliveries = broker.consume_tasks(1).await.unwrap();
        let seen = first_priorities(&mut deliveries, 3).await;
        // Prefetch 1: at most the one delivery already pushed goes before it.
        assert!(seen[..2].contains(&5), "{queue_type:?}: {seen:?}");
        drop(deliveries);
        // The consumers' cancels run in the background: let them land before the queues go
        // (deleting a queue under a consumer being cancelled confuses the channel), and delete
        // on a connection of its own.
        tokio::time::sleep(Duration::from_millis(300)).await;
        broker.close().await;
        let cleaner = AmqpBroker::connect(config).await.unwrap();
        cleaner.delete_topology().await.unwrap();
    }
}

#[tokio::test]
async fn in_process_queue_delivers_higher_priorities_first() {
    let broker = MemoryBroker::new();
    publish_with_priority(&broker, 20, 0).await;
    publish_with_priority(&broker, 2, 9).await;
    publish_with_priority(&broker, 1, 5).await;
    let mut deliveries = broker.consume_tasks(1).await.unwrap();
    assert_eq!(first_priorities(&mut deliveries, 4).await, [9, 9, 5, 0]);
}
