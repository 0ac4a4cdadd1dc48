//! The documentation is code: every example in `README.md` and `docs/*.md`
//! runs against a real server, and every relative link resolves.
//!
//! Examples. Every fenced block whose language is `sh` is run, unless its
//! info string says `no-run` (```` ```sh no-run ````), which the page follows
//! with an HTML comment saying why (`<!-- not run: ... -->` just before the
//! block). A runnable block holds only `curl` and `crablet` commands (the
//! command line client, see [`cli`]); anything else fails the test, so that
//! nothing is skipped silently. A block whose info string has `file=NAME`
//! is written to NAME in the page's directory before its commands run. The `#` lines right after a
//! command (no blank line between) are its expected output, as `curl -s`
//! prints it; `#` lines after a blank line are prose and are not compared.
//! The commands of one page run in order on a fresh server of their own, with
//! `localhost:8080` and `127.0.0.1:8080` pointed at it. The commands are not
//! handed to a shell: their arguments are parsed as a POSIX shell would (quotes,
//! backslashes, line continuations) and the request is made the way curl makes
//! it (`-d` alone sends `application/x-www-form-urlencoded`, `-G` turns the data
//! into a query string), so the test needs no curl on the machine.
//!
//! An expected output that parses as a sequence of JSON values is compared as
//! JSON, with the values of volatile fields (`durationInMicroseconds`,
//! `recordedAt`, `requestId`) ignored but their presence checked; any other is
//! compared line by line, `data: ` lines (Server-Sent Events) as JSON. A last
//! line `...` means the output may go on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{spawn_app, TempDir};
use curl::{parse_curl, run, words};

mod cli;
mod curl;
mod links;

/// Fields whose values change from run to run: present in the answer when the
/// example shows them, whatever their value.
const VOLATILE: &[&str] = &["durationInMicroseconds", "recordedAt", "requestId"];

/// Bound on one command without `--max-time`.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stream cut by `--max-time` may be read past its bound while
/// what the page shows has not arrived yet.
pub(crate) const SLOW_MACHINE_GRACE: Duration = Duration::from_secs(15);

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page under docs/, in a stable order.
pub(crate) fn pages() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("docs entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    let mut pages = vec![root().join("README.md")];
    pages.extend(docs);
    pages
}

pub(crate) fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A fenced code block: its info string, the line of its opening fence
/// (1-based), whether it is marked not to run, and its text.
struct Block {
    info: String,
    line: usize,
    no_run: bool,
    text: String,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    let mut last_text_line = "";
    for (index, line) in markdown.lines().enumerate() {
        match open.take() {
            Some(block) if line.trim_start().starts_with("```") => blocks.push(block),
            Some(mut block) => {
                block.text.push_str(line);
                block.text.push('\n');
                open = Some(block);
            }
            None => {
                if let Some(info) = line.trim_start().strip_prefix("```") {
                    let info = info.trim().to_string();
                    let no_run = info.split_whitespace().any(|word| word == "no-run")
                        || last_text_line.trim_start().starts_with("<!-- not run:");
                    open = Some(Block {
                        info,
                        line: index + 1,
                        no_run,
                        text: String::new(),
                    });
                } else if !line.trim().is_empty() {
                    last_text_line = line;
                }
            }
        }
    }
    assert!(open.is_none(), "a fenced block is never closed");
    blocks
}

fn is_sh(block: &Block) -> bool {
    block.info.split_whitespace().next() == Some("sh")
}

/// One command of a block and the output shown after it.
struct Example {
    line: usize,
    command: String,
    expected: Vec<String>,
}

