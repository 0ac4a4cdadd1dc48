//! Paged reads: one bounded, index-driven query per page.
//!
//! Long reads are cut into pages by position, so no connection or
//! transaction is held while a slow client consumes a stream. Because
//! commits happen in position order (see [`super::append`]), a page that
//! starts after the last position of the previous one misses nothing.

use serde::Serialize;
use tokio_postgres::types::{FromSql, ToSql, Type};

use super::{Connection, Sql, StoreError};
use crate::dcb::footprint;
use crate::dcb::{Page, Position, Query, SequencedEvent};

/// One probe as `read_probes_*.sql` reads it.
#[derive(Serialize)]
struct ReadProbe<'a> {
    k: i64,
    tags: &'a [String],
    types: &'a [String],
    /// The keys it may be driven by, when it is not exact: the rarest is
    /// scanned.
    #[serde(skip_serializing_if = "Option::is_none")]
    ks: Option<Vec<i64>>,
}

/// Reads one page into `rows`: at most `page.limit` events, and no more once
/// the events read reach `max_bytes` (at least one event is always
/// returned), so a page of large events is cut short instead of held in
/// memory whole. Rows are taken as they arrive; the rest of a cut page is
/// discarded unread.
pub async fn read_page<R: PageRows>(
    conn: &Connection,
    query: &Query,
    page: &Page,
    max_bytes: usize,
) -> Result<R, StoreError> {
    let (after, before, limit) = (&page.after, &page.before, &page.limit);
    let probes: Vec<ReadProbe> = footprint::probes(query)
        .into_iter()
        .filter_map(|p| {
            p.key.map(|k| ReadProbe {
                k,
                tags: p.tags,
                types: p.types,
                ks: p.candidate_keys().filter(|keys| keys.len() > 1),
            })
        })
        .collect();
    let single = match probes.as_slice() {
        [probe] if probe.ks.is_none() => Some(probe),
        _ => None,
    };
    let probes_json = if single.is_none() {
        serde_json::to_string(&probes).expect("probes serialize")
    } else {
        String::new()
    };
    let (statement, params): (_, Vec<&(dyn ToSql + Sync)>) = if query.is_all() {
        (Sql::read_all(page.backwards), vec![after, before, limit])
    } else if let Some(probe) = single {
        (
            Sql::read_key(page.backwards),
            vec![&probe.k, after, before, &probe.tags, &probe.types, limit],
        )
    } else {
        (
            Sql::read_probes(page.backwards),
            vec![&probes_json, after, before, limit],
        )
    };
    let mut taken = R::default();
    let mut bytes = 0;
    let mut previous = None;
    conn.for_each_row(statement, &params, |row| {
        let event = EventRow::from_row(&row)?;
        // Readers of a page (subscriptions above all) move their cursor to
        // its last event: a row out of order must not be taken.
        if !page.admits(previous, event.position) {
            return Err(StoreError::Misordered {
                position: event.position,
                after: page.after,
                before: page.before,
                backwards: page.backwards,
            });
        }
        previous = Some(event.position);
        bytes += taken.push(event);
        Ok(bytes < max_bytes)
    })
    .await?;
    Ok(taken)
}

/// What a page read collects its events into: decoded events
/// (`Vec<SequencedEvent>`), or the JSON a read response sends
/// ([`JsonEvents`]), written straight from the rows.
pub trait PageRows: Default + Send + 'static {
    /// Takes one event; answers roughly the bytes it now holds for it (what
    /// cuts a page at `reader.page_max_bytes`).
    fn push(&mut self, event: EventRow<'_>) -> usize;
    /// How many events it holds.
    fn count(&self) -> usize;
    /// The sum of what [`PageRows::push`] answered.
    fn bytes(&self) -> usize;
    /// The positions of the first and the last event taken.
    fn first_position(&self) -> Option<Position>;
    fn last_position(&self) -> Option<Position>;
}

impl PageRows for Vec<SequencedEvent> {
    fn push(&mut self, event: EventRow<'_>) -> usize {
        let event = event.to_owned();
        let size = event.approximate_size();
        Vec::push(self, event);
        size
    }

    fn count(&self) -> usize {
        self.len()
    }

    fn bytes(&self) -> usize {
        self.iter().map(SequencedEvent::approximate_size).sum()
    }

    fn first_position(&self) -> Option<Position> {
        self.first().map(|e| e.position)
    }

    fn last_position(&self) -> Option<Position> {
        self.last().map(|e| e.position)
    }
}

/// A page as the JSON objects of a read response, separated by commas
/// (without the array's brackets). Written from the rows' bytes as they
/// arrive: no owned event is built, which is most of a read's CPU in
/// crablet at small pages.
#[derive(Default)]
pub struct JsonEvents {
    json: Vec<u8>,
    count: usize,
    first_position: Option<Position>,
    last_position: Option<Position>,
}

