//! The commands that talk to a running server through `crablet-client`:
//! `append`, `read`, `tail`, `head` and `project` (`export` and `import`
//! are in [`crate::transfer`]).
//!
//! Every failure is one line on stderr, `crablet: <code> (<status>):
//! <message>` when the server answered, and exit status 1; a usage error
//! (a flag, a query that is no JSON) is exit status 2; an append whose
//! condition or requirement failed prints why and exits with 3.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use crablet_client::model::{NewEvent, Position, ProjectRequest, Query, QueryItem};
use crablet_client::{Append, AppendOutcome, Client, RetryPolicy};
use futures_util::StreamExt;

use crate::output::{EventWriter, Format};
use crate::Failure;

/// Where the server is and how to reach it: options of every command that
/// talks to one (before or after the command's name).
#[derive(Args, Clone)]
pub struct Server {
    /// The server's base URL (client commands, health).
    #[arg(
        long,
        global = true,
        env = "CRABLET_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// Sent as `Authorization: Bearer <token>` (client commands, health).
    #[arg(long, global = true, env = "CRABLET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With https://: a PEM file of the certificate authority to check the
    /// server's certificate against (besides the usual roots; for health,
    /// instead of not checking it).
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,
    /// How long to keep repeating a request that got no answer, 408, 429,
    /// 503 or `outcome_unknown`, in seconds (0: one attempt).
    #[arg(
        long,
        global = true,
        env = "CRABLET_RETRY_FOR",
        default_value_t = 10.0,
        value_name = "SECONDS"
    )]
    pub retry_for: f64,
}

impl Server {
    pub fn client(&self) -> Result<Client, Failure> {
        let retry_for = Duration::try_from_secs_f64(self.retry_for)
            .map_err(|_| Failure::usage("--retry-for: a number of seconds"))?;
        let mut builder = Client::builder(&self.url).retry(RetryPolicy {
            deadline: retry_for,
            ..RetryPolicy::default()
        });
        if let Some(token) = &self.token {
            builder = builder.token(token);
        }
        if let Some(path) = &self.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| Failure::usage(format!("--ca-cert {}: {e}", path.display())))?;
            builder = builder.ca_cert_pem(pem);
        }
        builder.build().map_err(|e| Failure::usage(e.to_string()))
    }
}

/// Which events: `--type` (one of), `--tag` (all of), or a whole `--query`.
#[derive(Args, Clone, Default)]
pub struct Selection {
    /// Only events of this type (repeatable: any of them).
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Only events carrying this tag (repeatable: all of them).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// A whole query as JSON, `{"items":[{"types":[...],"tags":[...]}, ...]}`
    /// (instead of --type and --tag).
    #[arg(long, value_name = "JSON", conflicts_with_all = ["types", "tags"])]
    pub query: Option<String>,
}

impl Selection {
    pub fn query(&self) -> Result<Query, Failure> {
        if let Some(json) = &self.query {
            return parse_query("--query", json);
        }
        if self.types.is_empty() && self.tags.is_empty() {
            return Ok(Query::all());
        }
        Ok(Query::of([QueryItem {
            types: self.types.clone(),
            tags: self.tags.clone(),
        }]))
    }
}

/// A query given as JSON on the command line.
pub fn parse_query(flag: &str, json: &str) -> Result<Query, Failure> {
    serde_json::from_str(json).map_err(|e| Failure::usage(format!("{flag}: {e}")))
}

/// Runs a command's future on a runtime of its own.
pub fn run<F: Future<Output = Result<(), Failure>>>(future: F) -> Result<(), Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::error(format!("no runtime: {e}")))?
        .block_on(future)
}

