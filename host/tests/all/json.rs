//! The WIT <-> JSON mapping of the HTTP API: property tests over random WIT types
//! and values (a JSON round trip through text gives the same value, and the JSON
//! path and the WAVE path give the same call), a fuzz test of the decoder with
//! arbitrary JSON against arbitrary types, and the edge cases the mapping
//! documents (64-bit integers, floats, nested options, variants).

use liveobjects_host::json::{JsonValueError, from_json, json_to_wave, schema, to_json};
use proptest::prelude::*;
use proptest::sample::subsequence;
use serde_json::{Value as Json, json};
use wasmtime::component::wasm_wave::value::{Type, Value};
use wasmtime::component::wasm_wave::wasm::{WasmType, WasmTypeKind, WasmValue};
use wasmtime::component::wasm_wave::{from_str, to_string};

const NAMES: [&str; 4] = ["a", "b-c", "dee", "e-f-g"];

fn leaf_type() -> impl Strategy<Value = Type> {
    use WasmTypeKind::*;
    prop::sample::select(vec![
        Bool, S8, S16, S32, S64, U8, U16, U32, U64, F32, F64, Char, String,
    ])
    .prop_map(|kind| Type::simple(kind).expect("a simple kind"))
}

fn any_type() -> BoxedStrategy<Type> {
    leaf_type()
        .prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(Type::list),
                prop::collection::vec(inner.clone(), 1..4)
                    .prop_map(|ts| Type::tuple(ts).expect("a tuple")),
                prop::collection::vec(inner.clone(), 1..4).prop_map(|ts| {
                    Type::record(ts.into_iter().enumerate().map(|(i, t)| (NAMES[i], t)))
                        .expect("a record")
                }),
                prop::collection::vec(prop::option::of(inner.clone()), 1..4).prop_map(|cs| {
                    Type::variant(cs.into_iter().enumerate().map(|(i, t)| (NAMES[i], t)))
                        .expect("a variant")
                }),
                (1..=4usize).prop_map(|n| Type::enum_ty(NAMES[..n].to_vec()).expect("an enum")),
                inner.clone().prop_map(Type::option),
                (prop::option::of(inner.clone()), prop::option::of(inner))
                    .prop_map(|(ok, err)| Type::result(ok, err)),
                (1..=4usize).prop_map(|n| Type::flags(NAMES[..n].to_vec()).expect("flags")),
            ]
        })
        .boxed()
}

