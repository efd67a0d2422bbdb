//! What an object offers: its imports and exports, and the methods of its natural
//! interface, with their WIT types (read from the component itself).

use super::{EVOLVE_INTERFACE, LIFECYCLE_INTERFACE, LIFECYCLE_INTERFACE_0_2};
use std::fmt::Write as _;
use wasmtime::Engine;
use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, ComponentExportIndex, Type};

/// One method of an object's natural interface.
#[derive(Clone)]
pub struct Method {
    /// The exported interface it belongs to (`None` for a world-level function).
    pub interface: Option<String>,
    /// The function's name (kebab-case, as in WIT).
    pub name: String,
    /// Parameter names and types.
    pub params: Vec<(String, Type)>,
    /// Result types (zero or one in current WIT).
    pub results: Vec<Type>,
    pub(crate) index: ComponentExportIndex,
}

impl Method {
    /// The WIT signature, e.g. `add: func(n: s64)`.
    pub fn signature(&self) -> String {
        let mut s = format!("{}: func(", self.name);
        for (i, (name, ty)) in self.params.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "{name}: {}", type_name(ty));
        }
        s.push(')');
        if let Some(result) = self.results.first() {
            let _ = write!(s, " -> {}", type_name(result));
        }
        s
    }
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.signature())
    }
}

/// The shape of a component as the host sees it.
#[derive(Debug, Clone, Default)]
pub struct ObjectInterface {
    /// Names of everything the component imports.
    pub imports: Vec<String>,
    /// Names of everything the component exports.
    pub exports: Vec<String>,
    /// The liveobjects lifecycle it exports ([`LIFECYCLE_INTERFACE_0_2`] if it
    /// exports both), if any.
    pub lifecycle: Option<&'static str>,
    /// Methods of its natural interface (every exported function outside the lifecycle).
    pub methods: Vec<Method>,
    /// Where its `migrate` is, if it exports 0.3's [`EVOLVE_INTERFACE`].
    pub(crate) migrate: Option<ComponentExportIndex>,
    /// Whether it exports [`EVOLVE_INTERFACE`] without a `migrate` of 0.3's type
    /// (such logic is refused at load).
    pub(crate) malformed_evolve: bool,
}

/// Whether `item` is `func(from-version: u64, snapshot: list<u8>) -> result<list<u8>, string>`.
fn is_migrate(item: &ComponentItem) -> bool {
    let ComponentItem::ComponentFunc(func) = item else {
        return false;
    };
    let bytes = |ty: &Type| matches!(ty, Type::List(list) if list.ty() == Type::U8);
    let params: Vec<Type> = func.params().map(|(_, ty)| ty).collect();
    let results: Vec<Type> = func.results().collect();
    matches!(params.as_slice(), [Type::U64, snapshot] if bytes(snapshot))
        && matches!(results.as_slice(), [Type::Result(result)]
            if result.ok().as_ref().is_some_and(bytes) && result.err() == Some(Type::String))
}

impl ObjectInterface {
    /// Whether it exports 0.3's `migrate` (a live upgrade to it runs it).
    pub fn migrates(&self) -> bool {
        self.migrate.is_some()
    }

