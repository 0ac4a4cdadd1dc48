//! A read model kept by a subscriber: each account's balance, updated from
//! the events as they come, caught up from the start of the log and then
//! followed live. The subscription reconnects and resumes on its own, so the
//! model sees every event once, in order.
//!
//! Run it against a server: `CRABLET_URL=http://127.0.0.1:8080 cargo run
//! -p crablet-client --example read_model`.

use std::collections::BTreeMap;

use crablet_client::model::{Position, Query, QueryItem};
use crablet_client::{Client, Error};
use futures_util::StreamExt;
use serde_json::Value;

/// Balances by account, and the last position folded in.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Balances {
    pub accounts: BTreeMap<String, i64>,
    pub position: Position,
}

impl Balances {
    fn apply(&mut self, tags: &[String], data: &str, position: Position) {
        let amount = serde_json::from_str::<Value>(data)
            .ok()
            .and_then(|d| d["amount"].as_i64())
            .unwrap_or(0);
        for account in tags.iter().filter_map(|t| t.strip_prefix("account:")) {
            *self.accounts.entry(account.to_owned()).or_default() += amount;
        }
        self.position = position;
    }
}

/// Deposits and withdrawals.
pub fn movements() -> Query {
    Query::of([QueryItem::types(["Deposited", "Withdrawn"])])
}

/// Follows the deposits and withdrawals of the log until the model holds
/// every one up to `until` (a position), and returns it. A service would
/// keep following instead of stopping.
pub async fn run(url: &str, until: Position) -> Result<Balances, Error> {
    let client = Client::new(url)?;
    let mut events = client.subscribe(movements()).after(0).stream();
    let mut model = Balances::default();
    while model.position < until {
        let Some(event) = events.next().await else {
            break;
        };
        let event = event?;
        model.apply(&event.tags, &event.data, event.position);
    }
    Ok(model)
}

#[allow(dead_code)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let url = std::env::var("CRABLET_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    // Catch up to the last movement stored now, then print the model.
    let client = Client::new(&url)?;
    let (last, _) = client
        .read(movements())
        .backwards()
        .limit(1)
        .collect()
        .await?;
    let until = last.first().map_or(0, |event| event.position);
    let model = run(&url, until).await?;
    for (account, balance) in &model.accounts {
        println!("{account}: {balance}");
    }
    Ok(())
}
