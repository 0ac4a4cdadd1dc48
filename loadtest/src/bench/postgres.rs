//! The raw PostgreSQL side of the benchmark: connection strings, finding `psql` and
//! `pgbench`, running SQL, running pgbench scripts and reading their output.
//!
//! Owns every baseline's SQL. It talks to PostgreSQL only through the standard
//! client programs, so the baselines are exactly what anyone can rerun by hand.
//! Finding those programs and quoting connection-string values is crablet's
//! ([`crablet::embedded`]), so the bench uses the installation crablet runs on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use crablet::embedded::{conninfo_value, postgres_tool};
use serde::Serialize;
use tokio::process::Command;

use crate::report::Percentiles;
use crate::stats;

/// Bound on one psql command (the 1M-row load and its index build included).
const PSQL_TIMEOUT: Duration = Duration::from_secs(900);
/// Extra time a pgbench run may take beyond its `-T`.
const PGBENCH_GRACE: Duration = Duration::from_secs(120);

/// A libpq connection string, key-value (`host=/tmp port=5432 dbname=x`) or URL
/// (`postgres://user@host:port/db`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnInfo {
    /// Key-value pairs in their original order.
    KeyValue(Vec<(String, String)>),
    /// A `postgres://` or `postgresql://` URL.
    Url(String),
}

impl ConnInfo {
    /// Parses a connection string.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let s = s.trim();
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Self::Url(s.to_string()));
        }
        // The pairs themselves (tokio_postgres::Config keeps no text to write
        // back), to hand psql and pgbench the same string with another dbname.
        let pairs = crablet::store::tls::libpq_key_value_pairs(s)?;
        anyhow::ensure!(!pairs.is_empty(), "empty connection string");
        anyhow::ensure!(
            pairs.iter().all(|(k, _)| !k.is_empty()),
            "connection string: empty key"
        );
        Ok(Self::KeyValue(pairs))
    }

    /// The same server with another database.
    pub fn with_dbname(&self, dbname: &str) -> Self {
        match self {
            Self::KeyValue(pairs) => {
                let mut pairs: Vec<(String, String)> = pairs
                    .iter()
                    .filter(|(k, _)| k != "dbname")
                    .cloned()
                    .collect();
                pairs.push(("dbname".into(), dbname.into()));
                Self::KeyValue(pairs)
            }
            Self::Url(url) => {
                let scheme_end = url.find("://").map_or(0, |i| i + 3);
                let (head, tail) = url.split_at(scheme_end);
                let path_start = tail.find(['/', '?']).unwrap_or(tail.len());
                let (authority, rest) = tail.split_at(path_start);
                let query = rest.find('?').map_or("", |i| &rest[i..]);
                Self::Url(format!("{head}{authority}/{dbname}{query}"))
            }
        }
    }

    /// The same string with `key` set to `value` (replaced in place, or added);
    /// key-value strings only (the bench's replica is reached by its socket
    /// directory and port).
    pub fn with_param(&self, key: &str, value: &str) -> anyhow::Result<Self> {
        let Self::KeyValue(pairs) = self else {
            anyhow::bail!("a key-value connection string is needed here, not a URL");
        };
        let mut pairs = pairs.clone();
        match pairs.iter_mut().find(|(k, _)| k == key) {
            Some(pair) => pair.1 = value.into(),
            None => pairs.push((key.into(), value.into())),
        }
        Ok(Self::KeyValue(pairs))
    }

    /// The database name, when the string says it.
    pub fn dbname(&self) -> Option<String> {
        match self {
            Self::KeyValue(pairs) => pairs
                .iter()
                .find(|(k, _)| k == "dbname")
                .map(|(_, v)| v.clone()),
            Self::Url(url) => {
                let tail = &url[url.find("://").map_or(0, |i| i + 3)..];
                let path = &tail[tail.find('/')? + 1..];
                let db = path.split('?').next().unwrap_or("");
                (!db.is_empty()).then(|| db.to_string())
            }
        }
    }

    /// As a connection string libpq (and so psql, pgbench and crablet) accepts.
    pub fn to_conn_string(&self) -> String {
        match self {
            Self::Url(url) => url.clone(),
            Self::KeyValue(pairs) => pairs
                .iter()
                .map(|(k, v)| format!("{k}={}", conninfo_value(v)))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// A SQL identifier quoted.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Finds a PostgreSQL client program the way crablet finds its PostgreSQL
/// ([`postgres_tool`]).
fn find_tool(name: &str) -> anyhow::Result<PathBuf> {
    postgres_tool(name).with_context(|| {
        format!(
            "{name} not found: neither in a PostgreSQL installation (initdb on PATH, \
             pg_config --bindir, /usr/lib/postgresql/*/bin) nor on PATH"
        )
    })
}

/// The client programs the bench uses.
#[derive(Debug, Clone)]
pub struct Tools {
    /// psql.
    pub psql: PathBuf,
    /// pgbench.
    pub pgbench: PathBuf,
}

impl Tools {
    /// Finds both programs.
    pub fn find() -> anyhow::Result<Self> {
        Ok(Self {
            psql: find_tool("psql")?,
            pgbench: find_tool("pgbench")?,
        })
    }

    /// Runs `sql` with psql against `conn` (stops at the first error) and returns its
    /// unaligned, tuples-only output.
    pub async fn psql(&self, conn: &ConnInfo, sql: &str) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.psql);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(conn.to_conn_string())
            .args(["-c", sql])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(PSQL_TIMEOUT, cmd.output())
            .await
            .context("psql timed out")?
            .context("running psql")?;
        anyhow::ensure!(
            out.status.success(),
            "psql failed ({}): {}\nSQL: {sql}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs pgbench with `script` for `duration` and parses its summary.
    pub async fn pgbench(
        &self,
        conn: &ConnInfo,
        run: &PgbenchRun<'_>,
    ) -> anyhow::Result<PgbenchResult> {
        let mut cmd = Command::new(&self.pgbench);
        cmd.args(["-n", "-M", "prepared"])
            .arg(format!("--client={}", run.clients))
            .arg(format!("--jobs={}", run.jobs.min(run.clients)))
            .arg(format!("--time={}", run.duration.as_secs().max(1)))
            .arg(format!("--file={}", run.script.display()));
        if let Some(prefix) = run.log_prefix {
            cmd.arg("--log")
                .arg(format!("--log-prefix={}", prefix.display()));
        }
        cmd.arg(conn.to_conn_string())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(run.duration + PGBENCH_GRACE, cmd.output())
            .await
            .context("pgbench did not finish in time")?
            .context("running pgbench")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "pgbench failed ({}): {}\n{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let mut result = parse_pgbench_summary(&stdout)?;
        if let Some(prefix) = run.log_prefix {
            result.latency = Some(read_pgbench_logs(prefix)?);
        }
        Ok(result)
    }
}

/// One pgbench invocation.
#[derive(Debug, Clone)]
pub struct PgbenchRun<'a> {
    /// Script file (`-f`).
    pub script: &'a Path,
    /// `-c`.
    pub clients: usize,
    /// `-j` (capped at the clients).
    pub jobs: usize,
    /// `-T`.
    pub duration: Duration,
    /// With `--log --log-prefix`: per-transaction latencies are read back.
    pub log_prefix: Option<&'a Path>,
}

/// What pgbench printed.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PgbenchResult {
    /// `tps = ... (without initial connection time)`.
    pub tps: f64,
    /// `latency average = ... ms`.
    pub latency_avg_ms: f64,
    /// `number of transactions actually processed`.
    pub transactions: u64,
    /// `number of failed transactions` (PostgreSQL 15+; 0 when absent).
    pub failed: u64,
    /// Percentiles from the per-transaction log, when logging was on.
    pub latency: Option<Percentiles>,
}

