//! WIT values as JSON, both ways, and a JSON Schema for every WIT type: what the
//! HTTP API speaks, and what `--json` prints. Generic over wasm-wave's
//! [`WasmValue`]/[`WasmType`] traits, so the same code converts wasmtime's values
//! at run time and wasm-wave's own values in the property tests, which check that
//! a JSON call and a WAVE call of the same value give the same value.
//!
//! The mapping (also in `docs/http.md`):
//!
//! | WIT | JSON |
//! |---|---|
//! | `bool` | `true` / `false` |
//! | `s8` … `s32`, `u8` … `u32` | number |
//! | `s64`, `u64` | string of decimal digits, `"-12"`; on input a JSON number is also taken if it is an integer within ±(2^53−1) |
//! | `f32`, `f64` | number; NaN and infinities as `"NaN"`, `"Infinity"`, `"-Infinity"` |
//! | `char` | a string of one character |
//! | `string` | string |
//! | `list<T>` | array |
//! | `record` | object keyed by field name (as in WIT); an `option` field may be left out (none); unknown fields are refused |
//! | `tuple<…>` | array of that length |
//! | `variant` | `{"case": payload}`, `{"case": null}` for a case without payload (on input `"case"` also) |
//! | `enum` | `"case"` |
//! | `option<T>` | `null` for none, the value for some; when `T` is itself an option, `{"some": value}` |
//! | `result<T, E>` | `{"ok": value}` or `{"err": value}` (`null` for a side without type) |
//! | `flags` | array of the names that are set |
//!
//! Why 64-bit integers are strings: JavaScript, and most JSON parsers, hold numbers
//! as doubles, exact only up to 2^53; a larger number may have changed before we
//! see it. Strings carry every value exactly (Protocol Buffers' JSON mapping does
//! the same). A number beyond 2^53 is refused, not guessed at.

use serde_json::{Map, Value as Json, json};
use std::borrow::Cow;
use wasmtime::component::wasm_wave::wasm::{WasmType, WasmTypeKind, WasmValue, WasmValueError};

/// The largest integer every JSON parser holds exactly (2^53 − 1).
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Why a JSON value is not a value of the expected WIT type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("at {path}: ") })]
pub struct JsonValueError {
    /// Where in the value: `.items[2].name` (empty: the value itself).
    pub path: String,
    /// What is wrong, and what was expected.
    pub message: String,
}

impl JsonValueError {
    fn new(message: impl Into<String>) -> Self {
        JsonValueError {
            path: String::new(),
            message: message.into(),
        }
    }

    fn within(mut self, segment: &str) -> Self {
        self.path.insert_str(0, segment);
        self
    }
}

fn describe(json: &Json) -> String {
    let text = json.to_string();
    let what = match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    };
    if text.len() > 40 {
        what.to_string()
    } else {
        format!("{what} ({text})")
    }
}

fn expected(what: &str, json: &Json) -> JsonValueError {
    JsonValueError::new(format!("expected {what}, got {}", describe(json)))
}

fn built<V>(made: Result<V, WasmValueError>) -> Result<V, JsonValueError> {
    made.map_err(|e| JsonValueError::new(format!("{e:?}")))
}

