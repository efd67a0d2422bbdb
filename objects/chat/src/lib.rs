//! `chat`: a chat room. `post(text)` is an update; `history(n)` and `count()` are
//! queries of the local replica. Sender and time come from the event, so every
//! replica shows the same history.

use liveobjects_guest::{EventContext, LiveObject};
use serde::{Deserialize, Serialize};

wit_bindgen::generate!({
    inline: r#"
        package liveobjects:chat@0.1.0;

        /// A chat room.
        interface chat {
            /// One posted message.
            record message {
                /// Member that posted it.
                sender: string,
                /// The sender's timestamp (ms since the Unix epoch).
                timestamp-ms: u64,
                /// Position in the room's history, from 1.
                index: u64,
                /// The text.
                text: string,
            }

            /// Post `text` to the room. Refused if empty or longer than 4096 bytes.
            post: func(text: string) -> result<_, string>;
            /// The last `n` messages at this replica, oldest first.
            history: func(n: u32) -> list<message>;
            /// Number of messages posted so far.
            count: func() -> u64;
        }

        world chat-object {
            export chat;
        }
    "#,
});

use exports::liveobjects::chat::chat::{Guest, Message};

/// Longest message accepted, in bytes.
const MAX_TEXT_BYTES: usize = 4096;
/// Messages kept; older ones are dropped so the state stays bounded.
const MAX_HISTORY: usize = 10_000;

#[derive(Serialize, Deserialize, Clone)]
struct Stored {
    sender: String,
    timestamp_ms: u64,
    index: u64,
    text: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Chat {
    messages: std::collections::VecDeque<Stored>,
    posted: u64,
}

#[derive(Serialize, Deserialize)]
enum Event {
    Post(String),
}

fn check_text(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("message is empty".into());
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(format!(
            "message is {} bytes, the limit is {MAX_TEXT_BYTES}",
            text.len()
        ));
    }
    Ok(())
}

impl LiveObject for Chat {
    type Event = Event;

    fn apply(&mut self, event: Event, ctx: &EventContext) -> Result<(), String> {
        let Event::Post(text) = event;
        // Re-checked here: a replica must not trust another replica's code to check.
        check_text(&text)?;
        self.posted += 1;
        liveobjects_guest::notify("message", &format!("{}: {}", ctx.sender, text));
        self.messages.push_back(Stored {
            sender: ctx.sender.clone(),
            timestamp_ms: ctx.timestamp_ms,
            index: self.posted,
            text,
        });
        if self.messages.len() > MAX_HISTORY {
            self.messages.pop_front();
        }
        Ok(())
    }
}

impl Guest for Chat {
    fn post(text: String) -> Result<(), String> {
        check_text(&text)?;
        Chat::emit(&Event::Post(text));
        Ok(())
    }

    fn history(n: u32) -> Vec<Message> {
        Chat::read(|c| {
            let skip = c.messages.len().saturating_sub(n as usize);
            c.messages
                .iter()
                .skip(skip)
                .map(|m| Message {
                    sender: m.sender.clone(),
                    timestamp_ms: m.timestamp_ms,
                    index: m.index,
                    text: m.text.clone(),
                })
                .collect()
        })
    }

    fn count() -> u64 {
        Chat::read(|c| c.posted)
    }
}

liveobjects_guest::export_object!(Chat);
export!(Chat);