/// Parses pgbench's summary.
pub fn parse_pgbench_summary(out: &str) -> anyhow::Result<PgbenchResult> {
    let mut r = PgbenchResult::default();
    let mut found_tps = false;
    for line in out.lines().map(str::trim) {
        let number = |s: &str| {
            s.split_whitespace()
                .next()
                .and_then(|n| n.parse::<f64>().ok())
        };
        if let Some(rest) = line.strip_prefix("tps = ") {
            // Older versions print two tps lines; keep the one without connections.
            if !found_tps || line.contains("without") || line.contains("excluding") {
                r.tps = number(rest).context("unparsable tps line")?;
                found_tps = true;
            }
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            r.latency_avg_ms = number(rest).unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed: ")
        {
            r.transactions = rest
                .split(['/', ' '])
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("number of failed transactions: ") {
            r.failed = number(rest).map_or(0, |n| n as u64);
        }
    }
    anyhow::ensure!(found_tps, "no tps line in pgbench output:\n{out}");
    Ok(r)
}

/// Latency (µs) of one line of a pgbench per-transaction log:
/// `client_id transaction_no time script_no time_epoch time_us [...]`.
pub fn parse_pgbench_log_line(line: &str) -> Option<u64> {
    let mut fields = line.split_whitespace();
    let _client = fields.next()?;
    let _transaction = fields.next()?;
    // `skipped` or `failed` in this field when the transaction did not complete.
    fields.next()?.parse().ok()
}

/// Reads every log file pgbench wrote under `prefix` (`<prefix>.<pid>[.<thread>]`).
pub fn read_pgbench_logs(prefix: &Path) -> anyhow::Result<Percentiles> {
    let dir = prefix.parent().unwrap_or(Path::new("."));
    let stem = prefix
        .file_name()
        .map(|s| format!("{}.", s.to_string_lossy()))
        .unwrap_or_default();
    let mut h = stats::new_histogram();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(&stem) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())
            .with_context(|| format!("reading {}", entry.path().display()))?;
        for us in text.lines().filter_map(parse_pgbench_log_line) {
            stats::record_us(&mut h, us);
        }
    }
    anyhow::ensure!(
        !h.is_empty(),
        "no pgbench log lines under {}",
        prefix.display()
    );
    Ok(Percentiles::of(&h))
}

