//! Projections: the states of several projectors, computed by the database
//! in one statement (`crablet_project`, see `sql/migrations/008_project.sql`),
//! so every state and the head position come from one snapshot and no
//! matching event is shipped to crablet (but the one event of a `last`).
//! Each state is continued from the one this process remembers
//! ([`ProjectionStates`]) and remembered in turn, through the head it was
//! computed at.

use serde_json::Value;

use super::read::decode;
use super::states::ProjectionStates;
use super::{Connection, Sql, StoreError};
use crate::dcb::projection::{Projection, ProjectorSpec, State};
use crate::dcb::Position;

/// Computes every projector's state, in order, and the head they were
/// computed at.
pub async fn project(
    conn: &Connection,
    specs: &[ProjectorSpec],
    states: &ProjectionStates,
) -> Result<Projection, StoreError> {
    let argument = states.arguments(specs, None);
    let rows = conn.query(Sql::Project, &[&argument]).await?;
    let mut position: Position = 0;
    let mut projected = vec![State::Json(Value::Null); specs.len()];
    // Each state as the database wrote it, to be remembered exactly (a
    // `sum` keeps every digit); for `last`, the event's position.
    let mut texts: Vec<Option<String>> = vec![None; specs.len()];
    for row in rows {
        let projector: i32 = row.try_get(7)?;
        if projector < 0 {
            position = row.try_get(0)?;
            continue;
        }
        let Some(slot) = projected.get_mut(projector as usize) else {
            continue;
        };
        let state: Option<String> = row.try_get(8)?;
        *slot = match state {
            None => {
                let event = decode(&row)?;
                texts[projector as usize] = Some(event.position.to_string());
                State::Last(Some(event))
            }
            Some(text) => {
                let value: Value =
                    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                        position: 0,
                        reason: format!("projector state is not JSON: {e}"),
                    })?;
                texts[projector as usize] = Some(text);
                match specs[projector as usize].reducer {
                    crate::dcb::projection::Reducer::Last => State::Last(None),
                    _ => State::Json(value),
                }
            }
        };
    }
    for (spec, text) in specs.iter().zip(texts) {
        if let Some(text) = text {
            states.remember(spec, text, position);
        }
    }
    Ok(Projection {
        position,
        states: projected,
    })
}
