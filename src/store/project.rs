//! Projections: the states of several projectors, computed by the database
//! in one statement (`crablet_project`, see `sql/migrations/008_project.sql`),
//! so every state and the head position come from one snapshot and no
//! matching event is shipped to crablet (but the one event of a `last`).

use serde_json::Value;

use super::read::decode;
use super::{Connection, StoreError};
use crate::dcb::projection::{Projection, ProjectorSpec, State};
use crate::dcb::Position;

/// Computes every projector's state, in order, and the head they were
/// computed at.
pub async fn project(conn: &Connection, specs: &[ProjectorSpec]) -> Result<Projection, StoreError> {
    let argument = serde_json::to_string(specs).expect("projectors serialize");
    let rows = conn
        .client
        .query(&conn.statements.project, &[&argument])
        .await?;
    let mut position: Position = 0;
    let mut states = vec![State::Json(Value::Null); specs.len()];
    for row in rows {
        let projector: i32 = row.try_get(7)?;
        if projector < 0 {
            position = row.try_get(0)?;
            continue;
        }
        let Some(slot) = states.get_mut(projector as usize) else {
            continue;
        };
        let state: Option<String> = row.try_get(8)?;
        *slot = match state {
            None => State::Last(Some(decode(&row)?)),
            Some(text) => {
                let value: Value =
                    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                        position: 0,
                        reason: format!("projector state is not JSON: {e}"),
                    })?;
                match specs[projector as usize].reducer {
                    crate::dcb::projection::Reducer::Last => State::Last(None),
                    _ => State::Json(value),
                }
            }
        };
    }
    Ok(Projection { position, states })
}
