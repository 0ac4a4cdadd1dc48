//! `crablet export` and `crablet import`: the log, or the part after a
//! position, as NDJSON (one event per line, as `/read` returns it: position,
//! id, metadata and `recordedAt` included), and back.
//!
//! Export streams page by page (constant memory). Import sends batches to
//! `POST /admin/import`, which writes each event at its own position, so an
//! import into an empty store reproduces the exported one. Run again after
//! an interruption, an import finds the store holding a prefix of its file
//! (the store's last event is the file's event at that position) and goes on
//! after it: nothing is written twice. Into any other non-empty store it is
//! refused unless `--allow-non-empty`, and then takes only events beyond
//! the store's head.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use clap::Args;
use crablet_client::model::{Position, Query, SequencedEvent};
use crablet_client::Client;
use futures_util::StreamExt;

use crate::client::Server;
use crate::output;
use crate::Failure;

/// The most bytes of events one import request carries (the server's
/// default `http.max_body_bytes` is 4 MiB).
const MAX_BATCH_BYTES: usize = 3 << 20;

#[derive(Args)]
pub struct ExportArgs {
    /// Only events after this position.
    #[arg(long, default_value_t = 0)]
    pub after: Position,
}

pub async fn export(server: Server, args: ExportArgs) -> Result<(), Failure> {
    let client = server.client()?;
    let head = client.head().await?;
    let bar = output::progress(head.saturating_sub(args.after).max(0) as u64, "positions");
    let mut events = client
        .read(Query::all())
        .after(args.after)
        .page_size(1000)
        .stream();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut count = 0u64;
    let started = std::time::Instant::now();
    while let Some(event) = events.next().await {
        let event = event?;
        serde_json::to_writer(&mut out, &event).map_err(|e| Failure::output(e.into()))?;
        out.write_all(b"\n").map_err(Failure::output)?;
        count += 1;
        bar.set_position((event.position - args.after).max(0) as u64);
        let rate = count as f64 / started.elapsed().as_secs_f64().max(0.001);
        bar.set_message(format!("{count} events, {rate:.0} events/s"));
    }
    out.flush().map_err(Failure::output)?;
    bar.finish_and_clear();
    eprintln!(
        "exported {count} events; head {}",
        events.head().unwrap_or(head)
    );
    Ok(())
}

#[derive(Args)]
pub struct ImportArgs {
    /// The NDJSON file `crablet export` wrote (`-`: stdin).
    pub file: PathBuf,
    /// Import into a store that already holds events (and is not an
    /// interrupted import of this file): only a log whose positions are all
    /// beyond the store's head, such as `crablet export --after <head>`.
    #[arg(long)]
    pub allow_non_empty: bool,
    /// Events per request.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
}

