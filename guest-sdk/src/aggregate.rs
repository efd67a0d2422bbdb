//! Gossip aggregate objects: counts, averages, extremes over every live host.
//!
//! An aggregate object (world `aggregate-object` in
//! `wit/deps/object-0.1/object.wit`) has no event log. Each host contributes a partial state per epoch; the `gossip` driver merges
//! partial states pairwise with random peers until every host holds the aggregate of
//! all of them. Implement [`Aggregate`] for a serde type and export it with
//! [`export_aggregate!`](crate::export_aggregate):
//!
//! ```ignore
//! use liveobjects_guest::aggregate::Aggregate;
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Max(f64);
//! impl Aggregate for Max {
//!     fn contribute(input: f64, _seed: u64) -> Self { Max(input) }
//!     fn merge(a: Self, b: Self) -> Self { Max(a.0.max(b.0)) }
//!     fn estimate(&self) -> f64 { self.0 }
//! }
//! liveobjects_guest::export_aggregate!(Max);
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
pub mod __private {
    wit_bindgen::generate!({
        path: "../wit",
        world: "liveobjects:object/aggregate-object@0.1.0",
        pub_export_macro: true,
        export_macro_name: "export_aggregate_world",
        default_bindings_module: "liveobjects_guest::aggregate::__private",
    });
    pub use self::exports::liveobjects::object0_1_0::aggregate::Guest as AggregateGuest;
}

/// A partial aggregate that gossip can merge.
///
/// `merge` must be commutative, associative and idempotent: gossip delivers the
/// same contribution many times, by many paths, in any order.
pub trait Aggregate: Serialize + DeserializeOwned + 'static {
    /// This host's contribution for one epoch (`seed` is unique to host and epoch).
    fn contribute(input: f64, seed: u64) -> Self;
    /// Combine two partial aggregates.
    fn merge(a: Self, b: Self) -> Self;
    /// The value this partial aggregate stands for.
    fn estimate(&self) -> f64;
}

/// Spread a seed uniformly over all 64 bits (splitmix64's finaliser), for
/// sketches that need uniform hashes (a bottom-k census, a random sample) even if
/// the seeds they are given are not.
pub fn uniform_hash(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[doc(hidden)]
pub fn encode<T: Aggregate>(state: &T) -> Vec<u8> {
    postcard::to_allocvec(state).expect("postcard encoding to a Vec cannot fail")
}

#[doc(hidden)]
pub fn decode<T: Aggregate>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| {
        format!(
            "aggregate state of {} bytes does not decode: {e}",
            bytes.len()
        )
    })
}

/// Export a type that implements [`Aggregate`] as the component's `aggregate`
/// interface.
#[macro_export]
macro_rules! export_aggregate {
    ($ty:ty) => {
        const _: () = {
            struct AggregateExports;
            impl $crate::aggregate::__private::AggregateGuest for AggregateExports {
                fn contribute(input: f64, seed: u64) -> Vec<u8> {
                    $crate::aggregate::encode(&<$ty as $crate::aggregate::Aggregate>::contribute(
                        input, seed,
                    ))
                }
                fn merge(a: Vec<u8>, b: Vec<u8>) -> Result<Vec<u8>, String> {
                    let a = $crate::aggregate::decode::<$ty>(&a)?;
                    let b = $crate::aggregate::decode::<$ty>(&b)?;
                    Ok($crate::aggregate::encode(
                        &<$ty as $crate::aggregate::Aggregate>::merge(a, b),
                    ))
                }
                fn estimate(state: Vec<u8>) -> Result<f64, String> {
                    let state = $crate::aggregate::decode::<$ty>(&state)?;
                    Ok(<$ty as $crate::aggregate::Aggregate>::estimate(&state))
                }
            }
            $crate::aggregate::__private::export_aggregate_world!(
                AggregateExports with_types_in $crate::aggregate::__private
            );
        };
    };
}