fn value_of(ty: &Type) -> BoxedStrategy<Value> {
    let ty = ty.clone();
    match ty.kind() {
        WasmTypeKind::Bool => any::<bool>().prop_map(Value::make_bool).boxed(),
        WasmTypeKind::S8 => any::<i8>().prop_map(Value::make_s8).boxed(),
        WasmTypeKind::S16 => any::<i16>().prop_map(Value::make_s16).boxed(),
        WasmTypeKind::S32 => any::<i32>().prop_map(Value::make_s32).boxed(),
        WasmTypeKind::S64 => any::<i64>().prop_map(Value::make_s64).boxed(),
        WasmTypeKind::U8 => any::<u8>().prop_map(Value::make_u8).boxed(),
        WasmTypeKind::U16 => any::<u16>().prop_map(Value::make_u16).boxed(),
        WasmTypeKind::U32 => any::<u32>().prop_map(Value::make_u32).boxed(),
        WasmTypeKind::U64 => any::<u64>().prop_map(Value::make_u64).boxed(),
        WasmTypeKind::F32 => any::<f32>().prop_map(Value::make_f32).boxed(),
        WasmTypeKind::F64 => any::<f64>().prop_map(Value::make_f64).boxed(),
        WasmTypeKind::Char => any::<char>().prop_map(Value::make_char).boxed(),
        WasmTypeKind::String => any::<String>()
            .prop_map(|s| Value::make_string(s.into()))
            .boxed(),
        WasmTypeKind::List => {
            let element = ty.list_element_type().expect("a list");
            prop::collection::vec(value_of(&element), 0..4)
                .prop_map(move |vs| Value::make_list(&ty, vs).expect("a list value"))
                .boxed()
        }
        WasmTypeKind::Tuple => {
            let parts: Vec<_> = ty.tuple_element_types().map(|t| value_of(&t)).collect();
            parts
                .prop_map(move |vs| Value::make_tuple(&ty, vs).expect("a tuple value"))
                .boxed()
        }
        WasmTypeKind::Record => {
            let fields: Vec<_> = ty.record_fields().map(|(_, t)| value_of(&t)).collect();
            fields
                .prop_map(move |vs| {
                    let names: Vec<String> = ty.record_fields().map(|(n, _)| n.into()).collect();
                    Value::make_record(&ty, names.iter().map(String::as_str).zip(vs))
                        .expect("a record value")
                })
                .boxed()
        }
        WasmTypeKind::Variant => {
            let cases: Vec<(String, Option<Type>)> = ty
                .variant_cases()
                .map(|(c, t)| (c.into_owned(), t))
                .collect();
            let choices: Vec<BoxedStrategy<Value>> = cases
                .into_iter()
                .map(|(case, payload)| {
                    let ty = ty.clone();
                    match payload {
                        Some(p) => value_of(&p)
                            .prop_map(move |v| {
                                Value::make_variant(&ty, &case, Some(v)).expect("a variant value")
                            })
                            .boxed(),
                        None => {
                            Just(Value::make_variant(&ty, &case, None).expect("a case")).boxed()
                        }
                    }
                })
                .collect();
            prop::strategy::Union::new(choices).boxed()
        }
        WasmTypeKind::Enum => {
            let cases: Vec<String> = ty.enum_cases().map(Into::into).collect();
            prop::sample::select(cases)
                .prop_map(move |c| Value::make_enum(&ty, &c).expect("an enum value"))
                .boxed()
        }
        WasmTypeKind::Option => {
            let some = ty.option_some_type().expect("an option");
            prop::option::of(value_of(&some))
                .prop_map(move |v| Value::make_option(&ty, v).expect("an option value"))
                .boxed()
        }
        WasmTypeKind::Result => {
            let (ok, err) = ty.result_types().expect("a result");
            let side = |t: Option<Type>| match t {
                Some(t) => value_of(&t).prop_map(Some).boxed(),
                None => Just(None).boxed(),
            };
            let (ty_ok, ty_err) = (ty.clone(), ty);
            prop_oneof![
                side(ok).prop_map(move |v| Value::make_result(&ty_ok, Ok(v)).expect("ok")),
                side(err).prop_map(move |v| Value::make_result(&ty_err, Err(v)).expect("err")),
            ]
            .boxed()
        }
        WasmTypeKind::Flags => {
            let names: Vec<String> = ty.flags_names().map(Into::into).collect();
            let n = names.len();
            subsequence(names, 0..=n)
                .prop_map(move |set| {
                    Value::make_flags(&ty, set.iter().map(String::as_str)).expect("flags")
                })
                .boxed()
        }
        other => panic!("no strategy for {other}"),
    }
}

fn typed_value() -> impl Strategy<Value = (Type, Value)> {
    any_type().prop_flat_map(|ty| (Just(ty.clone()), value_of(&ty)))
}