#[derive(Args)]
pub struct AppendArgs {
    /// The event's type.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: String,
    /// A tag of the event (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// The event's data (any text; JSON by convention).
    #[arg(long)]
    pub data: String,
    /// The event's id [default: a new UUID].
    #[arg(long)]
    pub id: Option<String>,
    /// The event's metadata.
    #[arg(long)]
    pub metadata: Option<String>,
    /// Append only if no event matching this query (JSON) exists after
    /// --after.
    #[arg(long, value_name = "QUERY")]
    pub fail_if_match: Option<String>,
    /// The position the decision was based on (with --fail-if-match;
    /// without it, any matching event fails the append).
    #[arg(long, requires = "fail_if_match")]
    pub after: Option<Position>,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn append(server: Server, args: AppendArgs) -> Result<(), Failure> {
    let client = server.client()?;
    let mut event = NewEvent::new(args.event_type, args.data);
    event.tags = args.tags;
    event.id = args.id;
    event.metadata = args.metadata;
    let mut append = Append::new([event]);
    if let Some(json) = &args.fail_if_match {
        let query = parse_query("--fail-if-match", json)?;
        append = append.condition(crablet_client::model::AppendCondition {
            fail_if_events_match: query,
            after: args.after,
        });
    }
    let outcome = client.append(append).await?;
    let json = Format::of(args.json) == Format::Json;
    match &outcome {
        AppendOutcome::Appended {
            positions,
            duplicate,
        } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"outcome": "appended", "position": positions.end(), "duplicate": duplicate})
                );
            } else if *duplicate {
                println!(
                    "already stored at {} (a repeat of the same append)",
                    positions.end()
                );
            } else {
                println!("appended at {}", positions.end());
            }
            Ok(())
        }
        AppendOutcome::ConditionFailed => {
            if json {
                println!("{}", serde_json::json!({"outcome": "condition_failed"}));
            }
            Err(Failure::refused(
                "condition failed: an event matching --fail-if-match exists after --after; nothing was written",
            ))
        }
        AppendOutcome::RequirementFailed { index } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"outcome": "requirement_failed", "index": index})
                );
            }
            Err(Failure::refused(format!(
                "requirement {index} failed; nothing was written"
            )))
        }
    }
}

#[derive(Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Only events after this position (before it with --backwards).
    #[arg(long)]
    pub after: Option<Position>,
    /// At most this many events.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Newest first.
    #[arg(long)]
    pub backwards: bool,
    /// NDJSON, one event per line (the default when stdout is not a terminal).
    #[arg(long)]
    pub json: bool,
}

pub async fn read(server: Server, args: ReadArgs) -> Result<(), Failure> {
    let client = server.client()?;
    let mut read = client.read(args.selection.query()?);
    if let Some(after) = args.after {
        read = read.after(after);
    }
    if let Some(limit) = args.limit {
        read = read.limit(limit);
    }
    if args.backwards {
        read = read.backwards();
    }
    let mut events = read.stream();
    let mut out = EventWriter::new(std::io::stdout().lock(), Format::of(args.json));
    while let Some(event) = events.next().await {
        out.write(&event?).map_err(Failure::output)?;
    }
    out.flush().map_err(Failure::output)
}

#[derive(Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Start after this position [default: the head: only new events].
    #[arg(long)]
    pub after: Option<Position>,
    /// NDJSON, one event per line (the default when stdout is not a terminal).
    #[arg(long)]
    pub json: bool,
}

pub async fn tail(server: Server, args: TailArgs) -> Result<(), Failure> {
    let client = server.client()?;
    let after = match args.after {
        Some(after) => after,
        None => client.head().await?,
    };
    let mut events = client
        .subscribe(args.selection.query()?)
        .after(after)
        .stream();
    let mut out = EventWriter::new(std::io::stdout().lock(), Format::of(args.json));
    while let Some(event) = events.next().await {
        out.write(&event?).map_err(Failure::output)?;
        out.flush().map_err(Failure::output)?;
    }
    Ok(())
}

pub async fn head(server: Server) -> Result<(), Failure> {
    let position = server.client()?.head().await?;
    println!("{position}");
    Ok(())
}

#[derive(Args)]
pub struct ProjectArgs {
    /// A JSON file: `{"projectors": [...]}` as `POST /project` takes it
    /// (`-`: stdin).
    pub file: PathBuf,
}

pub async fn project(server: Server, args: ProjectArgs) -> Result<(), Failure> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(Failure::input)?
    } else {
        std::fs::read_to_string(&args.file)
            .map_err(|e| Failure::usage(format!("{}: {e}", args.file.display())))?
    };
    let request: ProjectRequest = serde_json::from_str(&text)
        .map_err(|e| Failure::usage(format!("{}: {e}", args.file.display())))?;
    let answer = server.client()?.project(request.projectors).await?;
    let text = if Format::of(false) == Format::Json {
        serde_json::to_string(&answer)
    } else {
        serde_json::to_string_pretty(&answer)
    };
    println!("{}", text.map_err(|e| Failure::error(e.to_string()))?);
    Ok(())
}
