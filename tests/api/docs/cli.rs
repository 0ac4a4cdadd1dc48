//! The `crablet` commands of the documentation's examples: run as the page
//! shows them, against the page's server (`CRABLET_URL`), in a directory of
//! the page's own where its `file=NAME` blocks were written. What a command
//! shows is its stdout then its stderr; `> FILE` at its end sends stdout to
//! FILE in that directory instead.

use std::path::Path;
use std::process::Stdio;

use super::COMMAND_TIMEOUT;

/// `command` without a trailing `> FILE`, and FILE.
pub fn redirect(command: &str) -> (String, Option<String>) {
    let trimmed = command.trim_end();
    if let Some((before, file)) = trimmed.rsplit_once('>') {
        let file = file.trim();
        if !file.is_empty() && !file.contains(char::is_whitespace) && !file.contains(['"', '\'']) {
            return (before.to_owned(), Some(file.to_owned()));
        }
    }
    (command.to_owned(), None)
}

/// Runs `crablet <words[1..]>` and returns what it printed.
pub async fn run(
    words: &[String],
    stdout_to: Option<&str>,
    address: &str,
    dir: &Path,
) -> Result<String, String> {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_crablet"));
    command
        .args(&words[1..])
        .current_dir(dir)
        .env("CRABLET_URL", address)
        .env("CRABLET_RETRY_FOR", "2")
        .env_remove("CRABLET_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .map_err(|_| format!("no end within {COMMAND_TIMEOUT:?}"))?
        .map_err(|e| format!("crablet: {e}"))?;
    let mut shown = String::new();
    match stdout_to {
        Some(file) => {
            std::fs::write(dir.join(file), &output.stdout).map_err(|e| format!("{file}: {e}"))?
        }
        None => shown.push_str(&String::from_utf8_lossy(&output.stdout)),
    }
    shown.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok(shown)
}

#[test]
fn a_trailing_redirection_is_taken_apart() {
    assert_eq!(
        redirect("crablet export > events.ndjson\n"),
        ("crablet export ".into(), Some("events.ndjson".into()))
    );
    assert_eq!(redirect("crablet head\n"), ("crablet head\n".into(), None));
    assert_eq!(
        redirect("crablet append --data '{\"a\":\"b > c\"}'\n").1,
        None
    );
}