fn any_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_map(Json::from),
        prop::sample::select(vec![
            "a", "b-c", "NaN", "12", "-3", "x", "some", "ok", "err"
        ])
        .prop_map(Json::from),
        any::<String>().prop_map(Json::from),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec!["a", "b-c", "dee", "some", "ok", "err", "zz"]),
                    inner
                ),
                0..4
            )
            .prop_map(|kv| Json::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

fn wave(v: &Value) -> String {
    to_string(v).expect("every generated value has a WAVE form")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// A value sent as JSON text and read back is the same value, and a call
    /// made through JSON reaches the replica as the same WAVE text as a call
    /// made in WAVE.
    #[test]
    fn json_and_wave_give_the_same_value((ty, value) in typed_value()) {
        let json = to_json(&value).unwrap();
        let text = serde_json::to_string(&json).unwrap();
        let parsed: Json = serde_json::from_str(&text).unwrap();
        let back: Value = from_json(&ty, &parsed).unwrap();
        prop_assert_eq!(wave(&back), wave(&value), "JSON {}", text);

        let via_wave: Value = from_str(&ty, &wave(&value)).unwrap();
        let via_json = json_to_wave::<Value>(&ty, &parsed).unwrap();
        prop_assert_eq!(&via_json, &wave(&via_wave));
        // The schema of every type is a JSON object naming its WIT kind.
        let schema = schema(&ty);
        prop_assert_eq!(schema["x-wit"].clone(), json!(ty.kind().to_string()));
    }

    /// Arbitrary JSON against an arbitrary type: a value or an error, never a
    /// panic; and what is accepted writes back to JSON that reads as the same value.
    #[test]
    fn the_decoder_takes_any_json_without_panicking(ty in any_type(), json in any_json()) {
        if let Ok(value) = from_json::<Value>(&ty, &json) {
            let again: Value = from_json(&ty, &to_json(&value).unwrap()).unwrap();
            prop_assert_eq!(wave(&again), wave(&value));
        }
    }
}

fn ty(kind: WasmTypeKind) -> Type {
    Type::simple(kind).unwrap()
}

fn err(ty: &Type, json: Json) -> JsonValueError {
    from_json::<Value>(ty, &json).unwrap_err()
}

#[test]
fn sixty_four_bit_integers_are_strings_and_unsafe_numbers_are_refused() {
    let u64_ty = ty(WasmTypeKind::U64);
    let big = Value::make_u64(u64::MAX);
    assert_eq!(to_json(&big).unwrap(), json!("18446744073709551615"));
    let back: Value = from_json(&u64_ty, &json!("18446744073709551615")).unwrap();
    assert_eq!(back, big);
    // 2^53 + 1 cannot be a JSON number without risk: refused, with the way out.
    let e = err(&u64_ty, json!(9007199254740993u64));
    assert!(e.message.contains("as a string"), "{e}");
    // Small numbers are fine either way.
    let five: Value = from_json(&u64_ty, &json!(5)).unwrap();
    assert_eq!(five, Value::make_u64(5));
    assert!(err(&u64_ty, json!(-1)).message.contains("out of range"));
    assert!(
        err(&u64_ty, json!("1e3"))
            .message
            .contains("decimal digits")
    );
    assert!(
        err(&ty(WasmTypeKind::S64), json!(1.5))
            .message
            .contains("string")
    );
    assert!(
        err(&ty(WasmTypeKind::U8), json!(256))
            .message
            .contains("out of range for u8")
    );
    assert!(
        err(&ty(WasmTypeKind::S32), json!(2.5))
            .message
            .contains("an integer")
    );
}

#[test]
fn floats_keep_their_shortest_form_and_say_nan_and_infinity_in_words() {
    assert_eq!(to_json(&Value::make_f32(0.1)).unwrap(), json!(0.1));
    assert_eq!(to_json(&Value::make_f64(f64::NAN)).unwrap(), json!("NaN"));
    assert_eq!(
        to_json(&Value::make_f32(f32::NEG_INFINITY)).unwrap(),
        json!("-Infinity")
    );
    let inf: Value = from_json(&ty(WasmTypeKind::F64), &json!("Infinity")).unwrap();
    assert_eq!(inf, Value::make_f64(f64::INFINITY));
    assert!(
        err(&ty(WasmTypeKind::F32), json!(1e300))
            .message
            .contains("out of range for f32")
    );
}

#[test]
fn options_variants_records_and_results_have_one_documented_form() {
    let nested = Type::option(Type::option(ty(WasmTypeKind::U8)));
    let some_none = Value::make_option(
        &nested,
        Some(Value::make_option(&Type::option(ty(WasmTypeKind::U8)), None).unwrap()),
    )
    .unwrap();
    assert_eq!(to_json(&some_none).unwrap(), json!({"some": null}));
    assert_eq!(
        from_json::<Value>(&nested, &json!({"some": null})).unwrap(),
        some_none
    );
    assert!(from_json::<Value>(&nested, &json!(null)).is_ok());
    assert!(err(&nested, json!(3)).message.contains("{\"some\": value}"));

    let shape = Type::variant([("circle", Some(ty(WasmTypeKind::F64))), ("dot", None)]).unwrap();
    let dot = Value::make_variant(&shape, "dot", None).unwrap();
    assert_eq!(to_json(&dot).unwrap(), json!({"dot": null}));
    assert_eq!(from_json::<Value>(&shape, &json!("dot")).unwrap(), dot);
    assert!(
        err(&shape, json!("circle"))
            .message
            .contains("has a payload")
    );
    assert!(
        err(&shape, json!({"square": 1}))
            .message
            .contains("unknown case \"square\"")
    );

    let point = Type::record([
        ("x", ty(WasmTypeKind::S32)),
        ("label", Type::option(ty(WasmTypeKind::String))),
    ])
    .unwrap();
    // A missing option field is none; a missing other field and an unknown
    // field are errors that say where.
    assert!(from_json::<Value>(&point, &json!({"x": 1})).is_ok());
    assert!(
        err(&point, json!({"label": "p"}))
            .message
            .contains("missing field \"x\"")
    );
    assert!(
        err(&point, json!({"x": 1, "y": 2}))
            .message
            .contains("unknown field \"y\"")
    );
    let nested_error = err(&Type::list(point), json!([{"x": 1}, {"x": "one"}]));
    assert_eq!(nested_error.path, "[1].x", "{nested_error}");

    let outcome = Type::result(Some(ty(WasmTypeKind::U32)), None);
    let failed = Value::make_result(&outcome, Err(None)).unwrap();
    assert_eq!(to_json(&failed).unwrap(), json!({"err": null}));
    assert!(
        err(&outcome, json!({"ok": 1, "err": null}))
            .message
            .contains("\"ok\"")
    );
}

/// Every method of every shipped replicated object, with its real WIT types.
fn shipped_methods() -> &'static [liveobjects_host::runtime::Method] {
    use liveobjects_host::runtime::{Runtime, RuntimeConfig};
    static METHODS: std::sync::OnceLock<Vec<liveobjects_host::runtime::Method>> =
        std::sync::OnceLock::new();
    METHODS.get_or_init(|| {
        let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
        let mut methods = Vec::new();
        for (name, bytes) in liveobjects_objects::SHIPPED {
            if ["census", "average", "max"].contains(name) {
                continue; // gossip aggregates: no WIT methods
            }
            let logic = runtime
                .load_bytes(name, bytes)
                .unwrap_or_else(|e| panic!("shipped object {name}: {e}"));
            methods.extend(logic.interface().methods.iter().cloned());
        }
        assert!(methods.len() > 40, "{} methods", methods.len());
        methods
    })
}