pub async fn import(server: Server, args: ImportArgs) -> Result<(), Failure> {
    let client = server.client()?;
    let (input, size): (Box<dyn Read>, u64) = if args.file.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), 0)
    } else {
        let file = std::fs::File::open(&args.file)
            .map_err(|e| Failure::usage(format!("{}: {e}", args.file.display())))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(file), size)
    };
    let name = args.file.display().to_string();
    let head = client.head().await?;
    let mut start = Start::of(&client, head, args.allow_non_empty).await?;
    let bar = output::progress(size, "bytes");
    let mut batch = Batch::new(args.batch_size.max(1));
    let (mut imported, mut skipped, mut done_bytes) = (0u64, 0u64, 0u64);
    let mut previous: Position = 0;
    let started = std::time::Instant::now();
    for (number, line) in BufReader::new(input).lines().enumerate() {
        let line = line.map_err(Failure::input)?;
        done_bytes += line.len() as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{name} line {}", number + 1);
        let event: SequencedEvent =
            serde_json::from_str(&line).map_err(|e| Failure::error(format!("{at}: {e}")))?;
        if event.position <= previous {
            return Err(Failure::error(format!(
                "{at}: position {} does not follow {previous}: not an export",
                event.position
            )));
        }
        previous = event.position;
        if !start.admits(&event, &at)? {
            skipped += 1;
            continue;
        }
        if batch.is_full(&line) {
            imported += batch.send(&client).await?;
        }
        batch.push(event, line.len());
        bar.set_position(done_bytes);
        let rate = imported as f64 / started.elapsed().as_secs_f64().max(0.001);
        bar.set_message(format!("{imported} events, {rate:.0} events/s"));
    }
    start.finished(&name)?;
    imported += batch.send(&client).await?;
    bar.finish_and_clear();
    let head = client.head().await?;
    eprintln!(
        "imported {imported} events{}; head {head}",
        if skipped > 0 {
            format!(" (the first {skipped} were already stored)")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Where an import starts, given the store it goes into.
enum Start {
    /// An empty store: every event.
    Empty,
    /// A store holding events up to `head`: an interrupted import of this
    /// file when the file's event at `head` is the store's last one.
    Resume {
        head: Position,
        last: SequencedEvent,
        allow_non_empty: bool,
        /// Whether the file's event at `head` was found and was the store's
        /// (or, with `allow_non_empty`, the file starts beyond `head`).
        confirmed: bool,
        /// Whether the file had events below `head`.
        below: bool,
    },
}

impl Start {
    async fn of(client: &Client, head: Position, allow_non_empty: bool) -> Result<Start, Failure> {
        if head == 0 {
            return Ok(Start::Empty);
        }
        let (last, _) = client
            .read(Query::all())
            .backwards()
            .limit(1)
            .collect()
            .await?;
        match last.into_iter().next() {
            None => Ok(Start::Empty),
            Some(last) => Ok(Start::Resume {
                head: last.position,
                last,
                allow_non_empty,
                confirmed: false,
                below: false,
            }),
        }
    }

    /// Whether `event` is to be sent (`false`: the store has it already).
    fn admits(&mut self, event: &SequencedEvent, at: &str) -> Result<bool, Failure> {
        let Start::Resume {
            head,
            last,
            allow_non_empty,
            confirmed,
            below,
        } = self
        else {
            return Ok(true);
        };
        if *confirmed {
            return Ok(true);
        }
        if event.position < *head {
            // Stored already if the event at the head turns out to be the
            // store's last one.
            *below = true;
            return Ok(false);
        }
        if event.position == *head && event == last {
            *confirmed = true;
            return Ok(false);
        }
        if event.position > *head && *allow_non_empty && !*below {
            *confirmed = true;
            return Ok(true);
        }
        Err(self.refusal(at))
    }

    /// At the end of the file: an import that never met the store's last
    /// event was not a resumption.
    fn finished(&self, name: &str) -> Result<(), Failure> {
        match self {
            Start::Resume {
                confirmed: false, ..
            } => Err(self.refusal(name)),
            _ => Ok(()),
        }
    }

    fn refusal(&self, at: &str) -> Failure {
        let Start::Resume {
            head,
            allow_non_empty,
            ..
        } = self
        else {
            return Failure::error("refused");
        };
        if *allow_non_empty {
            Failure::error(format!(
                "{at}: the store already holds positions up to {head}; positions are kept, so \
                 only events beyond it can be imported (crablet export --after {head})"
            ))
        } else {
            Failure::error(format!(
                "{at}: the store is not empty (head {head}) and is not an interrupted import of \
                 this file; --allow-non-empty imports a log whose positions are beyond its head"
            ))
        }
    }
}

/// The events of the next import request.
struct Batch {
    events: Vec<SequencedEvent>,
    bytes: usize,
    size: usize,
}

impl Batch {
    fn new(size: usize) -> Self {
        Batch {
            events: Vec::with_capacity(size),
            bytes: 0,
            size,
        }
    }

    fn is_full(&self, next_line: &str) -> bool {
        !self.events.is_empty()
            && (self.events.len() >= self.size || self.bytes + next_line.len() > MAX_BATCH_BYTES)
    }

    fn push(&mut self, event: SequencedEvent, bytes: usize) {
        self.events.push(event);
        self.bytes += bytes;
    }

    /// Sends the batch (the client repeats it while it may not have been
    /// written). A repeat answered `position_taken` after an attempt that
    /// was written but not answered finds the store's head at the batch's
    /// last position: done.
    async fn send(&mut self, client: &Client) -> Result<u64, Failure> {
        let Some(last) = self.events.last().map(|e| e.position) else {
            return Ok(0);
        };
        let events = std::mem::take(&mut self.events);
        let count = events.len() as u64;
        self.bytes = 0;
        match client.import(events).await {
            Ok(_) => Ok(count),
            Err(e) if e.code() == Some("position_taken") && client.head().await? == last => {
                Ok(count)
            }
            Err(e) => Err(e.into()),
        }
    }
}
