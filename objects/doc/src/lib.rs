//! `doc`: a live document. It holds a title and an ordered list of blocks, each
//! either text or a typed reference to another live object (its `lo://` name and the
//! aspects the document requires of it, e.g. `total-order`). The web page renders the
//! referenced objects live in place.
//!
//! The document itself cannot resolve names (a guest sees no directory, and what it
//! does must be the same on every replica), so it only checks that a reference is
//! well formed. The host checks the type: every call whose arguments carry an
//! `object-ref` (a record `{ name: string, require: list<string> }`) is refused
//! before it runs unless `name` resolves to a verified record that meets `require`,
//! with the same error `lo join --require` gives; and a node joining a document's
//! references joins each with its `require`.

use liveobjects_guest::{EventContext, LiveObject};
use serde::{Deserialize, Serialize};

wit_bindgen::generate!({
    inline: r#"
        package liveobjects:doc@0.1.0;

        /// A live document: text and typed references to other live objects.
        interface doc {
            /// A typed reference to another live object. The host resolves `name`
            /// and checks that its record meets `require` (aspects as `lo join
            /// --require` takes them: `total-order`, `encrypted`,
            /// `interface=NAME`, ...) before any call carrying one runs.
            record object-ref {
                /// The object's `lo://` name.
                name: string,
                /// Aspects the document requires of it.
                require: list<string>,
            }

            /// What a block holds.
            variant content {
                /// A paragraph of text.
                text(string),
                /// Another live object, shown live in place.
                embed(object-ref),
            }

            /// One block of the document.
            record block {
                /// Its id, stable while it exists (ids are never reused).
                id: u64,
                /// What it holds.
                content: content,
                /// Member that added it.
                author: string,
            }

            /// Set the title (at most 200 bytes).
            set-title: func(title: string) -> result<_, string>;
            /// Append a paragraph (at most 16384 bytes, not empty).
            add-text: func(text: string) -> result<_, string>;
            /// Replace the text of block `id`.
            edit-text: func(id: u64, text: string) -> result<_, string>;
            /// Append a reference to another object. Refused by the host if the
            /// object does not resolve or does not meet `reference.require`.
            embed: func(reference: object-ref) -> result<_, string>;
            /// Move block `id` to `position` (0 is first; past the end is last).
            move-block: func(id: u64, position: u32) -> result<_, string>;
            /// Remove block `id`.
            remove: func(id: u64) -> result<_, string>;
            /// The title.
            title: func() -> string;
            /// The blocks in order.
            blocks: func() -> list<block>;
            /// Every embedded reference, in order (what joining the document's
            /// references joins).
            references: func() -> list<object-ref>;
        }

        world doc-object {
            export doc;
        }
    "#,
});

use exports::liveobjects::doc::doc::{Block, Content, Guest, ObjectRef};

/// Longest title, in bytes.
const MAX_TITLE_BYTES: usize = 200;
/// Longest paragraph, in bytes.
const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Most blocks a document holds.
const MAX_BLOCKS: usize = 1000;
/// Longest object name, in bytes.
const MAX_NAME_BYTES: usize = 512;
/// Most aspects a reference requires, and the longest one.
const MAX_REQUIRE: usize = 8;
const MAX_ASPECT_BYTES: usize = 256;

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
struct Reference {
    name: String,
    require: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone)]
enum Stored {
    Text(String),
    Embed(Reference),
}

#[derive(Serialize, Deserialize, Clone)]
struct StoredBlock {
    id: u64,
    content: Stored,
    author: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Doc {
    title: String,
    blocks: Vec<StoredBlock>,
    next_id: u64,
}

#[derive(Serialize, Deserialize)]
enum Event {
    SetTitle(String),
    AddText(String),
    EditText(u64, String),
    Embed(Reference),
    Move(u64, u32),
    Remove(u64),
}

fn check_title(title: &str) -> Result<(), String> {
    if title.len() > MAX_TITLE_BYTES {
        return Err(format!(
            "the title is {} bytes, the limit is {MAX_TITLE_BYTES}",
            title.len()
        ));
    }
    Ok(())
}

fn check_text(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("the text is empty".into());
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(format!(
            "the text is {} bytes, the limit is {MAX_TEXT_BYTES}",
            text.len()
        ));
    }
    Ok(())
}

fn check_reference(r: &Reference) -> Result<(), String> {
    let Some(path) = r.name.strip_prefix("lo://") else {
        return Err(format!("`{}` is not a lo:// name", r.name));
    };
    if path.is_empty() || r.name.len() > MAX_NAME_BYTES || r.name.chars().any(char::is_whitespace) {
        return Err(format!("`{}` is not a valid object name", r.name));
    }
    if r.require.len() > MAX_REQUIRE {
        return Err(format!(
            "a reference requires at most {MAX_REQUIRE} aspects, not {}",
            r.require.len()
        ));
    }
    if let Some(a) = r
        .require
        .iter()
        .find(|a| a.is_empty() || a.len() > MAX_ASPECT_BYTES || a.contains(','))
    {
        return Err(format!("`{a}` is not an aspect"));
    }
    Ok(())
}

