//! Streaming reads hold a bounded amount of memory, whatever the size of the
//! events and however many readers there are and however slowly they read:
//! a page is cut at `reader.page_max_bytes`, and the read goes on from there.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::helpers::spawn_app_with;

/// Resident set size of this process (server and test client alike).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

const EVENTS: usize = 60;
/// What each event of the read carries once.
const MARKER: &[u8] = br#""type":"Big""#;

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}
const DATA_BYTES: usize = 200_000;

#[actix_rt::test]
async fn many_slow_readers_of_large_events_stay_within_the_page_budget() {
    let app = spawn_app_with(|s| {
        s.reader.page_max_bytes = 256 * 1024;
        s.reader.pool_size = 8;
        // Readers queue for the pool's connections page by page; on a busy
        // machine a wait can be long, and a failed later page aborts a read.
        s.reader.pool_timeout_ms = 30_000;
    })
    .await;
    let data = "x".repeat(DATA_BYTES);
    for chunk in 0..EVENTS / 10 {
        let events: Vec<_> = (0..10)
            .map(
                |i| json!({"type": "Big", "tags": [format!("n:{}", chunk * 10 + i)], "data": data}),
            )
            .collect();
        assert!(app.append(json!({"events": events})).await.appended());
    }
    let pages_before = metric(&app, "crablet_read_pages_total").await;

    const READERS: usize = 24;
    let baseline = rss_bytes();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let readers = (0..READERS).map(|_| {
        let (http, address, peak) = (app.http.clone(), app.address.clone(), peak.clone());
        async move {
            let response = http
                .get(format!("{address}/read"))
                .query(&[("query", r#"{"items":[{"types":["Big"]}]}"#)])
                .send()
                .await
                .expect("read");
            assert_eq!(response.status(), 200);
            // Count events as they pass, keeping only a short tail across
            // chunks: the client itself must not hold the whole read.
            let mut body = response.bytes_stream();
            let (mut tail, mut events, mut last) = (Vec::new(), 0, 0u8);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.expect("chunk");
                tail.extend_from_slice(&chunk);
                events += count(&tail, MARKER);
                let keep = tail.len().min(MARKER.len() - 1);
                tail.drain(..tail.len() - keep);
                last = *chunk.last().unwrap_or(&last);
                // A slow consumer: the server must not run ahead of it.
                tokio::time::sleep(Duration::from_millis(20)).await;
                peak.fetch_max(rss_bytes(), std::sync::atomic::Ordering::Relaxed);
            }
            assert_eq!(last, b']', "the array is complete");
            events
        }
    });
    let counts = futures_util::future::join_all(readers).await;
    let incomplete = counts.iter().filter(|&&n| n != EVENTS).count();
    let pages = metric(&app, "crablet_read_pages_total").await - pages_before;
    let growth = peak.load(std::sync::atomic::Ordering::Relaxed) - baseline;
    println!(
        "{READERS} slow readers of {EVENTS} events of {} KB: {incomplete} incomplete, \
         {pages} pages read, peak RSS growth {} MiB (a whole read is {} MiB each)",
        DATA_BYTES / 1000,
        growth >> 20,
        (EVENTS * DATA_BYTES) >> 20
    );
    assert_eq!(incomplete, 0, "a read missed events");
    // Pages are cut by bytes: about two events each, not one page per read.
    assert!(
        pages >= (READERS * EVENTS / 2) as u64,
        "pages were not cut by bytes ({pages})"
    );
    // Each reader holds about one page in crablet (and a few chunks in the
    // client); unbounded pages would hold a whole read (12 MB) per reader,
    // twice (events and their encoding): about 600 MB for 24 readers.
    assert!(growth < 200 << 20, "RSS grew by {} MiB", growth >> 20);
}

async fn metric(app: &crate::helpers::TestApp, name: &str) -> u64 {
    let text = crate::helpers::metrics_text(&app.http, &app.address).await;
    crate::helpers::metric(&text, name, "") as u64
}
