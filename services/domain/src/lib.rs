//! dalc's core vocabulary: [`TaskId`], [`TaskStatus`] and its transitions, [`Task`], how a task
//! ends ([`Outcome`]), the one retry schedule ([`Backoff`]) and run-time statistics ([`RunTimes`]).
//!
//! This crate knows nothing of gRPC, SQL or AMQP; every other crate translates to and from
//! these types at its edge.

pub mod backoff;
mod outcome;
pub mod run_times;
mod status;
mod task;

pub use backoff::Backoff;
pub use outcome::Outcome;
pub use run_times::RunTimes;
pub use status::{TaskStatus, UnknownStatus};
pub use task::{InvalidTaskId, Priority, Task, TaskId, task_instant};
