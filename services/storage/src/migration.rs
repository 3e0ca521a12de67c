//! Schema migrations, written with sea-query so one definition runs on PostgreSQL and SQLite.

use sea_orm_migration::{prelude::*, schema::*};

/// Applies every migration in order; tracked in the `seaql_migrations` table.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateTasks),
            Box::new(AddLeases),
            Box::new(AddTenantsAndWorkers),
            Box::new(PartialIndexes),
        ]
    }
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Id,
    Expression,
    Status,
    Result,
    Error,
    CreatedAt,
    StartedAt,
    FinishedAt,
    WorkerId,
    Attempts,
    Deadline,
    PublishedAt,
    LeaseUntil,
    SweepAfter,
    Tenant,
    IdempotencyKey,
    Priority,
}

#[derive(DeriveIden)]
enum Workers {
    Table,
    WorkerId,
    Succeeded,
    Failed,
    Total,
    RunTimes,
    LastSeen,
}

#[derive(Debug)]
struct CreateTasks;

impl MigrationName for CreateTasks {
    // Explicit and dated: every migration needs a unique, ordered name in `seaql_migrations`
    // (the derive would name every migration in this module "migration").
    fn name(&self) -> &str {
        "m20261122_000001_create_tasks"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateTasks {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tasks::Table)
                    .if_not_exists()
                    .col(pk_uuid(Tasks::Id))
                    .col(text(Tasks::Expression))
                    .col(string_len(Tasks::Status, 16))
                    .col(text_null(Tasks::Result))
                    .col(text_null(Tasks::Error))
                    .col(timestamp_with_time_zone(Tasks::CreatedAt))
                    .col(timestamp_with_time_zone_null(Tasks::StartedAt))
                    .col(timestamp_with_time_zone_null(Tasks::FinishedAt))
                    .col(string_null(Tasks::WorkerId))
                    .col(integer(Tasks::Attempts).default(0))
                    .col(timestamp_with_time_zone_null(Tasks::Deadline))
                    .col(timestamp_with_time_zone_null(Tasks::PublishedAt))
                    .to_owned(),
            )
            .await?;
        // The recovery sweeper looks for PENDING tasks whose publish was never confirmed.
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_status_created_at")
                    .table(Tasks::Table)
                    .col(Tasks::Status)
                    .col(Tasks::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Tasks::Table).to_owned())
            .await
    }
}

/// Leases on running attempts, sweep claims on the database's clock, and the index retention
/// deletes by.
#[derive(Debug)]
struct AddLeases;

