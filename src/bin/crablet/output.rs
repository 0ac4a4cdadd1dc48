//! How the client commands print: a readable table when stdout is a
//! terminal, NDJSON (one JSON value per line) with `--json` or when piped;
//! a progress bar on stderr when it is a terminal.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crablet_client::model::SequencedEvent;
use indicatif::{ProgressBar, ProgressStyle};

/// Table or NDJSON.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

impl Format {
    /// NDJSON when asked for or when stdout is not a terminal.
    pub fn of(json: bool) -> Format {
        if json || !std::io::stdout().is_terminal() {
            Format::Json
        } else {
            Format::Table
        }
    }
}

/// Writes events one by one, in either format.
pub struct EventWriter<W: Write> {
    out: W,
    format: Format,
    header_written: bool,
}

impl<W: Write> EventWriter<W> {
    pub fn new(out: W, format: Format) -> Self {
        EventWriter {
            out,
            format,
            header_written: false,
        }
    }

    pub fn write(&mut self, event: &SequencedEvent) -> std::io::Result<()> {
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.out, event)?;
                self.out.write_all(b"\n")
            }
            Format::Table => {
                if !self.header_written {
                    self.header_written = true;
                    writeln!(
                        self.out,
                        "{:>9}  {:<24}  {:<32}  DATA",
                        "POSITION", "TYPE", "TAGS"
                    )?;
                }
                writeln!(
                    self.out,
                    "{:>9}  {:<24}  {:<32}  {}",
                    event.position,
                    cut(&event.event_type, 24),
                    cut(&event.tags.join(","), 32),
                    cut(&event.data, 80)
                )
            }
        }
    }

    /// Writes what is buffered (after each event of a live stream).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// `text` in at most `width` characters (the last one `…` when cut), with
/// control characters shown as spaces so that a row stays one line.
fn cut(text: &str, width: usize) -> String {
    let clean = |c: char| if c.is_control() { ' ' } else { c };
    if text.chars().count() <= width {
        return text.chars().map(clean).collect();
    }
    let mut cut: String = text.chars().take(width - 1).map(clean).collect();
    cut.push('…');
    cut
}

/// A progress bar on stderr when it is a terminal, hidden otherwise:
/// `done/total unit`, the rate and the time left.
pub fn progress(total: u64, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let template = format!("{{bar:30}} {{human_pos}}/{{human_len}} {unit} {{msg}} ({{eta}} left)");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_or_multi_line_values_stay_one_short_line() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("abcdef", 5), "abcd…");
        assert_eq!(cut("a\nb", 5), "a b");
    }

    #[test]
    fn a_table_has_a_header_and_one_line_per_event() {
        let event = SequencedEvent {
            event_type: "UserRegistered".into(),
            tags: vec!["username:ada".into(), "tenant:1".into()],
            data: r#"{"name":"ada"}"#.into(),
            position: 7,
            id: None,
            metadata: None,
            recorded_at: "2026-01-01T00:00:00.000000Z".into(),
        };
        let mut out = Vec::new();
        let mut writer = EventWriter::new(&mut out, Format::Table);
        writer.write(&event).unwrap();
        writer.write(&event).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with(" POSITION  TYPE"));
        assert!(lines[1].contains("UserRegistered") && lines[1].contains("username:ada,tenant:1"));
    }
}
