//! The documentation is code: every example in `README.md` and `docs/*.md`
//! runs against a real server, and every relative link resolves.
//!
//! Examples. Every fenced block whose language is `sh` is run, unless its
//! info string says `no-run` (```` ```sh no-run ````), which the page follows
//! with an HTML comment saying why (`<!-- not run: ... -->` just before the
//! block). A runnable block holds only `curl` commands; anything else fails
//! the test, so that nothing is skipped silently. The `#` lines right after a
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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{client, spawn_app};

/// Fields whose values change from run to run: present in the answer when the
/// example shows them, whatever their value.
const VOLATILE: &[&str] = &["durationInMicroseconds", "recordedAt", "requestId"];

/// Bound on one command without `--max-time`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stream cut by `--max-time` may be read past its bound while
/// what the page shows has not arrived yet.
const SLOW_MACHINE_GRACE: Duration = Duration::from_secs(15);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page under docs/, in a stable order.
fn pages() -> Vec<PathBuf> {
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

fn relative(path: &Path) -> String {
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
        if !trimmed.starts_with("curl ") {
            return Err(format!(
                "line {}: not a curl command (mark the block `sh no-run` with a reason): {line}",
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

/// Splits a command into words as a POSIX shell does for what the examples
/// use: single and double quotes, backslash escapes, line continuations.
/// `Ok(None)` when a quote or a continuation is still open.
fn words(command: &str) -> Result<Option<Vec<String>>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Ok(None),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Ok(None),
                        },
                        Some('$' | '`') => {
                            return Err("shell expansion is not supported in examples".into())
                        }
                        Some(c) => word.push(c),
                        None => return Ok(None),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') if chars.peek().is_none() => return Ok(None),
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                None => return Ok(None),
            },
            '$' | '`' | ';' | '|' | '&' | '<' | '>' | '(' | ')' => {
                return Err(format!("`{c}` is not supported in examples"))
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                if c == '\n' && chars.peek().is_none() {
                    break;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(Some(words))
}

/// A curl command line, as far as the examples use curl.
#[derive(Debug, Default)]
struct Curl {
    method: Option<String>,
    url: Option<String>,
    headers: Vec<(String, String)>,
    data: Vec<String>,
    get: bool,
    max_time: Option<Duration>,
}

fn parse_curl(words: &[String]) -> Result<Curl, String> {
    let mut curl = Curl::default();
    let mut args = words.iter().skip(1);
    let mut expanded = Vec::new();
    // `-sN` is `-s -N`: expand bundles of flags that take no value.
    for arg in args.by_ref() {
        if arg.len() > 2
            && arg.starts_with('-')
            && !arg.starts_with("--")
            && arg[1..].chars().all(|c| "sSNG".contains(c))
        {
            expanded.extend(arg[1..].chars().map(|c| format!("-{c}")));
        } else {
            expanded.push(arg.clone());
        }
    }
    let mut args = expanded.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-s" | "--silent" | "-S" | "--show-error" | "-N" | "--no-buffer" => {}
            "-G" | "--get" => curl.get = true,
            "-X" | "--request" => curl.method = Some(value(&arg)?),
            "-H" | "--header" => {
                let header = value(&arg)?;
                let (name, value) = header
                    .split_once(':')
                    .ok_or(format!("bad header {header}"))?;
                curl.headers
                    .push((name.trim().to_string(), value.trim().to_string()));
            }
            "-d" | "--data" | "--data-raw" | "--data-binary" => curl.data.push(value(&arg)?),
            "--data-urlencode" => {
                let part = value(&arg)?;
                curl.data.push(match part.split_once('=') {
                    Some((name, content)) => format!("{name}={}", url_encode(content)),
                    None => url_encode(&part),
                });
            }
            "-m" | "--max-time" => {
                let seconds: f64 = value(&arg)?
                    .parse()
                    .map_err(|e| format!("--max-time: {e}"))?;
                curl.max_time = Some(Duration::from_secs_f64(seconds));
            }
            other if other.starts_with('-') => {
                return Err(format!("curl option {other} is not supported by this test"))
            }
            url => {
                if curl.url.replace(url.to_string()).is_some() {
                    return Err("more than one URL".into());
                }
            }
        }
    }
    if curl.url.is_none() {
        return Err("no URL".into());
    }
    Ok(curl)
}

/// Percent-encodes as `curl --data-urlencode` does.
fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The URL of the example, pointed at the test server.
fn target(url: &str, address: &str) -> String {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .strip_prefix("localhost:8080")
        .or_else(|| {
            url.strip_prefix("http://")
                .unwrap_or(url)
                .strip_prefix("127.0.0.1:8080")
        });
    match rest {
        Some(path) => format!("{address}{path}"),
        None => panic!("an example's URL is not on localhost:8080: {url}"),
    }
}

/// Runs one curl command against `address` and returns what `curl -s` prints.
/// A stream cut by `--max-time` is read for that long; on a machine so busy
/// that `expected` has not arrived by then, it is read on, up to
/// [`SLOW_MACHINE_GRACE`], until it has.
async fn run(curl: &Curl, address: &str, expected: &[String]) -> Result<String, String> {
    let mut url = target(curl.url.as_deref().expect("url"), address);
    let data = (!curl.data.is_empty()).then(|| curl.data.join("&"));
    let mut headers = curl.headers.clone();
    let (method, body) = match data {
        Some(data) if curl.get => {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&data);
            (curl.method.clone().unwrap_or("GET".into()), None)
        }
        Some(data) => {
            if !headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            {
                headers.push((
                    "Content-Type".into(),
                    "application/x-www-form-urlencoded".into(),
                ));
            }
            (curl.method.clone().unwrap_or("POST".into()), Some(data))
        }
        None => (curl.method.clone().unwrap_or("GET".into()), None),
    };
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let mut request = client().request(method, &url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let start = tokio::time::Instant::now();
    let mut deadline = start + curl.max_time.unwrap_or(COMMAND_TIMEOUT);
    let mut out = Vec::new();
    let mut response = match tokio::time::timeout_at(start + COMMAND_TIMEOUT, request.send()).await
    {
        Ok(sent) => sent.map_err(|e| format!("request failed: {e}"))?,
        Err(_) => return Err("no answer within the time bound".into()),
    };
    loop {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => out.extend_from_slice(&chunk),
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(format!("reading the answer: {e}")),
            // What `curl --max-time` prints: what came before the bound.
            Err(_) if curl.max_time.is_some() => {
                let late = start + SLOW_MACHINE_GRACE;
                let shown = String::from_utf8_lossy(&out).into_owned();
                if matches(expected, &shown) || deadline >= late {
                    break;
                }
                deadline = late;
            }
            Err(_) => return Err("the answer did not end within the time bound".into()),
        }
    }
    String::from_utf8(out).map_err(|e| e.to_string())
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
fn matches(expected: &[String], actual: &str) -> bool {
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
                let curl = match words(&example.command) {
                    Ok(Some(words)) => parse_curl(&words),
                    Ok(None) => Err("an unterminated quote".into()),
                    Err(error) => Err(error),
                };
                let curl = match curl {
                    Ok(curl) => curl,
                    Err(error) => {
                        failures.push(format!("{at}: {error}\n{}", example.command));
                        continue;
                    }
                };
                examples_run += 1;
                match run(&curl, &app.address, &example.expected).await {
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

/// GitHub's anchor for a heading: lowercase, markup and punctuation dropped,
/// spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings, duplicates numbered as GitHub does.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut fence = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        let level = line.chars().take_while(|&c| c == '#').count();
        if level == 0 || level > 6 || !line[level..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[level..]);
        let mut anchor = base.clone();
        let mut n = 0;
        while anchors.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        anchors.insert(anchor);
    }
    anchors
}

/// The targets of a page's inline links, with their line, outside code.
fn links(markdown: &str) -> Vec<(usize, String)> {
    let mut links = Vec::new();
    let mut fence = false;
    for (index, line) in markdown.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        // Drop code spans: `[a](b)` inside backquotes is not a link.
        let text: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            links.push((index + 1, target.to_string()));
            rest = &rest[end..];
        }
    }
    links
}

#[test]
fn every_relative_link_in_the_documentation_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let markdown = std::fs::read_to_string(&page).expect("read page");
        for (line, target) in links(&markdown) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.clone()
            } else {
                page.parent().expect("page dir").join(path)
            };
            let at = format!("{}:{line}: {target}", relative(&page));
            if !file.exists() {
                broken.push(format!("{at}: no such file"));
                continue;
            }
            if let Some(anchor) = anchor {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                if !anchors(&text).contains(anchor) {
                    broken.push(format!("{at}: no heading with this anchor"));
                }
            }
        }
    }
    assert!(checked > 10, "only {checked} relative links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn slugs_follow_githubs_rules() {
    assert_eq!(
        slug(" go-crablet compatibility: `/go-crablet/...`"),
        "go-crablet-compatibility-go-crablet"
    );
    assert_eq!(
        slug(" `require` on `POST /append`"),
        "require-on-post-append"
    );
    assert_eq!(slug(" go-crablet's k6 scripts"), "go-crablets-k6-scripts");
    let page = "# A\n## Twice\n```\n# not a heading\n```\n## Twice\n";
    let found = anchors(page);
    assert!(found.contains("twice") && found.contains("twice-1") && found.len() == 3);
}
