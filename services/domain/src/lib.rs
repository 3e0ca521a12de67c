//! dalc's core vocabulary: [`TaskId`], [`TaskStatus`] and its transitions, [`Task`], how a task
//! ends ([`Outcome`]), and the one retry schedule ([`Backoff`]).
//!
//! This crate knows nothing of gRPC, SQL or AMQP; every other crate translates to and from
//! these types at its edge.

pub mod backoff;
mod outcome;
mod status;
mod task;

pub use backoff::Backoff;
pub use outcome::Outcome;
pub use status::{TaskStatus, UnknownStatus};
pub use task::{InvalidTaskId, Task, TaskId};