/// A WIT value as JSON. Fails only for values JSON cannot carry (resources).
pub fn to_json<V: WasmValue>(value: &V) -> Result<Json, JsonValueError> {
    Ok(match value.kind() {
        WasmTypeKind::Bool => Json::Bool(value.unwrap_bool()),
        WasmTypeKind::S8 => value.unwrap_s8().into(),
        WasmTypeKind::S16 => value.unwrap_s16().into(),
        WasmTypeKind::S32 => value.unwrap_s32().into(),
        WasmTypeKind::U8 => value.unwrap_u8().into(),
        WasmTypeKind::U16 => value.unwrap_u16().into(),
        WasmTypeKind::U32 => value.unwrap_u32().into(),
        WasmTypeKind::S64 => Json::String(value.unwrap_s64().to_string()),
        WasmTypeKind::U64 => Json::String(value.unwrap_u64().to_string()),
        // An f32 goes out as its shortest decimal form (0.1, not 0.10000000149…):
        // read back as f64 and narrowed, it is the same f32.
        WasmTypeKind::F32 => float(value.unwrap_f32(), |x| x.to_string().parse().ok()),
        WasmTypeKind::F64 => float(value.unwrap_f64(), Some),
        WasmTypeKind::Char => Json::String(value.unwrap_char().to_string()),
        WasmTypeKind::String => Json::String(value.unwrap_string().into_owned()),
        WasmTypeKind::List | WasmTypeKind::FixedLengthList => Json::Array(
            value
                .unwrap_list()
                .map(|v| to_json(v.as_ref()))
                .collect::<Result<_, _>>()?,
        ),
        WasmTypeKind::Tuple => Json::Array(
            value
                .unwrap_tuple()
                .map(|v| to_json(v.as_ref()))
                .collect::<Result<_, _>>()?,
        ),
        WasmTypeKind::Record => Json::Object(
            value
                .unwrap_record()
                .map(|(name, v)| Ok((name.into_owned(), to_json(v.as_ref())?)))
                .collect::<Result<Map<_, _>, JsonValueError>>()?,
        ),
        WasmTypeKind::Variant => {
            let (case, payload) = value.unwrap_variant();
            let payload = match payload {
                Some(v) => to_json(v.as_ref())?,
                None => Json::Null,
            };
            json!({ case.into_owned(): payload })
        }
        WasmTypeKind::Enum => Json::String(value.unwrap_enum().into_owned()),
        WasmTypeKind::Option => match value.unwrap_option() {
            None => Json::Null,
            Some(inner) if inner.kind() == WasmTypeKind::Option => {
                json!({ "some": to_json(inner.as_ref())? })
            }
            Some(inner) => to_json(inner.as_ref())?,
        },
        WasmTypeKind::Result => {
            let side = |v: Option<Cow<'_, V>>| match v {
                Some(v) => to_json(v.as_ref()),
                None => Ok(Json::Null),
            };
            match value.unwrap_result() {
                Ok(v) => json!({ "ok": side(v)? }),
                Err(v) => json!({ "err": side(v)? }),
            }
        }
        WasmTypeKind::Flags => Json::Array(
            value
                .unwrap_flags()
                .map(|f| Json::String(f.into_owned()))
                .collect(),
        ),
        other => {
            return Err(JsonValueError::new(format!(
                "a {other} value has no JSON form"
            )));
        }
    })
}

fn float<F: Copy + Into<f64> + PartialEq>(x: F, shortest: impl Fn(F) -> Option<f64>) -> Json {
    let wide: f64 = x.into();
    if wide.is_nan() {
        Json::String("NaN".into())
    } else if wide.is_infinite() {
        Json::String(if wide > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        serde_json::Number::from_f64(shortest(x).unwrap_or(wide))
            .map(Json::Number)
            .unwrap_or(Json::Null)
    }
}

fn json_float(json: &Json, what: &str) -> Result<f64, JsonValueError> {
    match json {
        Json::Number(n) => n.as_f64().ok_or_else(|| expected(what, json)),
        Json::String(s) if s == "NaN" => Ok(f64::NAN),
        Json::String(s) if s == "Infinity" => Ok(f64::INFINITY),
        Json::String(s) if s == "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => Err(expected(
            &format!("{what} (a number, or \"NaN\", \"Infinity\", \"-Infinity\")"),
            json,
        )),
    }
}

/// A 32-bit-or-smaller integer: a JSON number that is an integer in range.
fn small_int<T: TryFrom<i64>>(json: &Json, what: &str) -> Result<T, JsonValueError> {
    let n = match json {
        Json::Number(n) => n.as_i64().or_else(|| n.as_u64().map(|_| i64::MAX)),
        _ => None,
    }
    .ok_or_else(|| expected(&format!("{what} (an integer)"), json))?;
    T::try_from(n).map_err(|_| JsonValueError::new(format!("{n} is out of range for {what}")))
}

/// A 64-bit integer: a string of decimal digits, or a JSON number within 2^53.
fn big_int<T: std::str::FromStr + TryFrom<i64>>(
    json: &Json,
    what: &str,
) -> Result<T, JsonValueError> {
    match json {
        Json::String(s) => {
            let digits = s.strip_prefix('-').unwrap_or(s);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(JsonValueError::new(format!(
                    "{s:?} is not a {what}: expected decimal digits, like \"-42\""
                )));
            }
            s.parse()
                .map_err(|_| JsonValueError::new(format!("{s} is out of range for {what}")))
        }
        Json::Number(n) => {
            let exact = n
                .as_i64()
                .filter(|v| (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(v));
            let Some(v) = exact else {
                return Err(JsonValueError::new(format!(
                    "{n} as a JSON number may have lost precision (beyond 2^53, or not an \
                     integer): send a {what} as a string of digits, like \"{n}\""
                )));
            };
            T::try_from(v)
                .map_err(|_| JsonValueError::new(format!("{v} is out of range for {what}")))
        }
        _ => Err(expected(&format!("{what} (a string of digits)"), json)),
    }
}