/// The commands of a runnable block; an error names what is not a curl
/// command.
fn examples(block: &Block) -> Result<Vec<Example>, String> {
    let lines: Vec<&str> = block.text.lines().collect();
    let mut examples = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        if !trimmed.starts_with("curl ") && !trimmed.starts_with("crablet ") {
            return Err(format!(
                "line {}: not a curl or crablet command (mark the block `sh no-run` with a reason): {line}",
                block.line + 1 + i
            ));
        }
        let start = i;
        let mut command = String::new();
        loop {
            command.push_str(lines[i]);
            command.push('\n');
            i += 1;
            let open = matches!(words(&command), Ok(None));
            if !open || i >= lines.len() {
                break;
            }
        }
        let mut expected = Vec::new();
        while i < lines.len() && lines[i].starts_with('#') {
            let shown = &lines[i][1..];
            expected.push(shown.strip_prefix(' ').unwrap_or(shown).to_string());
            i += 1;
        }
        examples.push(Example {
            line: block.line + 1 + start,
            command,
            expected,
        });
    }
    Ok(examples)
}

/// Every JSON value in `text`, in order, when all of it is JSON values.
fn json_values(text: &str) -> Option<Vec<Value>> {
    if text.trim().is_empty() {
        return None;
    }
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .map(|values| values.into_iter().map(scrub).collect())
}

/// The value with volatile fields' values replaced by a placeholder.
fn scrub(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    let value = if VOLATILE.contains(&key.as_str()) {
                        Value::String("<volatile>".into())
                    } else {
                        scrub(value)
                    };
                    (key, value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(scrub).collect()),
        other => other,
    }
}

/// Whether `actual` is what `expected` shows.
pub(crate) fn matches(expected: &[String], actual: &str) -> bool {
    let mut expected = expected.to_vec();
    let open_ended = expected.last().is_some_and(|line| line.trim() == "...");
    if open_ended {
        expected.pop();
    }
    let shown = expected.join("\n");
    if let Some(want) = json_values(&shown) {
        let Some(got) = json_values(actual) else {
            return false;
        };
        return if open_ended {
            got.len() >= want.len() && got[..want.len()] == want[..]
        } else {
            got == want
        };
    }
    let line = |text: &str| -> Value {
        match text.strip_prefix("data: ").and_then(json_values) {
            Some(values) => Value::Array(values),
            None => Value::String(text.trim_end().to_string()),
        }
    };
    let want: Vec<Value> = shown.trim_end().lines().map(line).collect();
    let got: Vec<Value> = actual.trim_end().lines().map(line).collect();
    if open_ended {
        got.len() >= want.len() && got[..want.len()] == want[..]
    } else {
        got == want
    }
}