impl JsonEvents {
    /// The objects, comma-separated; empty when the page is.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// The page of `events`, serialized by serde (for tests of what joins
    /// pages).
    #[cfg(test)]
    pub(crate) fn of_events(events: &[SequencedEvent]) -> Self {
        let mut page = JsonEvents::default();
        for event in events {
            page.push_object(event.position, |out| {
                serde_json::to_writer(out, event).expect("events serialize");
            });
        }
        page
    }

    /// Appends one event's object, written by `write`, after a comma when it
    /// is not the first; answers the bytes added.
    fn push_object(&mut self, position: Position, write: impl FnOnce(&mut Vec<u8>)) -> usize {
        let start = self.json.len();
        if self.count > 0 {
            self.json.push(b',');
        }
        write(&mut self.json);
        self.count += 1;
        self.first_position.get_or_insert(position);
        self.last_position = Some(position);
        self.json.len() - start
    }
}

impl PageRows for JsonEvents {
    fn push(&mut self, event: EventRow<'_>) -> usize {
        self.push_object(event.position, |out| event.write_json(out))
    }

    fn count(&self) -> usize {
        self.count
    }

    fn bytes(&self) -> usize {
        self.json.len()
    }

    fn first_position(&self) -> Option<Position> {
        self.first_position
    }

    fn last_position(&self) -> Option<Position> {
        self.last_position
    }
}

/// One event as a row holds it (columns 0 to 6: position, type, tags, data,
/// id, metadata, recorded_at), borrowed from the row.
pub struct EventRow<'a> {
    position: Position,
    event_type: &'a str,
    tags: Vec<&'a str>,
    data: &'a str,
    id: Option<&'a str>,
    metadata: Option<&'a str>,
    recorded_at: RecordedAt,
}

impl<'a> EventRow<'a> {
    /// Borrows the event of a row; `data` and `metadata` (bytea) must be
    /// UTF-8, as every append made them.
    pub(super) fn from_row(row: &'a tokio_postgres::Row) -> Result<Self, StoreError> {
        let position: Position = row.try_get(0)?;
        let text = |bytes: &'a [u8]| {
            std::str::from_utf8(bytes).map_err(|e| StoreError::Corrupt {
                position,
                reason: e.to_string(),
            })
        };
        let metadata: Option<&[u8]> = row.try_get(5)?;
        Ok(EventRow {
            position,
            event_type: row.try_get(1)?,
            tags: row.try_get(2)?,
            data: text(row.try_get(3)?)?,
            id: row.try_get(4)?,
            metadata: metadata.map(text).transpose()?,
            recorded_at: row.try_get(6)?,
        })
    }

    pub fn to_owned(&self) -> SequencedEvent {
        SequencedEvent {
            position: self.position,
            event_type: self.event_type.to_owned(),
            tags: self.tags.iter().map(|t| (*t).to_owned()).collect(),
            data: self.data.to_owned(),
            id: self.id.map(str::to_owned),
            metadata: self.metadata.map(str::to_owned),
            recorded_at: self.recorded_at.rfc3339(),
        }
    }

    /// Writes the event as `SequencedEvent` serializes (same fields, same
    /// order, same escaping).
    fn write_json(&self, out: &mut Vec<u8>) {
        let string = |out: &mut Vec<u8>, text: &str| {
            serde_json::to_writer(&mut *out, text).expect("a string serializes");
        };
        out.extend_from_slice(b"{\"type\":");
        string(out, self.event_type);
        out.extend_from_slice(b",\"tags\":[");
        for (i, tag) in self.tags.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, tag);
        }
        out.extend_from_slice(b"],\"data\":");
        string(out, self.data);
        out.extend_from_slice(b",\"position\":");
        serde_json::to_writer(&mut *out, &self.position).expect("a number serializes");
        out.extend_from_slice(b",\"id\":");
        match self.id {
            Some(id) => string(out, id),
            None => out.extend_from_slice(b"null"),
        }
        if let Some(metadata) = self.metadata {
            out.extend_from_slice(b",\"metadata\":");
            string(out, metadata);
        }
        out.extend_from_slice(b",\"recordedAt\":\"");
        self.recorded_at.write_rfc3339(out);
        out.extend_from_slice(b"\"}");
    }
}

/// Decodes an owned event from columns 0 to 6 (see [`EventRow`]); used by
/// [`super::project`].
pub(super) fn decode(row: &tokio_postgres::Row) -> Result<SequencedEvent, StoreError> {
    Ok(EventRow::from_row(row)?.to_owned())
}

/// A `timestamptz` as PostgreSQL sends it in binary: microseconds since
/// 2000-01-01 00:00:00 UTC. Decoded here rather than through a date crate:
/// reads only ever format it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecordedAt(i64);