/// The JSON `json` as a value of WIT type `ty`.
pub fn from_json<V: WasmValue>(ty: &V::Type, json: &Json) -> Result<V, JsonValueError> {
    let kind = ty.kind();
    Ok(match kind {
        WasmTypeKind::Bool => {
            V::make_bool(json.as_bool().ok_or_else(|| expected("a boolean", json))?)
        }
        WasmTypeKind::S8 => V::make_s8(small_int(json, "s8")?),
        WasmTypeKind::S16 => V::make_s16(small_int(json, "s16")?),
        WasmTypeKind::S32 => V::make_s32(small_int(json, "s32")?),
        WasmTypeKind::U8 => V::make_u8(small_int(json, "u8")?),
        WasmTypeKind::U16 => V::make_u16(small_int(json, "u16")?),
        WasmTypeKind::U32 => V::make_u32(small_int(json, "u32")?),
        WasmTypeKind::S64 => V::make_s64(big_int(json, "s64")?),
        WasmTypeKind::U64 => V::make_u64(big_int(json, "u64")?),
        WasmTypeKind::F32 => {
            let x = json_float(json, "f32")?;
            let narrow = x as f32;
            if x.is_finite() && narrow.is_infinite() {
                return Err(JsonValueError::new(format!("{x} is out of range for f32")));
            }
            V::make_f32(narrow)
        }
        WasmTypeKind::F64 => V::make_f64(json_float(json, "f64")?),
        WasmTypeKind::Char => {
            let s = json
                .as_str()
                .ok_or_else(|| expected("a char (a string of one character)", json))?;
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => V::make_char(c),
                _ => return Err(expected("a char (a string of one character)", json)),
            }
        }
        WasmTypeKind::String => V::make_string(Cow::Borrowed(
            json.as_str().ok_or_else(|| expected("a string", json))?,
        )),
        WasmTypeKind::List | WasmTypeKind::FixedLengthList => {
            let items = json.as_array().ok_or_else(|| expected("an array", json))?;
            let element = ty
                .list_element_type()
                .ok_or_else(|| JsonValueError::new("a list type without element type"))?;
            let values = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    from_json::<V>(&element, item).map_err(|e| e.within(&format!("[{i}]")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            built(V::make_list(ty, values))?
        }
        WasmTypeKind::Tuple => {
            let items = json
                .as_array()
                .ok_or_else(|| expected("an array (a tuple)", json))?;
            let types: Vec<V::Type> = ty.tuple_element_types().collect();
            if items.len() != types.len() {
                return Err(JsonValueError::new(format!(
                    "expected a tuple of {} values, got {}",
                    types.len(),
                    items.len()
                )));
            }
            let values = types
                .iter()
                .zip(items)
                .enumerate()
                .map(|(i, (t, item))| {
                    from_json::<V>(t, item).map_err(|e| e.within(&format!("[{i}]")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            built(V::make_tuple(ty, values))?
        }
        WasmTypeKind::Record => {
            let object = json
                .as_object()
                .ok_or_else(|| expected("an object (a record)", json))?;
            let fields: Vec<(Cow<'_, str>, V::Type)> = ty.record_fields().collect();
            if let Some(unknown) = object.keys().find(|k| !fields.iter().any(|(f, _)| f == *k)) {
                let names: Vec<&str> = fields.iter().map(|(f, _)| f.as_ref()).collect();
                return Err(JsonValueError::new(format!(
                    "unknown field {unknown:?} (the record has {})",
                    names.join(", ")
                )));
            }
            let mut values = Vec::with_capacity(fields.len());
            for (name, field_ty) in &fields {
                let value = match object.get(name.as_ref()) {
                    Some(field) => from_json::<V>(field_ty, field)
                        .map_err(|e| e.within(&format!(".{name}")))?,
                    None if field_ty.kind() == WasmTypeKind::Option => {
                        built(V::make_option(field_ty, None))?
                    }
                    None => return Err(JsonValueError::new(format!("missing field {name:?}"))),
                };
                values.push((name.as_ref(), value));
            }
            built(V::make_record(ty, values))?
        }
        WasmTypeKind::Variant => {
            let cases: Vec<(Cow<'_, str>, Option<V::Type>)> = ty.variant_cases().collect();
            let names = || {
                cases
                    .iter()
                    .map(|(c, _)| c.as_ref())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (case, payload) = match json {
                Json::String(case) => (case.as_str(), None),
                Json::Object(o) if o.len() == 1 => {
                    let (case, payload) = o.iter().next().expect("one entry");
                    (case.as_str(), Some(payload))
                }
                _ => {
                    return Err(expected(
                        &format!("a variant: {{\"case\": payload}} with one of {}", names()),
                        json,
                    ));
                }
            };
            let Some((_, payload_ty)) = cases.iter().find(|(c, _)| c == case) else {
                return Err(JsonValueError::new(format!(
                    "unknown case {case:?} (cases: {})",
                    names()
                )));
            };
            let value = match (payload_ty, payload) {
                (None, None | Some(Json::Null)) => None,
                (None, Some(other)) => {
                    return Err(JsonValueError::new(format!(
                        "case {case:?} has no payload, got {}",
                        describe(other)
                    )));
                }
                (Some(_), None) => {
                    return Err(JsonValueError::new(format!(
                        "case {case:?} has a payload: write {{\"{case}\": value}}"
                    )));
                }
                (Some(t), Some(p)) => {
                    Some(from_json::<V>(t, p).map_err(|e| e.within(&format!(".{case}")))?)
                }
            };
            built(V::make_variant(ty, case, value))?
        }
        WasmTypeKind::Enum => {
            let case = json
                .as_str()
                .ok_or_else(|| expected("an enum case (a string)", json))?;
            let cases: Vec<Cow<'_, str>> = ty.enum_cases().collect();
            if !cases.iter().any(|c| c == case) {
                return Err(JsonValueError::new(format!(
                    "unknown case {case:?} (cases: {})",
                    cases.join(", ")
                )));
            }
            built(V::make_enum(ty, case))?
        }
        WasmTypeKind::Option => {
            let some = ty
                .option_some_type()
                .ok_or_else(|| JsonValueError::new("an option type without payload type"))?;
            let value = match json {
                Json::Null => None,
                _ if some.kind() == WasmTypeKind::Option => {
                    let inner = json
                        .as_object()
                        .filter(|o| o.len() == 1)
                        .and_then(|o| o.get("some"))
                        .ok_or_else(|| {
                            expected("null or {\"some\": value} (an option of an option)", json)
                        })?;
                    Some(from_json::<V>(&some, inner).map_err(|e| e.within(".some"))?)
                }
                _ => Some(from_json::<V>(&some, json)?),
            };
            built(V::make_option(ty, value))?
        }
        WasmTypeKind::Result => {
            let (ok_ty, err_ty) = ty
                .result_types()
                .ok_or_else(|| JsonValueError::new("a result type without sides"))?;
            let entry = json
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.iter().next())
                .filter(|(k, _)| *k == "ok" || *k == "err")
                .ok_or_else(|| expected("{\"ok\": value} or {\"err\": value}", json))?;
            let (side, payload) = entry;
            let side_ty = if side == "ok" { &ok_ty } else { &err_ty };
            let value = match (side_ty, payload) {
                (None, Json::Null) => None,
                (None, other) => {
                    return Err(JsonValueError::new(format!(
                        "{side} has no payload here, got {}",
                        describe(other)
                    )));
                }
                (Some(t), p) => {
                    Some(from_json::<V>(t, p).map_err(|e| e.within(&format!(".{side}")))?)
                }
            };
            built(V::make_result(
                ty,
                if side == "ok" { Ok(value) } else { Err(value) },
            ))?
        }
        WasmTypeKind::Flags => {
            let items = json
                .as_array()
                .ok_or_else(|| expected("an array of flag names", json))?;
            let flags: Vec<Cow<'_, str>> = ty.flags_names().collect();
            let mut set = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let name = item
                    .as_str()
                    .filter(|n| flags.iter().any(|f| f == n))
                    .ok_or_else(|| {
                        expected(&format!("a flag name (one of {})", flags.join(", ")), item)
                            .within(&format!("[{i}]"))
                    })?;
                if !set.contains(&name) {
                    set.push(name);
                }
            }
            built(V::make_flags(ty, set))?
        }
        other => {
            return Err(JsonValueError::new(format!(
                "a {other} cannot be written in JSON"
            )));
        }
    })
}

/// The JSON Schema (2020-12) of the JSON form of WIT type `ty`, with the WIT
/// kind under `x-wit` (what a form generator needs beyond the schema).
pub fn schema<T: WasmType>(ty: &T) -> Json {
    let kind = ty.kind();
    let int = |min: i64, max: i64| json!({"type": "integer", "minimum": min, "maximum": max});
    let mut schema = match kind {
        WasmTypeKind::Bool => json!({"type": "boolean"}),
        WasmTypeKind::S8 => int(i8::MIN.into(), i8::MAX.into()),
        WasmTypeKind::S16 => int(i16::MIN.into(), i16::MAX.into()),
        WasmTypeKind::S32 => int(i32::MIN.into(), i32::MAX.into()),
        WasmTypeKind::U8 => int(0, u8::MAX.into()),
        WasmTypeKind::U16 => int(0, u16::MAX.into()),
        WasmTypeKind::U32 => int(0, u32::MAX.into()),
        WasmTypeKind::S64 | WasmTypeKind::U64 => {
            let pattern = if kind == WasmTypeKind::S64 {
                "^-?[0-9]+$"
            } else {
                "^[0-9]+$"
            };
            let min = if kind == WasmTypeKind::S64 {
                -MAX_SAFE_INTEGER
            } else {
                0
            };
            json!({"anyOf": [
                {"type": "string", "pattern": pattern},
                {"type": "integer", "minimum": min, "maximum": MAX_SAFE_INTEGER},
            ]})
        }
        WasmTypeKind::F32 | WasmTypeKind::F64 => json!({"anyOf": [
            {"type": "number"},
            {"enum": ["NaN", "Infinity", "-Infinity"]},
        ]}),
        WasmTypeKind::Char => json!({"type": "string", "minLength": 1, "maxLength": 1}),
        WasmTypeKind::String => json!({"type": "string"}),
        WasmTypeKind::List | WasmTypeKind::FixedLengthList => json!({
            "type": "array",
            "items": ty.list_element_type().map(|t| schema(&t)).unwrap_or(json!({})),
        }),
        WasmTypeKind::Tuple => {
            let items: Vec<Json> = ty.tuple_element_types().map(|t| schema(&t)).collect();
            let n = items.len();
            json!({"type": "array", "prefixItems": items, "minItems": n, "maxItems": n})
        }
        WasmTypeKind::Record => {
            let mut properties = Map::new();
            let mut required = Vec::new();
            for (name, field) in ty.record_fields() {
                if field.kind() != WasmTypeKind::Option {
                    required.push(Json::String(name.to_string()));
                }
                properties.insert(name.into_owned(), schema(&field));
            }
            json!({"type": "object", "properties": properties, "required": required,
                   "additionalProperties": false})
        }
        WasmTypeKind::Variant => {
            let cases: Vec<Json> = ty
                .variant_cases()
                .map(|(case, payload)| {
                    let payload = payload
                        .map(|p| schema(&p))
                        .unwrap_or(json!({"type": "null"}));
                    json!({"type": "object", "properties": {case.as_ref(): payload},
                           "required": [case.as_ref()], "additionalProperties": false})
                })
                .collect();
            json!({"oneOf": cases})
        }
        WasmTypeKind::Enum => json!({"enum": ty.enum_cases().collect::<Vec<_>>()}),
        WasmTypeKind::Option => {
            let some = ty.option_some_type();
            let inner = match &some {
                Some(t) if t.kind() == WasmTypeKind::Option => json!({
                    "type": "object", "properties": {"some": schema(t)},
                    "required": ["some"], "additionalProperties": false,
                }),
                Some(t) => schema(t),
                None => json!({}),
            };
            json!({"anyOf": [{"type": "null"}, inner]})
        }
        WasmTypeKind::Result => {
            let (ok, err) = ty.result_types().unwrap_or((None, None));
            let side = |name: &str, t: Option<T>| {
                let payload = t.map(|t| schema(&t)).unwrap_or(json!({"type": "null"}));
                json!({"type": "object", "properties": {name: payload}, "required": [name],
                       "additionalProperties": false})
            };
            json!({"oneOf": [side("ok", ok), side("err", err)]})
        }
        WasmTypeKind::Flags => json!({
            "type": "array", "uniqueItems": true,
            "items": {"enum": ty.flags_names().collect::<Vec<_>>()},
        }),
        _ => json!({"not": {}}),
    };
    if let Json::Object(o) = &mut schema {
        o.insert("x-wit".into(), Json::String(kind.to_string()));
    }
    schema
}

/// WAVE text of a WIT value given as JSON: how a JSON call reaches a replica,
/// whose calls take WAVE (so both paths parse the same text).
pub fn json_to_wave<V: WasmValue>(ty: &V::Type, json: &Json) -> Result<String, JsonValueError> {
    let value: V = from_json(ty, json)?;
    wasmtime::component::wasm_wave::to_string(&value)
        .map_err(|e| JsonValueError::new(format!("cannot write the value as WAVE: {e}")))
}

/// JSON of a WIT value given as WAVE text (a replica's answer).
pub fn wave_to_json<V: WasmValue>(ty: &V::Type, wave: &str) -> Result<Json, JsonValueError> {
    let value: V = wasmtime::component::wasm_wave::from_str(ty, wave)
        .map_err(|e| JsonValueError::new(format!("the answer {wave:?} is not valid WAVE: {e}")))?;
    to_json(&value)
}

/// A method's results, given as WAVE text, as JSON by its result types.
pub fn results_to_json(
    method: &crate::runtime::Method,
    results: &[String],
) -> Result<Vec<Json>, JsonValueError> {
    results
        .iter()
        .zip(&method.results)
        .map(|(text, ty)| wave_to_json::<wasmtime::component::Val>(ty, text))
        .collect()
}

/// A verified directory record as JSON (`lo resolve --json`, `lo ls --json`, the
/// HTTP API): what `lo resolve` prints, with the same names.
pub fn record_json(v: &liveobjects_directory::verify::VerifiedRecord) -> Json {
    let r = &v.record;
    let delegations: Vec<_> = v
        .chain
        .delegations
        .iter()
        .map(|d| json!({"zone": d.zone.to_string(), "key": d.key.to_string()}))
        .collect();
    json!({
        "name": r.name,
        "version": r.version,
        "type": {
            "interface": r.object_type.interface,
            "category": r.object_type.category.to_string(),
            "reliability": r.object_type.reliability.to_string(),
            "security": r.object_type.security.to_string(),
        },
        "logic": {"sha256": hex::encode(r.logic.hash), "size": r.logic.size},
        "driver": {"name": r.driver.name, "options": r.driver.options},
        "policy": r.policy.to_string(),
        "issued_at": r.issued_at,
        "expires_at": r.expires_at,
        "signed_by": v.signed.signer.to_string(),
        "chain": {"root": v.chain.root.to_string(), "delegations": delegations},
        "verified": true,
    })
}

/// One joined object's status as JSON (`lo status --json`, the HTTP API).
pub fn object_status_json(o: &crate::node::ObjectStatus) -> Json {
    let r = &o.report;
    json!({
        "name": o.name,
        "driver": o.driver,
        "members": r.members,
        "member": r.member,
        "sequencer": r.sequencer,
        "events_applied": r.events_applied,
        "state_bytes": r.state_bytes,
        "state_digest": r.state_digest,
        "quarantined": r.quarantined,
        "throttled": r.throttled,
        "hibernating": r.hibernating,
        "batches": r.batches,
        "queued": r.queued.map(|(jobs, bytes)| json!({"jobs": jobs, "bytes": bytes})),
        "value": r.value,
        "check": r.check,
        "divergence": r.divergence,
        "logic": r.logic,
        "logic_version": r.logic_version,
        "upgrade_tried": r.upgrade_tried,
    })
}

/// A node's status as JSON (`lo status --json`, `GET /v1/node`).
pub fn node_status_json(
    key: &str,
    name: Option<&str>,
    addr: &str,
    objects: &[crate::node::ObjectStatus],
    total: usize,
    next: Option<&str>,
    drivers: &[crate::node::DriverStatus],
) -> Json {
    let drivers: Vec<_> = drivers
        .iter()
        .map(|d| json!({"driver": d.driver, "lines": d.lines}))
        .collect();
    let mut status = objects_page_json(objects, total, next);
    status["node"] = json!({"key": key, "name": name, "addr": addr});
    status["drivers"] = json!(drivers);
    status
}

/// One page of objects: `{"objects": [...], "total": N, "next": NAME or null}`
/// (`next` is the `after` of the following page).
pub fn objects_page_json(
    objects: &[crate::node::ObjectStatus],
    total: usize,
    next: Option<&str>,
) -> Json {
    let objects: Vec<_> = objects.iter().map(object_status_json).collect();
    json!({"objects": objects, "total": total, "next": next})
}
