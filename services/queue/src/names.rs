//! Queue and exchange names. Every name starts with the deployment's prefix, so several
//! deployments or test runs can share one broker without touching each other's messages.

/// The names of one deployment's queues and exchanges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueNames {
    prefix: String,
}

impl QueueNames {
    pub fn new(prefix: impl Into<String>) -> Self {
        QueueNames {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The request queue workers consume.
    pub fn tasks(&self) -> String {
        format!("{}dalc.tasks", self.prefix)
    }

    /// Quorum deployments: the request queue of interactive work (priority ≥ 5), which workers
    /// take from first; quorum queues on RabbitMQ 3.10 have no message priorities.
    pub fn interactive_tasks(&self) -> String {
        format!("{}dalc.tasks.interactive", self.prefix)
    }

    /// Where messages that cannot be processed end up.
    pub fn dead_letters(&self) -> String {
        format!("{}dalc.tasks.dead", self.prefix)
    }

    /// The topic exchange of status events; routing key = status.
    pub fn events(&self) -> String {
        format!("{}dalc.events", self.prefix)
    }

    /// A gateway's reply queue: what it puts in `reply_to`.
    pub fn reply_queue(&self, gateway_id: &str) -> String {
        format!("{}dalc.reply.{gateway_id}", self.prefix)
    }

    /// A gateway's subscription to status events.
    pub fn events_queue(&self, gateway_id: &str) -> String {
        format!("{}dalc.events.{gateway_id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_match_the_design() {
        let names = QueueNames::default();
        assert_eq!(names.tasks(), "dalc.tasks");
        assert_eq!(names.dead_letters(), "dalc.tasks.dead");
        assert_eq!(names.events(), "dalc.events");
        assert_eq!(names.reply_queue("gw1"), "dalc.reply.gw1");
    }

    #[test]
    fn every_name_starts_with_the_prefix() {
        let names = QueueNames::new("staging.");
        for name in [
            names.tasks(),
            names.interactive_tasks(),
            names.dead_letters(),
            names.events(),
            names.reply_queue("a"),
            names.events_queue("a"),
        ] {
            assert!(name.starts_with("staging.dalc."), "{name}");
        }
    }
}
