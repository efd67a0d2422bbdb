//! `ticker`: a stock ticker, the kind of object the `qsm` driver is for (many
//! senders, high rates, reliable FIFO per sender). `publish(symbol, price)` is an
//! update; `latest`, `symbols`, `count`, `count-from` and `digest` are queries.
//!
//! Its state does not depend on how different senders' quotes interleave, only on
//! each sender's own order, so replicas that received every sender's quotes in
//! that sender's order agree exactly, which is what reliable FIFO promises:
//! - the latest quote of a symbol is the one with the highest (timestamp, sender),
//!   not the last one applied;
//! - `digest` hashes, per sender, the chain of its quotes in its order.

use liveobjects_guest::{EventContext, LiveObject};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

wit_bindgen::generate!({
    inline: r#"
        package liveobjects:ticker@0.1.0;

        /// A stock ticker.
        interface ticker {
            /// A price quote.
            record quote {
                /// The symbol, e.g. ACME.
                symbol: string,
                /// The price in cents.
                price-cents: s64,
                /// Member that published it.
                sender: string,
                /// The sender's timestamp (ms since the Unix epoch).
                timestamp-ms: u64,
            }

            /// Publish a price for `symbol` (1 to 16 characters of A-Z, 0-9 and '.').
            publish: func(symbol: string, price-cents: s64) -> result<_, string>;
            /// The latest quote of `symbol` (highest timestamp, then sender), if any.
            latest: func(symbol: string) -> option<quote>;
            /// Symbols with a quote, in order.
            symbols: func() -> list<string>;
            /// Quotes applied so far.
            count: func() -> u64;
            /// Quotes applied from `sender`.
            count-from: func(sender: string) -> u64;
            /// A digest of every sender's quotes in that sender's order (hex).
            digest: func() -> string;
        }

        world ticker-object {
            export ticker;
        }
    "#,
});

use exports::liveobjects::ticker::ticker::{Guest, Quote};

/// Most symbols kept; quotes for new symbols beyond it are refused.
const MAX_SYMBOLS: usize = 10_000;

#[derive(Serialize, Deserialize, Clone)]
struct Stored {
    price_cents: i64,
    sender: String,
    timestamp_ms: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct Ticker {
    latest: BTreeMap<String, Stored>,
    count: u64,
    /// sender -> (quotes applied, hash chain of them).
    senders: BTreeMap<String, (u64, u64)>,
}

#[derive(Serialize, Deserialize)]
enum Event {
    Publish { symbol: String, price_cents: i64 },
}

fn check_symbol(symbol: &str) -> Result<(), String> {
    let ok = !symbol.is_empty()
        && symbol.len() <= 16
        && symbol
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{symbol}` is not a symbol: 1 to 16 characters of A-Z, 0-9 and '.'"
        ))
    }
}

/// FNV-1a, 64 bits: small and deterministic (no std hasher randomness).
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl LiveObject for Ticker {
    type Event = Event;

    fn apply(&mut self, event: Event, ctx: &EventContext) -> Result<(), String> {
        let Event::Publish {
            symbol,
            price_cents,
        } = event;
        check_symbol(&symbol)?;
        if !self.latest.contains_key(&symbol) && self.latest.len() >= MAX_SYMBOLS {
            return Err(format!("the ticker holds {MAX_SYMBOLS} symbols already"));
        }
        let quote = Stored {
            price_cents,
            sender: ctx.sender.clone(),
            timestamp_ms: ctx.timestamp_ms,
        };
        let newer = self.latest.get(&symbol).is_none_or(|old| {
            (quote.timestamp_ms, &quote.sender) > (old.timestamp_ms, &old.sender)
        });
        let entry = self
            .senders
            .entry(ctx.sender.clone())
            .or_insert((0, 0xcbf2_9ce4_8422_2325));
        entry.0 += 1;
        let mut h = fnv(entry.1, symbol.as_bytes());
        h = fnv(h, &price_cents.to_le_bytes());
        entry.1 = fnv(h, &ctx.timestamp_ms.to_le_bytes());
        self.count += 1;
        if newer {
            self.latest.insert(symbol, quote);
        }
        Ok(())
    }
}

impl Guest for Ticker {
    fn publish(symbol: String, price_cents: i64) -> Result<(), String> {
        check_symbol(&symbol)?;
        Ticker::emit(&Event::Publish {
            symbol,
            price_cents,
        });
        Ok(())
    }

    fn latest(symbol: String) -> Option<Quote> {
        Ticker::read(|t| {
            t.latest.get(&symbol).map(|q| Quote {
                symbol: symbol.clone(),
                price_cents: q.price_cents,
                sender: q.sender.clone(),
                timestamp_ms: q.timestamp_ms,
            })
        })
    }

    fn symbols() -> Vec<String> {
        Ticker::read(|t| t.latest.keys().cloned().collect())
    }

    fn count() -> u64 {
        Ticker::read(|t| t.count)
    }

    fn count_from(sender: String) -> u64 {
        Ticker::read(|t| t.senders.get(&sender).map(|s| s.0).unwrap_or(0))
    }

    fn digest() -> String {
        Ticker::read(|t| {
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for (sender, (count, chain)) in &t.senders {
                h = fnv(h, sender.as_bytes());
                h = fnv(h, &count.to_le_bytes());
                h = fnv(h, &chain.to_le_bytes());
            }
            format!("{h:016x}")
        })
    }
}

liveobjects_guest::export_object!(Ticker);
export!(Ticker);