/// A request body: random bytes, random JSON, or an array of random JSON.
fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        any_json().prop_map(|j| j.to_string().into_bytes()),
        prop::collection::vec(any_json(), 0..4)
            .prop_map(|a| Json::Array(a).to_string().into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// The call decoder against every shipped method and any body: either one
    /// WAVE text per parameter, each of which the replica's parser accepts for
    /// that parameter's type, or a 400 naming what is wrong (and, for an
    /// argument, which one). Never a panic.
    #[test]
    fn the_call_decoder_takes_any_body_without_panicking(pick in any::<prop::sample::Index>(), body in any_body()) {
        let methods = shipped_methods();
        let method = &methods[pick.index(methods.len())];
        match liveobjects_host::http::decode_call(method, &body) {
            Ok(waves) => {
                prop_assert_eq!(waves.len(), method.params.len());
                for ((_, ty), w) in method.params.iter().zip(&waves) {
                    prop_assert!(
                        from_str::<wasmtime::component::Val>(ty, w).is_ok(),
                        "{} does not parse as {}", w, liveobjects_host::runtime::type_name(ty)
                    );
                }
            }
            Err(e) => {
                prop_assert_eq!(e.status(), 400, "{}", e.message());
                prop_assert!(["bad-json", "bad-request", "bad-argument"].contains(&e.kind()), "{}", e.kind());
                prop_assert!(!e.message().is_empty());
                if let Some(i) = e.detail("argument") {
                    prop_assert!((i.as_u64().unwrap() as usize) < method.params.len());
                }
            }
        }
    }

    /// The join decoder and any body: a request only from an object with a
    /// string `name` (and nothing unknown), otherwise a 400. Never a panic.
    #[test]
    fn the_join_decoder_takes_any_body_without_panicking(body in any_body()) {
        match liveobjects_host::http::decode_join(&body) {
            Ok(request) => {
                let json: Json = serde_json::from_slice(&body).unwrap();
                prop_assert_eq!(json["name"].as_str(), Some(request.name.as_str()));
            }
            Err(e) => {
                prop_assert_eq!(e.status(), 400);
                prop_assert!(["bad-json", "bad-request"].contains(&e.kind()), "{}", e.kind());
            }
        }
    }
}

