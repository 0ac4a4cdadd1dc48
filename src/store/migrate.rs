//! The migrator: applies `sql/migrations/*.sql` in order, once each, and
//! records the versions it applied in `crablet_schema_migrations`.
//!
//! Several crablet processes may start at once against one database: the
//! whole run holds an advisory lock, so exactly one applies what is missing
//! and the others then find it applied.

use tokio_postgres::Client;

/// Every migration, in the order it is applied. Append only: never edit or
/// reorder a released migration.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "events",
        include_str!("../../sql/migrations/001_events.sql"),
    ),
    (
        2,
        "event_keys",
        include_str!("../../sql/migrations/002_event_keys.sql"),
    ),
    (
        3,
        "events_position_seq",
        include_str!("../../sql/migrations/003_events_position_seq.sql"),
    ),
    (
        4,
        "append_batch",
        include_str!("../../sql/migrations/004_append_batch.sql"),
    ),
    (
        5,
        "event_ids",
        include_str!("../../sql/migrations/005_event_ids.sql"),
    ),
];

/// Advisory lock key held while migrating ("CRABLETM").
const MIGRATION_LOCK_KEY: i64 = 0x4352_4142_4c45_544d;

/// Applies the missing migrations; returns how many were applied.
pub async fn run(client: &mut Client) -> Result<usize, tokio_postgres::Error> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS crablet_schema_migrations (
                 version    int PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let result = apply_missing(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply_missing(client: &mut Client) -> Result<usize, tokio_postgres::Error> {
    let applied: Vec<i32> = client
        .query("SELECT version FROM crablet_schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut count = 0;
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO crablet_schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
        tx.commit().await?;
        log::info!("applied migration {version:03} {name}");
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    #[test]
    fn migration_versions_increase_by_one_from_one() {
        for (i, (version, _, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version as usize, i + 1);
        }
    }
}
