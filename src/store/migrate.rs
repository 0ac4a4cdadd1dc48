//! The migrator: applies `sql/migrations/*.sql` in order and records each one
//! it applied, with a checksum of its text, in `crablet_schema_migrations`.
//!
//! Two kinds of migration, flagged in [`MIGRATIONS`]:
//!
//! - **schema** migrations (tables, indexes, sequences) run once. Their text
//!   must never change after release: one whose recorded checksum differs
//!   from this build's is refused, and crablet does not start.
//! - **repeatable** migrations (`CREATE OR REPLACE FUNCTION ...`) are applied
//!   again whenever their text changes, so an edited function reaches every
//!   existing database at the next start.
//!
//! Several crablet processes may start at once against one database. Each
//! step is a transaction of its own that first takes a transaction-scoped
//! advisory lock (`pg_advisory_xact_lock`), before any DDL (two concurrent
//! `CREATE TABLE IF NOT EXISTS` can both pass the check and one then fails
//! on the catalog's unique index): the bookkeeping table, then each
//! migration, which reads its own record again under the lock. Exactly one
//! process applies what is missing; the others wait, then find it applied.
//! No step leaves anything in the session (no session lock, no `SET`, no
//! named statement), so the migrator runs the same through a pooler in
//! transaction mode, where consecutive transactions may land on different
//! server sessions. What it must not do: anything but DDL and its
//! bookkeeping.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Applied in increasing order, starting at 1 with no gaps.
    pub version: i32,
    /// Recorded beside the version, for the operator.
    pub name: &'static str,
    /// The SQL, run as one transaction.
    pub sql: &'static str,
    /// Applied again whenever its text changes (functions); otherwise its
    /// text is frozen once applied (schema).
    pub repeatable: bool,
}

/// A row of [`MIGRATIONS`]: version, name, file under `sql/migrations/`,
/// and whether it is `schema` (applied once) or `repeatable`.
macro_rules! migration {
    ($version:literal, $name:literal, $file:literal, $kind:ident) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../../sql/migrations/", $file)),
            repeatable: migration!(@repeatable $kind),
        }
    };
    (@repeatable schema) => {
        false
    };
    (@repeatable repeatable) => {
        true
    };
}

/// Every migration, in the order it is applied. Schema migrations are append
/// only: never edit or reorder a released one, add a new one instead.
/// Repeatable ones may be edited; their new text is applied at the next start.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "events", "001_events.sql", schema),
    migration!(2, "event_keys", "002_event_keys.sql", schema),
    migration!(
        3,
        "events_position_seq",
        "003_events_position_seq.sql",
        schema
    ),
    migration!(4, "append_batch", "004_append_batch.sql", repeatable),
    migration!(5, "event_ids", "005_event_ids.sql", schema),
    migration!(6, "data_object", "006_data_object.sql", repeatable),
    migration!(7, "reduce", "007_reduce.sql", repeatable),
    migration!(8, "project", "008_project.sql", repeatable),
    migration!(9, "compare", "009_compare.sql", repeatable),
    migration!(10, "import", "010_import.sql", repeatable),
];

/// Advisory lock key held while migrating ("CRABLETM").
const MIGRATION_LOCK_KEY: i64 = 0x4352_4142_4c45_544d;

/// The bookkeeping table; `checksum` was added after the first release, hence
/// the separate, idempotent `ADD COLUMN`.
const BOOKKEEPING_DDL: &str = "
    CREATE TABLE IF NOT EXISTS crablet_schema_migrations (
        version    int PRIMARY KEY,
        name       text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    );
    ALTER TABLE crablet_schema_migrations ADD COLUMN IF NOT EXISTS checksum text;
";

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database error while migrating: {}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
    /// A schema migration's text differs from the one applied to this
    /// database: the schema may not be what this build expects.
    #[error(
        "schema migration {version:03} {name} was changed after it was applied to this \
         database (recorded checksum {recorded}, this build's {current}); released schema \
         migrations must not be edited: restore its text and add a new migration instead"
    )]
    ChangedSchemaMigration {
        version: i32,
        name: &'static str,
        recorded: String,
        current: String,
    },
}

use super::describe;

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Migrations applied for the first time.
    pub applied: usize,
    /// Repeatable migrations applied again because their text changed.
    pub reapplied: usize,
}

/// The checksum recorded for a migration's text (xxh3-128, hex).
pub fn checksum(sql: &str) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(sql.as_bytes()))
}