#[actix_rt::test]
async fn every_example_in_the_documentation_answers_as_shown() {
    let mut runnable_blocks = 0;
    let mut blocks_run = 0;
    let mut examples_run = 0;
    let mut failures = Vec::new();
    for page in pages() {
        let markdown = std::fs::read_to_string(&page).expect("read page");
        let name = relative(&page);
        let runnable: Vec<Block> = blocks(&markdown)
            .into_iter()
            .filter(|block| is_sh(block) && !block.no_run)
            .collect();
        if runnable.is_empty() {
            continue;
        }
        runnable_blocks += runnable.len();
        let app = spawn_app().await;
        let page_dir = TempDir::new("docs");
        let dir = &page_dir.0;
        for block in blocks(&markdown) {
            if let Some(name) = block
                .info
                .split_whitespace()
                .find_map(|word| word.strip_prefix("file="))
            {
                std::fs::write(dir.join(name), &block.text).expect("write a page's file");
            }
        }
        for block in &runnable {
            let examples = match examples(block) {
                Ok(examples) => examples,
                Err(error) => {
                    failures.push(format!("{name}:{}: {error}", block.line));
                    continue;
                }
            };
            if examples.is_empty() {
                failures.push(format!(
                    "{name}:{}: a runnable block without a command",
                    block.line
                ));
                continue;
            }
            blocks_run += 1;
            for example in examples {
                let at = format!("{name}:{}", example.line);
                if example.expected.is_empty() {
                    failures.push(format!("{at}: no expected output shown after the command"));
                    continue;
                }
                let (command, stdout_to) = cli::redirect(&example.command);
                let words = match words(&command) {
                    Ok(Some(words)) => Ok(words),
                    Ok(None) => Err("an unterminated quote".into()),
                    Err(error) => Err(error),
                };
                let answer = match words {
                    Ok(words) if words[0] == "crablet" => {
                        examples_run += 1;
                        cli::run(&words, stdout_to.as_deref(), &app.address, dir).await
                    }
                    Ok(_) if stdout_to.is_some() => {
                        failures.push(format!("{at}: only crablet commands may redirect"));
                        continue;
                    }
                    Ok(words) => match parse_curl(&words) {
                        Ok(curl) => {
                            examples_run += 1;
                            run(&curl, &app.address, &example.expected).await
                        }
                        Err(error) => {
                            failures.push(format!("{at}: {error}\n{}", example.command));
                            continue;
                        }
                    },
                    Err(error) => {
                        failures.push(format!("{at}: {error}\n{}", example.command));
                        continue;
                    }
                };
                match answer {
                    Ok(actual) if matches(&example.expected, &actual) => {}
                    Ok(actual) => failures.push(format!(
                        "{at}: the answer is not what the page shows\n{}--- shown:\n{}\n--- got:\n{}",
                        example.command,
                        example.expected.join("\n"),
                        actual.trim_end()
                    )),
                    Err(error) => failures.push(format!("{at}: {error}\n{}", example.command)),
                }
            }
        }
    }
    for failure in &failures {
        eprintln!("MISMATCH {failure}\n");
    }
    eprintln!(
        "documentation examples: {examples_run} commands in {blocks_run} of {runnable_blocks} runnable blocks, {} mismatches",
        failures.len()
    );
    assert!(
        runnable_blocks >= 8,
        "only {runnable_blocks} runnable blocks found: is the parser broken?"
    );
    assert!(examples_run >= runnable_blocks);
    assert_eq!(blocks_run, runnable_blocks);
    assert!(
        failures.is_empty(),
        "{} mismatches (printed above)",
        failures.len()
    );
}

#[test]
fn every_example_that_does_not_run_says_why() {
    let mut unexplained = Vec::new();
    for page in pages() {
        let markdown = std::fs::read_to_string(&page).expect("read page");
        let lines: Vec<&str> = markdown.lines().collect();
        for block in blocks(&markdown).into_iter().filter(|block| block.no_run) {
            let before = lines[..block.line - 1]
                .iter()
                .rev()
                .find(|line| !line.trim().is_empty());
            if !before.is_some_and(|line| line.trim_start().starts_with("<!-- not run:")) {
                unexplained.push(format!("{}:{}", relative(&page), block.line));
            }
        }
    }
    assert!(
        unexplained.is_empty(),
        "blocks marked no-run without a `<!-- not run: why -->` comment just before: {unexplained:?}"
    );
}

/// Every `rust` block of the pages is an excerpt of an example the tests
/// run (`client/examples/*.rs`, run by `tests/api/client.rs`): its lines,
/// in order and together, are lines of one of them.
#[test]
fn every_rust_block_is_an_excerpt_of_a_tested_example() {
    let examples: Vec<(String, Vec<String>)> = std::fs::read_dir(root().join("client/examples"))
        .expect("client/examples")
        .map(|entry| entry.expect("entry").path())
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read example");
            let lines = text
                .lines()
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect();
            (relative(&path), lines)
        })
        .collect();
    let mut checked = 0;
    let mut strays = Vec::new();
    for page in pages() {
        let markdown = std::fs::read_to_string(&page).expect("read page");
        for block in blocks(&markdown) {
            if block.info.split_whitespace().next() != Some("rust") {
                continue;
            }
            checked += 1;
            let lines: Vec<&str> = block
                .text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let found = examples.iter().any(|(_, example)| {
                example
                    .windows(lines.len())
                    .any(|window| window.iter().zip(&lines).all(|(a, b)| a == b))
            });
            if !found {
                strays.push(format!("{}:{}", relative(&page), block.line));
            }
        }
    }
    assert!(checked >= 3, "only {checked} rust blocks found");
    assert!(
        strays.is_empty(),
        "rust blocks that are no excerpt of client/examples/*.rs: {strays:?}"
    );
}