impl Doc {
    fn position(&self, id: u64) -> Result<usize, String> {
        self.blocks
            .iter()
            .position(|b| b.id == id)
            .ok_or_else(|| format!("the document has no block {id}"))
    }

    fn not_embedded(&self, name: &str) -> Result<(), String> {
        match self
            .blocks
            .iter()
            .find(|b| matches!(&b.content, Stored::Embed(r) if r.name == name))
        {
            Some(b) => Err(format!("{name} is embedded already (block {})", b.id)),
            None => Ok(()),
        }
    }

    fn push(&mut self, content: Stored, author: &str) -> Result<(), String> {
        if self.blocks.len() >= MAX_BLOCKS {
            return Err(format!("the document is full ({MAX_BLOCKS} blocks)"));
        }
        self.next_id += 1;
        self.blocks.push(StoredBlock {
            id: self.next_id,
            content,
            author: author.to_string(),
        });
        Ok(())
    }
}

impl LiveObject for Doc {
    type Event = Event;

    // Every check is repeated here: a replica must not trust another replica's code.
    fn apply(&mut self, event: Event, ctx: &EventContext) -> Result<(), String> {
        match event {
            Event::SetTitle(title) => {
                check_title(&title)?;
                self.title = title;
            }
            Event::AddText(text) => {
                check_text(&text)?;
                self.push(Stored::Text(text), &ctx.sender)?;
            }
            Event::EditText(id, text) => {
                check_text(&text)?;
                let at = self.position(id)?;
                match &mut self.blocks[at].content {
                    Stored::Text(old) => *old = text,
                    Stored::Embed(_) => return Err(format!("block {id} is not text")),
                }
            }
            Event::Embed(reference) => {
                check_reference(&reference)?;
                self.not_embedded(&reference.name)?;
                self.push(Stored::Embed(reference), &ctx.sender)?;
            }
            Event::Move(id, position) => {
                let at = self.position(id)?;
                let block = self.blocks.remove(at);
                let to = (position as usize).min(self.blocks.len());
                self.blocks.insert(to, block);
            }
            Event::Remove(id) => {
                let at = self.position(id)?;
                self.blocks.remove(at);
            }
        }
        liveobjects_guest::notify("changed", &ctx.sender);
        Ok(())
    }
}

fn to_wit(r: &Reference) -> ObjectRef {
    ObjectRef {
        name: r.name.clone(),
        require: r.require.clone(),
    }
}

impl Guest for Doc {
    fn set_title(title: String) -> Result<(), String> {
        check_title(&title)?;
        Doc::emit(&Event::SetTitle(title));
        Ok(())
    }

    fn add_text(text: String) -> Result<(), String> {
        check_text(&text)?;
        Doc::emit(&Event::AddText(text));
        Ok(())
    }

    fn edit_text(id: u64, text: String) -> Result<(), String> {
        check_text(&text)?;
        Doc::read(|d| d.position(id).map(|_| ()))?;
        Doc::emit(&Event::EditText(id, text));
        Ok(())
    }

    fn embed(reference: ObjectRef) -> Result<(), String> {
        let reference = Reference {
            name: reference.name,
            require: reference.require,
        };
        check_reference(&reference)?;
        Doc::read(|d| d.not_embedded(&reference.name))?;
        Doc::emit(&Event::Embed(reference));
        Ok(())
    }

    fn move_block(id: u64, position: u32) -> Result<(), String> {
        Doc::read(|d| d.position(id).map(|_| ()))?;
        Doc::emit(&Event::Move(id, position));
        Ok(())
    }

    fn remove(id: u64) -> Result<(), String> {
        Doc::read(|d| d.position(id).map(|_| ()))?;
        Doc::emit(&Event::Remove(id));
        Ok(())
    }

    fn title() -> String {
        Doc::read(|d| d.title.clone())
    }

    fn blocks() -> Vec<Block> {
        Doc::read(|d| {
            d.blocks
                .iter()
                .map(|b| Block {
                    id: b.id,
                    content: match &b.content {
                        Stored::Text(t) => Content::Text(t.clone()),
                        Stored::Embed(r) => Content::Embed(to_wit(r)),
                    },
                    author: b.author.clone(),
                })
                .collect()
        })
    }

    fn references() -> Vec<ObjectRef> {
        Doc::read(|d| {
            d.blocks
                .iter()
                .filter_map(|b| match &b.content {
                    Stored::Embed(r) => Some(to_wit(r)),
                    Stored::Text(_) => None,
                })
                .collect()
        })
    }
}

liveobjects_guest::export_object!(Doc);
export!(Doc);