/// Opens a migration step: a transaction holding the migration lock, its
/// NOTICEs quiet. The migrations' `IF EXISTS`/`IF NOT EXISTS` clauses make
/// the server send NOTICEs ("... does not exist, skipping") at every start;
/// they are expected, and logged they would read as errors. Warnings still
/// come.
async fn locked(client: &mut Client) -> Result<tokio_postgres::Transaction<'_>, MigrateError> {
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "SET LOCAL client_min_messages = warning; \
         SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
    ))
    .await?;
    Ok(tx)
}

/// Brings the schema up to date, each step under the migration lock.
pub async fn run(client: &mut Client) -> Result<MigrationReport, MigrateError> {
    // The lock comes first: nothing, not even the bookkeeping table, is
    // created outside it.
    let tx = locked(client).await?;
    tx.batch_execute(BOOKKEEPING_DDL).await?;
    let newest: Option<i32> = tx
        .query_typed("SELECT max(version) FROM crablet_schema_migrations", &[])
        .await?
        .first()
        .and_then(|row| row.get(0));
    tx.commit().await?;
    if let Some(newest) = newest {
        let known = MIGRATIONS.last().map_or(0, |m| m.version);
        if newest > known {
            log::warn!(
                "this database has migration {newest:03}, newer than this build knows \
                 ({known:03}); a newer crablet has used it"
            );
        }
    }
    let mut report = MigrationReport::default();
    for migration in MIGRATIONS {
        let tx = locked(client).await?;
        step(&tx, migration, &mut report).await?;
        tx.commit().await?;
    }
    Ok(report)
}

/// Brings one migration up to date, in `tx` (which holds the lock).
async fn step(
    tx: &tokio_postgres::Transaction<'_>,
    migration: &Migration,
    report: &mut MigrationReport,
) -> Result<(), MigrateError> {
    let current = checksum(migration.sql);
    let previous: Option<Option<String>> = tx
        .query_typed(
            "SELECT checksum FROM crablet_schema_migrations WHERE version = $1",
            &[(&migration.version, Type::INT4)],
        )
        .await?
        .first()
        .map(|row| row.get(0));
    match previous {
        None => {
            apply(tx, migration, &current).await?;
            log::info!(
                "applied migration {:03} {}",
                migration.version,
                migration.name
            );
            report.applied += 1;
        }
        Some(Some(sum)) if sum == current => {}
        // Applied by a version that recorded no checksum: a schema
        // migration is taken as it is; a function is applied again, as
        // nothing says which text the database holds.
        Some(None) if !migration.repeatable => {
            record_checksum(tx, migration, &current).await?;
        }
        Some(recorded) if migration.repeatable => {
            apply(tx, migration, &current).await?;
            log::info!(
                "re-applied migration {:03} {}: its text changed (checksum {} -> {current})",
                migration.version,
                migration.name,
                recorded.as_deref().unwrap_or("none"),
            );
            report.reapplied += 1;
        }
        Some(recorded) => {
            return Err(MigrateError::ChangedSchemaMigration {
                version: migration.version,
                name: migration.name,
                recorded: recorded.unwrap_or_default(),
                current,
            });
        }
    }
    Ok(())
}

/// Runs a migration and records it, in the step's transaction.
async fn apply(
    tx: &tokio_postgres::Transaction<'_>,
    migration: &Migration,
    checksum: &str,
) -> Result<(), MigrateError> {
    tx.batch_execute(migration.sql).await?;
    tx.query_typed(
        "INSERT INTO crablet_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)
         ON CONFLICT (version) DO UPDATE
             SET name = EXCLUDED.name, checksum = EXCLUDED.checksum, applied_at = now()",
        &[
            (&migration.version, Type::INT4),
            (&migration.name, Type::TEXT),
            (&checksum, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

async fn record_checksum(
    tx: &tokio_postgres::Transaction<'_>,
    migration: &Migration,
    checksum: &str,
) -> Result<(), MigrateError> {
    tx.query_typed(
        "UPDATE crablet_schema_migrations SET checksum = $2 WHERE version = $1",
        &[(&migration.version, Type::INT4), (&checksum, Type::TEXT)],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{checksum, MIGRATIONS};

    #[test]
    fn migration_versions_increase_by_one_from_one() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, i + 1);
        }
    }

    #[test]
    fn checksums_follow_the_text() {
        assert_eq!(checksum("a"), checksum("a"));
        assert_ne!(checksum("a"), checksum("a "));
        assert_eq!(checksum("").len(), 32);
    }
}
