//! The task store: the single source of truth for task state.
//!
//! One SeaORM entity ([`entity`]), migrations that run unchanged on PostgreSQL and SQLite
//! ([`migration`]), and [`TaskStore`], the repository every other crate goes through. State
//! changes are compare-and-set updates, so two workers can never both record a result.

mod checkpoint;
pub mod entity;
mod error;
mod group;
mod held;
pub mod migration;
mod pg;
mod reads;
mod sqlite;
mod store;
mod workers;

pub use error::StorageError;
pub use reads::{Cancelled, FinishedCounts, MalformedCursor, PageCursor};
pub use store::{StartOutcome, StoreOptions, TaskStore};
pub use workers::{WorkerFigures, WorkerRecord};
