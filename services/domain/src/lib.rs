//! dalc's core vocabulary: [`TaskId`], [`TaskStatus`] and [`Task`].
//!
//! This crate knows nothing of gRPC, SQL or AMQP; every other crate translates to and from
//! these types at its edge.

mod status;
mod task;

pub use status::{TaskStatus, UnknownStatus};
pub use task::{InvalidTaskId, Task, TaskId};
