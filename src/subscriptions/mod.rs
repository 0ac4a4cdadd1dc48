//! Subscriptions: every event matching a query after a position, caught up
//! from the store and then followed live, without end.
//!
//! - [`tailer`]: [`Subscriptions`], the process's handle: admission (the
//!   `subscriptions.max_subscribers` places), shutdown, and the tailer, one
//!   task that reads each new page of the log once, through the
//!   [`crate::actors::EventStore`] facade, woken when the committed head
//!   advances ([`crate::head`]).
//! - [`fanout`]: the live feed's shards (one per HTTP worker thread), which
//!   offer each new event to the live subscribers whose query matches it,
//!   through a bounded buffer each; [`index`] files those subscribers by
//!   type and tag.
//! - [`stream`]: [`Subscription`], one subscriber's stream of
//!   [`Item`]s: events, heartbeats and an end with the position to resume
//!   after, moving between catching up and the live feed.
//!
//! The HTTP layer only frames those items as Server-Sent Events or NDJSON
//! (`crate::http::subscribe`); nothing here speaks HTTP or SQL.

pub mod fanout;
mod index;
pub mod stream;
pub mod tailer;

pub use fanout::SharedEvent;
pub use stream::{Events, Item, Subscription};
pub use tailer::{Slot, Subscriptions};
