//! `grpc.health.v1`: the server ("") and `dalc.v1.TaskService` are SERVING only while this
//! gateway can reach both the task database and the broker, so a load balancer or a readiness
//! probe stops sending calls that could only fail. The service `liveness` is SERVING while the
//! process runs, for liveness probes: an outage elsewhere is no reason to restart a gateway.

use std::{sync::Arc, time::Duration};

use dalc_proto::v1::task_service_server::TaskServiceServer;
use dalc_queue::TaskPublisher;
use dalc_storage::TaskStore;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

use crate::service::TaskServiceImpl;

/// The health service name that reports only that the process is alive.
pub(crate) const LIVENESS: &str = "liveness";

/// Reports `status` for the whole server ("") and for `dalc.v1.TaskService`.
pub(crate) async fn report(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    match status {
        ServingStatus::Serving => {
            health
                .set_serving::<TaskServiceServer<TaskServiceImpl>>()
                .await
        }
        _ => {
            health
                .set_not_serving::<TaskServiceServer<TaskServiceImpl>>()
                .await
        }
    }
}

/// Checks the database and the broker every `interval` until `shutdown`, and reports.
pub(crate) async fn watch(
    health: HealthReporter,
    store: TaskStore,
    publisher: Arc<dyn TaskPublisher>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut serving = true;
    while !shutdown.is_cancelled() {
        let database = tokio::time::timeout(interval, store.ping()).await;
        let broker = tokio::time::timeout(interval, publisher.check()).await;
        let problem = match (database, broker) {
            (Ok(Ok(())), Ok(Ok(()))) => None,
            (Err(_), _) => Some("the task database did not answer".to_owned()),
            (Ok(Err(err)), _) => Some(err.to_string()),
            (_, Err(_)) => Some("the broker did not answer".to_owned()),
            (_, Ok(Err(err))) => Some(err.to_string()),
        };
        // Shutdown owns the status once it starts: never flip back to SERVING then.
        if shutdown.is_cancelled() {
            return;
        }
        match (&problem, serving) {
            (None, false) => {
                info!("database and broker reachable again: SERVING");
                report(&health, ServingStatus::Serving).await;
                serving = true;
            }
            (Some(problem), true) => {
                warn!(%problem, "NOT_SERVING until the database and broker are back");
                report(&health, ServingStatus::NotServing).await;
                serving = false;
            }
            _ => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