/// Settings worth printing beside the figures.
pub async fn server_settings(
    tools: &Tools,
    conn: &ConnInfo,
) -> anyhow::Result<BTreeMap<String, String>> {
    let out = tools
        .psql(
            conn,
            "SELECT name || '=' || setting FROM pg_settings WHERE name IN \
             ('server_version','synchronous_commit','fsync','wal_sync_method','shared_buffers',\
              'max_connections','full_page_writes','commit_delay') ORDER BY name",
        )
        .await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Drops (if present) and creates database `name`.
pub async fn recreate_database(tools: &Tools, admin: &ConnInfo, name: &str) -> anyhow::Result<()> {
    tools
        .psql(
            admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name)),
        )
        .await?;
    tools
        .psql(admin, &format!("CREATE DATABASE {}", quote_ident(name)))
        .await?;
    Ok(())
}

/// Drops database `name` if present.
pub async fn drop_database(tools: &Tools, admin: &ConnInfo, name: &str) -> anyhow::Result<()> {
    tools
        .psql(
            admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name)),
        )
        .await
        .map(|_| ())
}

/// The P1/P2 baseline table: one row per event, the shape of an event, no index
/// beyond the primary key.
pub const INSERT_TABLE_DDL: &str = "DROP TABLE IF EXISTS bench_insert; \
     CREATE TABLE bench_insert(id bigserial PRIMARY KEY, type text NOT NULL, \
     tags text[] NOT NULL, data bytea NOT NULL)";

/// The P1/P2 pgbench script: one 1-row INSERT per transaction, a unique tag, the
/// same payload as crablet's events.
pub fn insert_script(payload: &str) -> String {
    format!(
        "\\set k random(1, 2000000000)\n\
         INSERT INTO bench_insert(type, tags, data) VALUES ('Registered', \
         ARRAY['u:' || :client_id || ':' || :k], convert_to({}, 'UTF8'));\n",
        quote_literal(payload)
    )
}

/// The P4 baseline table in go-crablet's shape, filled with the same events as the
/// crablet preload (`t:<i/10>`), GIN index built after the load (so its pending
/// list is empty: the baseline's best case), then analyzed.
pub fn gin_table_sql(events: u64, payload: &str) -> Vec<String> {
    vec![
        "DROP TABLE IF EXISTS gin_events".into(),
        "CREATE TABLE gin_events(id bigserial PRIMARY KEY, type text NOT NULL, \
         tags text[] NOT NULL, data jsonb NOT NULL, occurred_at timestamptz NOT NULL DEFAULT now())"
            .into(),
        format!(
            "INSERT INTO gin_events(type, tags, data) SELECT 'Preloaded', \
             ARRAY['t:' || (i / 10)], {}::jsonb FROM generate_series(0, {}) AS i",
            quote_literal(payload),
            events.saturating_sub(1)
        ),
        "CREATE INDEX gin_events_tags ON gin_events USING GIN (tags)".into(),
        "VACUUM ANALYZE gin_events".into(),
    ]
}