    /// The world it implements: `liveobjects:object/object@0.3.0` if it exports
    /// `evolve`, else that of its lifecycle's version.
    pub fn world(&self) -> &'static str {
        if self.migrates() {
            "liveobjects:object/object@0.3.0"
        } else if self.lifecycle == Some(LIFECYCLE_INTERFACE_0_2) {
            "liveobjects:object/object@0.2.0"
        } else {
            "liveobjects:object/object@0.1.0"
        }
    }

    pub(crate) fn of(engine: &Engine, component: &Component) -> Self {
        let ty = component.component_type();
        let mut interface = ObjectInterface {
            imports: ty
                .imports(engine)
                .map(|(name, _)| name.to_string())
                .collect(),
            ..Default::default()
        };
        for (export_name, item) in ty.exports(engine) {
            interface.exports.push(export_name.to_string());
            if export_name == LIFECYCLE_INTERFACE_0_2 {
                interface.lifecycle = Some(LIFECYCLE_INTERFACE_0_2);
                continue;
            }
            if export_name == LIFECYCLE_INTERFACE {
                interface.lifecycle.get_or_insert(LIFECYCLE_INTERFACE);
                continue;
            }
            if export_name == EVOLVE_INTERFACE {
                let well_typed = match &item.ty {
                    ComponentItem::ComponentInstance(instance) => instance
                        .exports(engine)
                        .any(|(name, item)| name == "migrate" && is_migrate(&item.ty)),
                    _ => false,
                };
                interface.migrate = component
                    .get_export_index(None, export_name)
                    .and_then(|instance| component.get_export_index(Some(&instance), "migrate"));
                if !well_typed {
                    interface.migrate = None;
                    interface.malformed_evolve = true;
                }
                continue;
            }
            match item.ty {
                ComponentItem::ComponentFunc(func) => {
                    if let Some(index) = component.get_export_index(None, export_name) {
                        interface
                            .methods
                            .push(method(None, export_name, &func, index));
                    }
                }
                // Only package-qualified interfaces (`ns:pkg/iface`) form the natural
                // interface; toolchains export plain-named helper instances too
                // (componentize-py's build-time `exports.init`), which must not be
                // callable.
                ComponentItem::ComponentInstance(instance) if export_name.contains(':') => {
                    let Some(instance_index) = component.get_export_index(None, export_name) else {
                        continue;
                    };
                    for (func_name, func_item) in instance.exports(engine) {
                        if let ComponentItem::ComponentFunc(func) = func_item.ty
                            && let Some(index) =
                                component.get_export_index(Some(&instance_index), func_name)
                        {
                            interface.methods.push(method(
                                Some(export_name),
                                func_name,
                                &func,
                                index,
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        interface
    }

    /// Find a method by name: `post`, or `iface.post` / `pkg:ns/iface@v.post` when
    /// two exported interfaces share a function name.
    pub fn find(&self, name: &str) -> Result<&Method, MethodLookupError> {
        let matches: Vec<&Method> = self
            .methods
            .iter()
            .filter(|m| m.name == name || qualified_names(m).iter().any(|q| q == name))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(MethodLookupError::NotFound),
            many => Err(MethodLookupError::Ambiguous(
                many.iter().map(|m| qualified_names(m)[0].clone()).collect(),
            )),
        }
    }

    /// What a move from this interface to `newer` breaks: each method of this one
    /// that `newer` lacks or gives another signature (compared by interface name
    /// without its version, method name and WIT signature as `lo inspect` prints
    /// it). Empty if `newer` only adds methods.
    pub fn breaking_changes(&self, newer: &ObjectInterface) -> Vec<String> {
        let key = |m: &Method| {
            let interface = m
                .interface
                .as_deref()
                .map(|i| i.split('@').next().unwrap_or(i).to_string());
            (interface, m.name.clone())
        };
        self.methods
            .iter()
            .filter_map(
                |old| match newer.methods.iter().find(|new| key(new) == key(old)) {
                    None => Some(format!("removes `{}`", old.signature())),
                    Some(new) if new.signature() != old.signature() => Some(format!(
                        "changes `{}` to `{}`",
                        old.signature(),
                        new.signature()
                    )),
                    Some(_) => None,
                },
            )
            .collect()
    }

    /// Method names as a user types them, for error messages.
    pub fn method_names(&self) -> Vec<String> {
        self.methods.iter().map(|m| m.name.clone()).collect()
    }
}

fn qualified_names(m: &Method) -> Vec<String> {
    let Some(iface) = &m.interface else {
        return vec![m.name.clone()];
    };
    // `liveobjects:chat/chat@0.1.0` -> also `chat`.
    let short = iface
        .rsplit('/')
        .next()
        .unwrap_or(iface)
        .split('@')
        .next()
        .unwrap_or(iface);
    vec![format!("{iface}.{}", m.name), format!("{short}.{}", m.name)]
}

/// Why a method name did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodLookupError {
    /// No exported function has that name.
    NotFound,
    /// Several interfaces export a function with that name; these qualified names work.
    Ambiguous(Vec<String>),
}

fn method(
    interface: Option<&str>,
    name: &str,
    func: &ComponentFunc,
    index: ComponentExportIndex,
) -> Method {
    Method {
        interface: interface.map(str::to_string),
        name: name.to_string(),
        params: func.params().map(|(n, t)| (n.to_string(), t)).collect(),
        results: func.results().collect(),
        index,
    }
}

/// A WIT-like rendering of a component value type, e.g. `list<message>` or
/// `record { sender: string, text: string }`.
pub fn type_name(ty: &Type) -> String {
    match ty {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(l) => format!("list<{}>", type_name(&l.ty())),
        Type::Record(r) => {
            let fields: Vec<String> = r
                .fields()
                .map(|f| format!("{}: {}", f.name, type_name(&f.ty)))
                .collect();
            format!("record {{ {} }}", fields.join(", "))
        }
        Type::Tuple(t) => {
            let types: Vec<String> = t.types().map(|t| type_name(&t)).collect();
            format!("tuple<{}>", types.join(", "))
        }
        Type::Variant(v) => {
            let cases: Vec<String> = v
                .cases()
                .map(|c| match c.ty {
                    Some(t) => format!("{}({})", c.name, type_name(&t)),
                    None => c.name.to_string(),
                })
                .collect();
            format!("variant {{ {} }}", cases.join(", "))
        }
        Type::Enum(e) => {
            let names: Vec<&str> = e.names().collect();
            format!("enum {{ {} }}", names.join(", "))
        }
        Type::Option(o) => format!("option<{}>", type_name(&o.ty())),
        Type::Result(r) => match (r.ok(), r.err()) {
            (None, None) => "result".into(),
            (Some(ok), None) => format!("result<{}>", type_name(&ok)),
            (None, Some(err)) => format!("result<_, {}>", type_name(&err)),
            (Some(ok), Some(err)) => format!("result<{}, {}>", type_name(&ok), type_name(&err)),
        },
        Type::Flags(f) => {
            let names: Vec<&str> = f.names().collect();
            format!("flags {{ {} }}", names.join(", "))
        }
        Type::Own(_) => "own<resource>".into(),
        Type::Borrow(_) => "borrow<resource>".into(),
        other => format!("{other:?}"),
    }
}