impl<'a> FromSql<'a> for RecordedAt {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let bytes: [u8; 8] = raw.try_into()?;
        Ok(RecordedAt(i64::from_be_bytes(bytes)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
}

impl RecordedAt {
    /// RFC 3339 in UTC with microseconds: `2026-11-29T01:02:03.456789Z`.
    fn rfc3339(self) -> String {
        let mut text = Vec::with_capacity(27);
        self.write_rfc3339(&mut text);
        String::from_utf8(text).unwrap_or_default()
    }

    /// Appends [`RecordedAt::rfc3339`]'s text. Written digit by digit: every
    /// event of every read is formatted, and the formatting machinery cost
    /// several percent of a read's CPU.
    fn write_rfc3339(self, out: &mut Vec<u8>) {
        const MICROS_PER_DAY: i64 = 86_400_000_000;
        // Days from 1970-01-01 to 2000-01-01.
        const EPOCH_2000_DAYS: i64 = 10_957;
        let days = self.0.div_euclid(MICROS_PER_DAY) + EPOCH_2000_DAYS;
        let micros = self.0.rem_euclid(MICROS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let seconds = micros / 1_000_000;
        if !(0..=9999).contains(&year) {
            // Outside four-digit years (PostgreSQL allows them): the slow way.
            let text = format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
                seconds / 3600,
                seconds / 60 % 60,
                seconds % 60,
                micros % 1_000_000
            );
            out.extend_from_slice(text.as_bytes());
            return;
        }
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        put_digits(&mut text[0..4], year);
        put_digits(&mut text[5..7], month);
        put_digits(&mut text[8..10], day);
        put_digits(&mut text[11..13], seconds / 3600);
        put_digits(&mut text[14..16], seconds / 60 % 60);
        put_digits(&mut text[17..19], seconds % 60);
        put_digits(&mut text[20..26], micros % 1_000_000);
        out.extend_from_slice(&text);
    }
}

/// Writes the lowest decimal digits of a non-negative `value` into `digits`,
/// zero-padded to its length.
fn put_digits(digits: &mut [u8], mut value: i64) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::{EventRow, JsonEvents, PageRows, RecordedAt};

    /// The JSON written from rows is byte for byte what serde writes for the
    /// decoded event, whatever the strings hold.
    #[test]
    fn events_written_from_rows_are_what_serde_writes() {
        let awkward = "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} \
                       slash / é 漢 😀 \u{2028}";
        let rows = [
            EventRow {
                position: 1,
                event_type: "Plain",
                tags: vec![],
                data: "{}",
                id: None,
                metadata: None,
                recorded_at: RecordedAt(0),
            },
            EventRow {
                position: i64::MAX,
                event_type: awkward,
                tags: vec![awkward, "k:v", ""],
                data: awkward,
                id: Some(awkward),
                metadata: Some(awkward),
                recorded_at: RecordedAt(-1),
            },
            EventRow {
                position: 42,
                event_type: "",
                tags: vec!["t"],
                data: "",
                id: Some(""),
                metadata: Some(""),
                recorded_at: RecordedAt(i64::MAX),
            },
        ];
        let mut page = JsonEvents::default();
        let mut bytes = 0;
        let mut expected = Vec::new();
        for row in rows {
            if !expected.is_empty() {
                expected.push(b',');
            }
            serde_json::to_writer(&mut expected, &row.to_owned()).unwrap();
            bytes += page.push(row);
        }
        assert_eq!(
            String::from_utf8_lossy(page.json()),
            String::from_utf8_lossy(&expected)
        );
        assert_eq!(page.json(), &expected[..]);
        assert_eq!((page.count(), page.bytes()), (3, bytes));
        assert_eq!(
            (page.first_position(), page.last_position()),
            (Some(1), Some(42))
        );
    }

    #[test]
    fn recorded_at_formats_as_rfc3339_utc_with_microseconds() {
        assert_eq!(RecordedAt(0).rfc3339(), "2000-01-01T00:00:00.000000Z");
        assert_eq!(RecordedAt(-1).rfc3339(), "1999-12-31T23:59:59.999999Z");
        // 2024-02-29T13:14:15.000016Z: a leap day, 8,825 days after 2000-01-01.
        let micros = ((8_825 * 86_400) + 13 * 3600 + 14 * 60 + 15) * 1_000_000 + 16;
        assert_eq!(RecordedAt(micros).rfc3339(), "2024-02-29T13:14:15.000016Z");
        // 2026-11-29T23:59:59.999999Z, the last microsecond of a day.
        let micros = (9_829 * 86_400 + 86_399) * 1_000_000 + 999_999;
        assert_eq!(RecordedAt(micros).rfc3339(), "2026-11-29T23:59:59.999999Z");
    }
}