/// The P4 pgbench script: the events of one random tag, in position order.
pub fn gin_read_script(tags: u64) -> String {
    format!(
        "\\set tag random(0, {})\n\
         SELECT id, type, tags, data FROM gin_events WHERE tags @> ARRAY['t:' || :tag] ORDER BY id;\n",
        tags.saturating_sub(1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_strings_parse_and_switch_database() {
        let c = ConnInfo::parse("host=/tmp/x port=5432 user=crablet dbname=crablet").unwrap();
        assert_eq!(c.dbname().as_deref(), Some("crablet"));
        let other = c.with_dbname("bench_raw");
        assert_eq!(
            other.to_conn_string(),
            "host=/tmp/x port=5432 user=crablet dbname=bench_raw"
        );
    }

    #[test]
    fn key_value_strings_take_another_host_and_port() {
        let c = ConnInfo::parse("host=/tmp/x port=5432 user=crablet dbname=crablet").unwrap();
        let replica = c
            .with_param("host", "/tmp/r")
            .and_then(|c| c.with_param("port", "5433"))
            .and_then(|c| c.with_param("application_name", "lag"))
            .unwrap();
        assert_eq!(
            replica.to_conn_string(),
            "host=/tmp/r port=5433 user=crablet dbname=crablet application_name=lag"
        );
        assert!(ConnInfo::parse("postgres://u@h/db")
            .unwrap()
            .with_param("port", "1")
            .is_err());
    }

    #[test]
    fn quoted_values_round_trip() {
        let c = ConnInfo::parse(r"host='/tmp/a dir' password='it\'s' dbname = x").unwrap();
        let ConnInfo::KeyValue(pairs) = &c else {
            panic!("not key-value")
        };
        assert_eq!(pairs[0], ("host".into(), "/tmp/a dir".into()));
        assert_eq!(pairs[1], ("password".into(), "it's".into()));
        assert_eq!(pairs[2], ("dbname".into(), "x".into()));
        assert_eq!(ConnInfo::parse(&c.to_conn_string()).unwrap(), c);
        assert!(ConnInfo::parse("host='open").is_err());
        assert!(ConnInfo::parse("novalue").is_err());
    }

    #[test]
    fn urls_switch_database_and_keep_parameters() {
        let c = ConnInfo::parse("postgres://u:p@127.0.0.1:5433/db1?sslmode=disable").unwrap();
        assert_eq!(c.dbname().as_deref(), Some("db1"));
        assert_eq!(
            c.with_dbname("db2").to_conn_string(),
            "postgres://u:p@127.0.0.1:5433/db2?sslmode=disable"
        );
        let bare = ConnInfo::parse("postgresql://localhost").unwrap();
        assert_eq!(bare.dbname(), None);
        assert_eq!(
            bare.with_dbname("x").to_conn_string(),
            "postgresql://localhost/x"
        );
    }

    #[test]
    fn pgbench_summary_of_postgres_15_parses() {
        let out = "pgbench (15.8 (Debian 15.8-0+deb12u1))\n\
            transaction type: /tmp/insert.sql\n\
            scaling factor: 1\n\
            query mode: prepared\n\
            number of clients: 64\n\
            number of threads: 2\n\
            maximum number of tries: 1\n\
            duration: 20 s\n\
            number of transactions actually processed: 321234\n\
            number of failed transactions: 0 (0.000%)\n\
            latency average = 3.979 ms\n\
            initial connection time = 31.412 ms\n\
            tps = 16084.123456 (without initial connection time)\n";
        let r = parse_pgbench_summary(out).unwrap();
        assert_eq!(r.transactions, 321_234);
        assert_eq!(r.failed, 0);
        assert!((r.tps - 16_084.123_456).abs() < 1e-6);
        assert!((r.latency_avg_ms - 3.979).abs() < 1e-9);
    }

    #[test]
    fn older_pgbench_summaries_keep_the_tps_without_connections() {
        let out = "number of transactions actually processed: 100/100\n\
            tps = 90.0 (including connections establishing)\n\
            tps = 95.5 (excluding connections establishing)\n";
        let r = parse_pgbench_summary(out).unwrap();
        assert_eq!(r.transactions, 100);
        assert_eq!(r.tps, 95.5);
        assert!(parse_pgbench_summary("nothing").is_err());
    }

    #[test]
    fn pgbench_log_lines_give_latency_in_microseconds() {
        assert_eq!(
            parse_pgbench_log_line("0 199 2241 0 1175850568 995598"),
            Some(2241)
        );
        assert_eq!(parse_pgbench_log_line("3 7 skipped 0 1175850569 0"), None);
        assert_eq!(parse_pgbench_log_line(""), None);
    }

    #[test]
    fn pgbench_logs_are_read_from_every_thread_file() {
        let dir = std::env::temp_dir().join(format!("crablet-lt-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("p2.123"), "0 0 100 0 1 1\n0 1 300 0 1 2\n").unwrap();
        std::fs::write(dir.join("p2.123.1"), "1 0 200 0 1 1\n").unwrap();
        std::fs::write(dir.join("other.1"), "0 0 99999 0 1 1\n").unwrap();
        let p = read_pgbench_logs(&dir.join("p2")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((p.p50_us, p.max_us), (200, 300));
    }

    #[test]
    fn sql_quoting() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert!(insert_script("{\"p\":\"x\"}").contains("convert_to('{\"p\":\"x\"}', 'UTF8')"));
    }
}
