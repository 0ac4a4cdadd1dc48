//! The curl commands of the documentation's examples, without curl: their
//! words parsed as a POSIX shell would, and the request made as curl makes it.

use std::time::Duration;

use super::{matches, COMMAND_TIMEOUT, SLOW_MACHINE_GRACE};
use crate::helpers::client;

/// Splits a command into words as a POSIX shell does for what the examples
/// use: single and double quotes, backslash escapes, line continuations.
/// `Ok(None)` when a quote or a continuation is still open.
pub fn words(command: &str) -> Result<Option<Vec<String>>, String> {
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
pub struct Curl {
    method: Option<String>,
    url: Option<String>,
    headers: Vec<(String, String)>,
    data: Vec<String>,
    get: bool,
    max_time: Option<Duration>,
}

pub fn parse_curl(words: &[String]) -> Result<Curl, String> {
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
pub fn target(url: &str, address: &str) -> String {
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
pub async fn run(curl: &Curl, address: &str, expected: &[String]) -> Result<String, String> {
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
