//! Paged reads: one bounded, index-driven query per page.
//!
//! Long reads are cut into pages by position, so no connection or
//! transaction is held while a slow client consumes a stream. Because
//! commits happen in position order (see [`super::append`]), a page that
//! starts after the last position of the previous one misses nothing.

use futures_util::TryStreamExt;
use serde::Serialize;
use tokio_postgres::types::{FromSql, ToSql, Type};

use super::{Connection, StoreError};
use crate::dcb::footprint;
use crate::dcb::{Page, Position, Query, SequencedEvent};

/// One probe as `read_probes_*.sql` reads it.
#[derive(Serialize)]
struct ReadProbe<'a> {
    k: i64,
    tags: &'a [String],
    types: &'a [String],
}

/// Reads one page: at most `page.limit` events, and no more once the events
/// read reach `max_bytes` (at least one event is always returned), so a page
/// of large events is cut short instead of held in memory whole. Rows are
/// decoded as they arrive; the rest of a cut page is discarded unread.
pub async fn read_page(
    conn: &Connection,
    query: &Query,
    page: &Page,
    max_bytes: usize,
) -> Result<Vec<SequencedEvent>, StoreError> {
    let st = &conn.statements;
    let (after, before, limit) = (&page.after, &page.before, &page.limit);
    let probes: Vec<ReadProbe> = footprint::probes(query)
        .into_iter()
        .filter_map(|p| {
            p.key.map(|k| ReadProbe {
                k,
                tags: p.tags,
                types: p.types,
            })
        })
        .collect();
    let probes_json = if probes.len() > 1 {
        serde_json::to_string(&probes).expect("probes serialize")
    } else {
        String::new()
    };
    let (statement, params): (_, Vec<&(dyn ToSql + Sync)>) = if query.is_all() {
        (st.read_all.pick(page.backwards), vec![after, before, limit])
    } else if let [probe] = probes.as_slice() {
        (
            st.read_key.pick(page.backwards),
            vec![&probe.k, after, before, &probe.tags, &probe.types, limit],
        )
    } else {
        (
            st.read_probes.pick(page.backwards),
            vec![&probes_json, after, before, limit],
        )
    };
    let rows = conn.client.query_raw(statement, params).await?;
    futures_util::pin_mut!(rows);
    let mut events = Vec::new();
    let mut bytes = 0;
    while let Some(row) = rows.try_next().await? {
        let event = decode(&row)?;
        bytes += event.approximate_size();
        events.push(event);
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(events)
}

/// Decodes an event from columns 0 to 6 (position, type, tags, data, id,
/// metadata, recorded_at); also used by [`super::project`].
pub(super) fn decode(row: &tokio_postgres::Row) -> Result<SequencedEvent, StoreError> {
    let position: Position = row.try_get(0)?;
    let text = |bytes: Vec<u8>| {
        String::from_utf8(bytes).map_err(|e| StoreError::Corrupt {
            position,
            reason: e.to_string(),
        })
    };
    let metadata: Option<Vec<u8>> = row.try_get(5)?;
    let recorded_at: RecordedAt = row.try_get(6)?;
    Ok(SequencedEvent {
        position,
        event_type: row.try_get(1)?,
        tags: row.try_get(2)?,
        data: text(row.try_get(3)?)?,
        id: row.try_get(4)?,
        metadata: metadata.map(text).transpose()?,
        recorded_at: recorded_at.rfc3339(),
    })
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
    /// Written digit by digit: every event of every read is formatted, and
    /// the formatting machinery cost several percent of a read's CPU.
    fn rfc3339(self) -> String {
        const MICROS_PER_DAY: i64 = 86_400_000_000;
        // Days from 1970-01-01 to 2000-01-01.
        const EPOCH_2000_DAYS: i64 = 10_957;
        let days = self.0.div_euclid(MICROS_PER_DAY) + EPOCH_2000_DAYS;
        let micros = self.0.rem_euclid(MICROS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let seconds = micros / 1_000_000;
        if !(0..=9999).contains(&year) {
            // Outside four-digit years (PostgreSQL allows them): the slow way.
            return format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
                seconds / 3600,
                seconds / 60 % 60,
                seconds % 60,
                micros % 1_000_000
            );
        }
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        put_digits(&mut text[0..4], year);
        put_digits(&mut text[5..7], month);
        put_digits(&mut text[8..10], day);
        put_digits(&mut text[11..13], seconds / 3600);
        put_digits(&mut text[14..16], seconds / 60 % 60);
        put_digits(&mut text[17..19], seconds % 60);
        put_digits(&mut text[20..26], micros % 1_000_000);
        String::from_utf8(text.to_vec()).unwrap_or_default()
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
    use super::RecordedAt;

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
