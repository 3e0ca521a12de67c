//! What travels on the request queue: a small versioned JSON payload.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use dalc_domain::{Priority, Task, TaskId};
use serde::{Deserialize, Serialize};

/// The payload version this build writes. Readers accept this version only: a newer
/// producer must keep writing an older version until every worker understands the new one.
pub const PAYLOAD_VERSION: u32 = 1;

/// A task as queued for a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMessage {
    pub task_id: TaskId,
    pub expression: String,
    /// Past this instant the task is not worth starting.
    pub deadline: Option<DateTime<Utc>>,
    /// Higher runs first. An AMQP property, not in the body.
    pub priority: Priority,
    /// Where to send the reply: the accepting gateway's reply queue. Not in the body: it is an
    /// AMQP property, and the in-process queue carries it beside the body.
    pub reply_to: Option<String>,
    /// Trace context (W3C `traceparent`, `tracestate`), carried as message headers.
    pub headers: BTreeMap<String, String>,
}

impl TaskMessage {
    pub fn for_task(task: &Task, reply_to: Option<String>) -> Self {
        TaskMessage {
            task_id: task.id,
            expression: task.expression.clone(),
            deadline: task.deadline,
            priority: task.priority,
            reply_to,
            headers: BTreeMap::new(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Payload<'a> {
    v: u32,
    id: TaskId,
    expression: std::borrow::Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deadline: Option<DateTime<Utc>>,
}

/// A payload that is not a task this build understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed task message: {0}")]
pub struct MalformedMessage(pub String);

impl TaskMessage {
    pub(crate) fn encode_body(&self) -> Vec<u8> {
        let payload = Payload {
            v: PAYLOAD_VERSION,
            id: self.task_id,
            expression: self.expression.as_str().into(),
            deadline: self.deadline,
        };
        // Serializing plain strings, ids and timestamps cannot fail.
        serde_json::to_vec(&payload).unwrap_or_default()
    }

    pub(crate) fn decode_body(
        body: &[u8],
        reply_to: Option<String>,
        headers: BTreeMap<String, String>,
        priority: Priority,
    ) -> Result<Self, MalformedMessage> {
        let payload: Payload<'_> =
            serde_json::from_slice(body).map_err(|e| MalformedMessage(e.to_string()))?;
        if payload.v != PAYLOAD_VERSION {
            return Err(MalformedMessage(format!(
                "payload version {} (this build reads {PAYLOAD_VERSION})",
                payload.v
            )));
        }
        Ok(TaskMessage {
            task_id: payload.id,
            expression: payload.expression.into_owned(),
            deadline: payload.deadline,
            priority,
            reply_to,
            headers,
        })
    }
}

/// Task updates (replies and events) carry the whole task as JSON, so a waiting gateway can
/// answer without another database read.
pub(crate) fn encode_update(task: &Task) -> Vec<u8> {
    serde_json::to_vec(task).unwrap_or_default()
}

pub(crate) fn decode_update(body: &[u8]) -> Option<Task> {
    match serde_json::from_slice(body) {
        Ok(task) => Some(task),
        Err(err) => {
            tracing::warn!(error = %err, "dropping malformed task update");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bodies_round_trip() {
        let task = Task::new("1 + 1", Some(Utc::now()));
        let message = TaskMessage::for_task(&task, Some("dalc.reply.gw".into()));
        let body = message.encode_body();
        let decoded = TaskMessage::decode_body(
            &body,
            message.reply_to.clone(),
            BTreeMap::new(),
            message.priority,
        )
        .unwrap();
        assert_eq!(decoded, message);
    }

    #[test]
    fn unknown_versions_and_garbage_are_malformed() {
        let body = br#"{"v":2,"id":"67e55044-10b1-426f-9247-bb680e5fe0c8","expression":"1"}"#;
        assert!(
            TaskMessage::decode_body(body, None, BTreeMap::new(), Priority::default()).is_err()
        );
        assert!(
            TaskMessage::decode_body(b"\xff", None, BTreeMap::new(), Priority::default()).is_err()
        );
    }

    #[test]
    fn updates_round_trip() {
        let task = Task::new("2", None);
        assert_eq!(decode_update(&encode_update(&task)), Some(task));
        assert_eq!(decode_update(b"nope"), None);
    }
}