/// A join body with every field, and the document's `embed` argument decoded and
/// read back as the typed reference the host checks.
#[test]
fn join_bodies_and_references_decode_as_documented() {
    let join = liveobjects_host::http::decode_join(
        br#"{"name": "lo://acme/docs/plan", "require": ["total-order"], "found": true, "references": true}"#,
    )
    .unwrap();
    assert_eq!(join.name, "lo://acme/docs/plan");
    assert_eq!(join.require, vec!["total-order"]);
    assert!(join.found && join.references);
    let unknown =
        liveobjects_host::http::decode_join(br#"{"name": "x", "surprise": 1}"#).unwrap_err();
    assert_eq!(unknown.kind(), "bad-request");
    assert!(
        unknown.message().contains("surprise"),
        "{}",
        unknown.message()
    );

    let embed = shipped_methods()
        .iter()
        .find(|m| m.name == "embed")
        .expect("the doc's embed");
    let waves = liveobjects_host::http::decode_call(
        embed,
        br#"[{"name": "lo://acme/rooms/lobby", "require": ["total-order", "encrypted"]}]"#,
    )
    .unwrap();
    let references =
        liveobjects_host::references::references_in_wave(&embed.params[0].1, &waves[0]);
    assert_eq!(
        references,
        vec![liveobjects_host::references::ObjectRef {
            name: "lo://acme/rooms/lobby".into(),
            require: vec!["total-order".into(), "encrypted".into()],
        }]
    );
    // Other records are not references: the ledger's, the register's.
    for m in shipped_methods().iter().filter(|m| m.name != "embed") {
        for (_, ty) in &m.params {
            assert!(
                !liveobjects_host::references::may_hold_reference(ty),
                "{} looks like it takes a reference",
                m.signature()
            );
        }
    }
    let wrong_shape = shipped_methods()
        .iter()
        .find(|m| m.name == "history")
        .unwrap();
    assert!(!liveobjects_host::references::may_hold_reference(
        &wrong_shape.params[0].1
    ));
}

/// A random value of the component type `ty`, drawn from `next` (a seeded
/// generator), nesting at most `depth` deep in lists.
fn random_val(
    ty: &wasmtime::component::Type,
    next: &mut impl FnMut() -> u64,
    depth: u32,
) -> wasmtime::component::Val {
    use wasmtime::component::{Type as T, Val as V};
    let mut pick = |n: usize| (next() % n as u64) as usize;
    match ty {
        T::Bool => V::Bool(next().is_multiple_of(2)),
        T::S8 => V::S8(next() as i8),
        T::U8 => V::U8(next() as u8),
        T::S16 => V::S16(next() as i16),
        T::U16 => V::U16(next() as u16),
        T::S32 => V::S32(next() as i32),
        T::U32 => V::U32(next() as u32),
        T::S64 => V::S64(next() as i64),
        T::U64 => V::U64(next()),
        T::Float32 => V::Float32(f32::from_bits(next() as u32)),
        T::Float64 => V::Float64(f64::from_bits(next())),
        T::Char => V::Char(['a', 'é', '€', '𝄞', '"', '\n'][pick(6)]),
        T::String => V::String(
            [
                "",
                "hi",
                "ünï \"quoted\"",
                "lo://acme/rooms/lobby",
                "12345678901234567890",
            ][pick(5)]
            .into(),
        ),
        T::List(l) => {
            let n = if depth == 0 { 0 } else { pick(4) };
            V::List(
                (0..n)
                    .map(|_| random_val(&l.ty(), next, depth - 1))
                    .collect(),
            )
        }
        T::Record(r) => V::Record(
            r.fields()
                .map(|f| (f.name.to_string(), random_val(&f.ty, next, depth)))
                .collect(),
        ),
        T::Tuple(t) => V::Tuple(t.types().map(|t| random_val(&t, next, depth)).collect()),
        T::Variant(v) => {
            let cases: Vec<_> = v.cases().collect();
            let case = &cases[pick(cases.len())];
            V::Variant(
                case.name.to_string(),
                case.ty
                    .as_ref()
                    .map(|t| Box::new(random_val(t, next, depth))),
            )
        }
        T::Enum(e) => {
            let names: Vec<_> = e.names().collect();
            V::Enum(names[pick(names.len())].to_string())
        }
        T::Option(o) => V::Option(
            (next().is_multiple_of(2)).then(|| Box::new(random_val(&o.ty(), next, depth))),
        ),
        T::Result(r) => {
            if next().is_multiple_of(2) {
                V::Result(Ok(r.ok().map(|t| Box::new(random_val(&t, next, depth)))))
            } else {
                V::Result(Err(r.err().map(|t| Box::new(random_val(&t, next, depth)))))
            }
        }
        T::Flags(f) => V::Flags(
            f.names()
                .filter(|_| next().is_multiple_of(2))
                .map(str::to_string)
                .collect(),
        ),
        other => panic!("no generator for {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Well-typed arguments for every shipped method: sent as JSON through the
    /// call decoder, each reaches the replica as exactly the WAVE text of the
    /// value itself.
    #[test]
    fn well_typed_calls_decode_to_the_wave_of_their_values(pick in any::<prop::sample::Index>(), seed in any::<u64>()) {
        let methods = shipped_methods();
        let method = &methods[pick.index(methods.len())];
        let mut state = seed | 1;
        let mut next = move || {
            // xorshift64: a seeded source for the generator above.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let values: Vec<wasmtime::component::Val> =
            method.params.iter().map(|(_, ty)| random_val(ty, &mut next, 2)).collect();
        let body = Json::Array(values.iter().map(|v| to_json(v).unwrap()).collect()).to_string();
        let waves = liveobjects_host::http::decode_call(method, body.as_bytes())
            .unwrap_or_else(|e| panic!("{}: {} for {body}", method.signature(), e.message()));
        for (wave, value) in waves.iter().zip(&values) {
            prop_assert_eq!(wave, &to_string(value).unwrap(), "{} {}", method.signature(), body);
        }
    }
}