impl MigrationName for AddLeases {
    fn name(&self) -> &str {
        "m20261201_000002_add_leases"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AddLeases {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [Tasks::LeaseUntil, Tasks::SweepAfter] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tasks::Table)
                        .add_column(timestamp_with_time_zone_null(column))
                        .to_owned(),
                )
                .await?;
        }
        // The sweeper looks for open tasks whose sweep time has come.
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_status_sweep_after")
                    .table(Tasks::Table)
                    .col(Tasks::Status)
                    .col(Tasks::SweepAfter)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // Retention deletes finished tasks oldest first.
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_finished_at")
                    .table(Tasks::Table)
                    .col(Tasks::FinishedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // The sweeper no longer looks at creation times.
        manager
            .drop_index(
                Index::drop()
                    .name("idx_tasks_status_created_at")
                    .table(Tasks::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        // Tasks an older version left RUNNING have no lease: give them one, so that a worker of
        // that version still finishing one is not taken over at once. (SQLite is one process's
        // file: its RUNNING tasks died with that process and may be taken over at once.)
        if manager.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(
                    "UPDATE tasks SET lease_until = now() + interval '1 minute', \
                     sweep_after = now() + interval '2 minutes' WHERE status = 'RUNNING'",
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_status_created_at")
                    .table(Tasks::Table)
                    .col(Tasks::Status)
                    .col(Tasks::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        for index in ["idx_tasks_finished_at", "idx_tasks_status_sweep_after"] {
            manager
                .drop_index(Index::drop().name(index).table(Tasks::Table).to_owned())
                .await?;
        }
        for column in [Tasks::SweepAfter, Tasks::LeaseUntil] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tasks::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

/// Tenants (each task belongs to the one that submitted it), idempotency keys, priorities, and
/// the workers' own running figures.
#[derive(Debug)]
struct AddTenantsAndWorkers;

impl MigrationName for AddTenantsAndWorkers {
    fn name(&self) -> &str {
        "m20261204_000003_add_tenants_and_workers"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AddTenantsAndWorkers {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [
            string_len(Tasks::Tenant, 64).default("").to_owned(),
            string_len_null(Tasks::IdempotencyKey, 128),
            small_integer(Tasks::Priority).default(0).to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tasks::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        // ListTasks: a tenant's tasks newest first, a page after a (created_at, id) cursor.
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_tenant_created_at_id")
                    .table(Tasks::Table)
                    .col(Tasks::Tenant)
                    .col(Tasks::CreatedAt)
                    .col(Tasks::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // One task per key and tenant, whichever gateway the retry reaches. Rows without a key
        // hold NULL, which both databases leave out of uniqueness.
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_tenant_idempotency_key")
                    .table(Tasks::Table)
                    .col(Tasks::Tenant)
                    .col(Tasks::IdempotencyKey)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Workers::Table)
                    .if_not_exists()
                    .col(string_len(Workers::WorkerId, 255).primary_key())
                    .col(big_integer(Workers::Succeeded).default(0))
                    .col(big_integer(Workers::Failed).default(0))
                    .col(big_integer(Workers::Total).default(0))
                    .col(text(Workers::RunTimes))
                    .col(timestamp_with_time_zone(Workers::LastSeen))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Workers::Table).to_owned())
            .await?;
        for index in [
            "idx_tasks_tenant_idempotency_key",
            "idx_tasks_tenant_created_at_id",
        ] {
            manager
                .drop_index(Index::drop().name(index).table(Tasks::Table).to_owned())
                .await?;
        }
        for column in [Tasks::Priority, Tasks::IdempotencyKey, Tasks::Tenant] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tasks::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

/// Indexes that leave out the rows they are never searched for, so a task's insert and its
/// result's write each touch fewer indexes: most tasks have no idempotency key, and a new task
/// has no `finished_at`. (Every search on them names a value, which implies the condition,
/// so both PostgreSQL and SQLite still use them.)
#[derive(Debug)]
struct PartialIndexes;

impl MigrationName for PartialIndexes {
    fn name(&self) -> &str {
        "m20261204_000004_partial_indexes"
    }
}

/// (name, columns, unique) of the indexes [`PartialIndexes`] narrows, with the condition each
/// row must meet.
const PARTIAL_INDEXES: [(&str, &str, bool, &str); 2] = [
    (
        "idx_tasks_tenant_idempotency_key",
        "tenant, idempotency_key",
        true,
        "idempotency_key IS NOT NULL",
    ),
    (
        "idx_tasks_finished_at",
        "finished_at",
        false,
        "finished_at IS NOT NULL",
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for PartialIndexes {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        recreate_indexes(manager, true).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        recreate_indexes(manager, false).await
    }
}

/// Drops and creates [`PARTIAL_INDEXES`], with their conditions when `partial`. The same SQL
/// on PostgreSQL and SQLite (sea-query builds no partial index).
async fn recreate_indexes(manager: &SchemaManager<'_>, partial: bool) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for (name, columns, unique, condition) in PARTIAL_INDEXES {
        let unique = if unique { "UNIQUE " } else { "" };
        let condition = if partial {
            format!(" WHERE {condition}")
        } else {
            String::new()
        };
        // One call: the two statements on one connection, in order.
        db.execute_unprepared(&format!(
            "DROP INDEX IF EXISTS {name}; CREATE {unique}INDEX {name} ON tasks ({columns}){condition}"
        ))
        .await?;
    }
    Ok(())
}
