//! The objects of `objects/`, built as WebAssembly components by this crate's build
//! script (a nested `cargo build --target wasm32-wasip2`).
//!
//! Each constant is the path of a built component; shipped objects also come as
//! bytes (`*_BYTES`) so the `lo` binary can carry them for `lo demo`.

include!(concat!(env!("OUT_DIR"), "/objects.rs"));

/// The objects shipped with `lo` (name, component bytes).
pub const SHIPPED: &[(&str, &[u8])] = &[
    ("counter", COUNTER_BYTES),
    ("register", REGISTER_BYTES),
    ("chat", CHAT_BYTES),
    ("ticker", TICKER_BYTES),
    ("census", CENSUS_BYTES),
    ("average", AVERAGE_BYTES),
    ("max", MAX_BYTES),
    ("ledger", LEDGER_BYTES),
    ("cardtable", CARDTABLE_BYTES),
    ("doc", DOC_BYTES),
];

/// The bytes of the shipped object called `name`, if there is one.
pub fn shipped(name: &str) -> Option<&'static [u8]> {
    SHIPPED
        .iter()
        .find(|(shipped, _)| *shipped == name)
        .map(|(_, bytes)| *bytes)
}
