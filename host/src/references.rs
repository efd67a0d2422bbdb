//! Typed references between objects, checked by the host.
//!
//! An object (the shipped `doc` is one) may hold references to other objects: a
//! record `{ name: string, require: list<string> }` (WIT has no nominal types at
//! run time, so the host recognises the shape: exactly these two fields). The host
//! checks every reference a call's arguments carry before the call runs: `name`
//! must resolve to a verified record that meets `require`, with the error `lo join
//! --require` gives. A guest cannot do this itself (it sees no directory, and what
//! it does must be the same on every replica), and the page's own check could be
//! skipped by any other client, so the check sits on the one path every call
//! takes: [`Node::call_object`](crate::node::Node::call_object).

use crate::join::{Requirements, check_type};
use crate::node::NodeError;
use crate::runtime::{Method, ObjectInterface};
use liveobjects_directory::client::Resolver;
use wasmtime::component::{Type, Val};

/// Most references one call's arguments may carry: each costs a directory
/// lookup before the call runs, so a body full of them must not become a flood.
pub const MAX_REFERENCES_PER_CALL: usize = 64;

/// Most referenced objects one join of references joins (the `doc` object holds
/// at most 1,000 blocks).
pub const MAX_REFERENCES_JOINED: usize = 1000;

/// A typed reference: an object's name and the aspects required of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// The `lo://` name.
    pub name: String,
    /// Aspects, as `lo join --require` takes them (one per entry).
    pub require: Vec<String>,
}

impl ObjectRef {
    /// The requirements, parsed.
    pub fn requirements(&self) -> Result<Requirements, String> {
        self.require.join(",").parse()
    }
}

/// Whether `ty` is the reference shape.
fn is_reference_type(ty: &Type) -> bool {
    let Type::Record(record) = ty else {
        return false;
    };
    let fields: Vec<_> = record.fields().collect();
    matches!(fields.as_slice(),
        [name, require]
            if name.name == "name"
                && name.ty == Type::String
                && require.name == "require"
                && matches!(&require.ty, Type::List(l) if l.ty() == Type::String))
}

/// Whether a value of type `ty` can hold a reference.
pub fn may_hold_reference(ty: &Type) -> bool {
    if is_reference_type(ty) {
        return true;
    }
    match ty {
        Type::List(l) => may_hold_reference(&l.ty()),
        Type::Record(r) => r.fields().any(|f| may_hold_reference(&f.ty)),
        Type::Tuple(t) => t.types().any(|t| may_hold_reference(&t)),
        Type::Variant(v) => v
            .cases()
            .any(|c| c.ty.as_ref().is_some_and(may_hold_reference)),
        Type::Option(o) => may_hold_reference(&o.ty()),
        Type::Result(r) => {
            r.ok().as_ref().is_some_and(may_hold_reference)
                || r.err().as_ref().is_some_and(may_hold_reference)
        }
        _ => false,
    }
}

/// Every reference in `value`, in order.
pub fn references_in(value: &Val, out: &mut Vec<ObjectRef>) {
    match value {
        Val::Record(fields) => {
            if let [(n, Val::String(name)), (r, Val::List(require))] = fields.as_slice()
                && n == "name"
                && r == "require"
                && require.iter().all(|a| matches!(a, Val::String(_)))
            {
                out.push(ObjectRef {
                    name: name.clone(),
                    require: require
                        .iter()
                        .filter_map(|a| match a {
                            Val::String(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect(),
                });
                return;
            }
            for (_, field) in fields {
                references_in(field, out);
            }
        }
        Val::List(items) | Val::Tuple(items) => {
            for item in items {
                references_in(item, out);
            }
        }
        Val::Variant(_, Some(inner))
        | Val::Option(Some(inner))
        | Val::Result(Ok(Some(inner)))
        | Val::Result(Err(Some(inner))) => references_in(inner, out),
        _ => {}
    }
}

/// The references a WAVE value of type `ty` holds (none if it does not parse:
/// the call then fails on the argument itself).
pub fn references_in_wave(ty: &Type, wave: &str) -> Vec<ObjectRef> {
    let mut out = Vec::new();
    if may_hold_reference(ty)
        && let Ok(value) = wasmtime::component::wasm_wave::from_str::<Val>(ty, wave)
    {
        references_in(&value, &mut out);
    }
    out
}

/// Check one reference: it resolves to a verified record that meets its
/// requirements. `argument` says where it came from, for the error.
pub async fn check_reference(
    resolver: &Resolver,
    argument: usize,
    reference: &ObjectRef,
) -> Result<(), NodeError> {
    let refuse = |kind: &'static str, reason: String| NodeError::BadReference {
        argument,
        name: reference.name.clone(),
        reason,
        kind,
    };
    let require = reference
        .requirements()
        .map_err(|reason| refuse("bad-argument", reason))?;
    let verified = resolver
        .resolve(&reference.name)
        .await
        .map_err(|e| refuse("resolve-failed", e.to_string()))?;
    check_type(&verified.record, &require).map_err(|reason| refuse("type-mismatch", reason))
}

/// Check every reference the WAVE arguments of a call of `method` carry. A method
/// the interface lacks, or arguments that do not parse, pass here: the call itself
/// reports them.
pub async fn check_call(
    resolver: &Resolver,
    interface: &ObjectInterface,
    method: &str,
    args: &[&str],
) -> Result<(), NodeError> {
    let Ok(found) = interface.find(method) else {
        return Ok(());
    };
    let mut carried = Vec::new();
    for (argument, ((_, ty), wave)) in found.params.iter().zip(args).enumerate() {
        for reference in references_in_wave(ty, wave) {
            carried.push((argument, reference));
        }
    }
    if let Some((argument, reference)) = carried.get(MAX_REFERENCES_PER_CALL) {
        return Err(NodeError::BadReference {
            argument: *argument,
            name: reference.name.clone(),
            reason: format!(
                "a call may carry at most {MAX_REFERENCES_PER_CALL} references; this one \
                 carries {}",
                carried.len()
            ),
            kind: "bad-argument",
        });
    }
    for (argument, reference) in &carried {
        check_reference(resolver, *argument, reference).await?;
    }
    Ok(())
}

/// The method that lists an object's references: `references: func() ->
/// list<object-ref>` (the `doc` object's), if the interface has one.
pub fn references_method(interface: &ObjectInterface) -> Option<&Method> {
    let method = interface.find("references").ok()?;
    let [result] = method.results.as_slice() else {
        return None;
    };
    (method.params.is_empty() && matches!(result, Type::List(l) if is_reference_type(&l.ty())))
        .then_some(method)
}
