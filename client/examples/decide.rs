//! Deciding with crablet: a withdrawal is allowed only while the balance
//! covers it, however many clients withdraw at once.
//!
//! Two ways, both safe under concurrency:
//! - read, decide, append: `project` the balance, decide in the client,
//!   append with the condition the projection answered, and decide again if
//!   the condition failed (someone changed the balance meanwhile);
//! - one request: append with a requirement (`require`) on the balance, which
//!   the server checks under the same locks as the write.
//!
//! Run it against a server: `CRABLET_URL=http://127.0.0.1:8080 cargo run
//! -p crablet-client --example decide`.

use crablet_client::model::{CompareOp, NewEvent, Projector, Query, Reducer, Requirement};
use crablet_client::{Append, AppendOutcome, Client, Error};
use serde_json::json;

/// The balance of `account`: the sum of `amount` over its events.
pub fn balance(account: &str) -> Projector {
    Projector {
        id: Some("balance".into()),
        query: Query::tag(format!("account:{account}")),
        reduce: Reducer::Sum,
        path: Some("/amount".into()),
        limit: None,
        map: None,
    }
}

fn movement(event_type: &str, account: &str, amount: i64) -> NewEvent {
    NewEvent::new(event_type, json!({ "amount": amount }).to_string())
        .tag(format!("account:{account}"))
}

/// Puts `amount` on `account` (no decision needed).
pub async fn deposit(client: &Client, account: &str, amount: i64) -> Result<(), Error> {
    client
        .append(movement("Deposited", account, amount))
        .await?;
    Ok(())
}

/// Read, decide, append: withdraws `amount` if the balance covers it.
/// `Ok(false)`: it does not.
pub async fn withdraw(client: &Client, account: &str, amount: i64) -> Result<bool, Error> {
    loop {
        let projection = client.project(vec![balance(account)]).await?;
        let balance = projection.states["balance"].as_i64().unwrap_or(0);
        if balance < amount {
            return Ok(false);
        }
        let withdrawal =
            Append::new([movement("Withdrawn", account, -amount)]).condition(projection.condition);
        match client.append(withdrawal).await? {
            AppendOutcome::Appended { .. } => return Ok(true),
            // The balance changed since it was read: decide again.
            AppendOutcome::ConditionFailed => continue,
            AppendOutcome::RequirementFailed { .. } => unreachable!("no requirement"),
        }
    }
}

/// One request: withdraws `amount` if the balance covers it, decided by the
/// server. `Ok(false)`: it does not.
pub async fn withdraw_in_one_request(
    client: &Client,
    account: &str,
    amount: i64,
) -> Result<bool, Error> {
    let withdrawal = Append::new([movement("Withdrawn", account, -amount)]).require(Requirement {
        projector: balance(account),
        op: CompareOp::Ge,
        value: json!(amount),
    });
    Ok(client.append(withdrawal).await?.is_appended())
}

/// Deposits 100, then ten clients withdraw 20 at once, half of them each
/// way: exactly five succeed, and the balance ends at 0. Returns how many
/// withdrawals succeeded.
pub async fn run(url: &str, account: &str) -> Result<usize, Error> {
    let client = Client::new(url)?;
    deposit(&client, account, 100).await?;
    let withdrawals = (0..10u32).map(|i| {
        let client = client.clone();
        async move {
            if i.is_multiple_of(2) {
                withdraw(&client, account, 20).await
            } else {
                withdraw_in_one_request(&client, account, 20).await
            }
        }
    });
    let results = futures_util::future::join_all(withdrawals).await;
    let mut succeeded = 0;
    for result in results {
        if result? {
            succeeded += 1;
        }
    }
    let projection = client.project(vec![balance(account)]).await?;
    println!(
        "{succeeded} of 10 withdrawals of 20 from 100 succeeded; balance {}",
        projection.states["balance"]
    );
    Ok(succeeded)
}

#[allow(dead_code)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let url = std::env::var("CRABLET_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let account = format!("example-{}", std::process::id());
    run(&url, &account).await?;
    Ok(())
}
