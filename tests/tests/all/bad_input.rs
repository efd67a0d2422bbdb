//! Bad components and bad calls get specific, actionable errors.

use liveobjects_host::runtime::{LoadError, ReplicaError, ReplicaIdentity};
use liveobjects_tests::{load, objects, runtime};

#[test]
fn a_text_file_is_not_a_component() {
    let err = runtime()
        .load_bytes("notes.txt", b"just some text")
        .unwrap_err();
    assert!(matches!(err, LoadError::NotAComponent { .. }), "{err}");
    assert!(err.to_string().contains("notes.txt"));
    assert!(err.to_string().contains("magic bytes"));
}

#[test]
fn an_empty_file_is_not_a_component() {
    let err = runtime().load_bytes("empty.wasm", b"").unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn a_core_module_is_named_as_a_core_module() {
    // The smallest valid core module: magic + version 1.
    let err = runtime()
        .load_bytes("core.wasm", b"\0asm\x01\0\0\0")
        .unwrap_err();
    assert!(matches!(err, LoadError::NotAComponent { .. }));
    assert!(err.to_string().contains("core WebAssembly module"), "{err}");
}

#[test]
fn a_truncated_component_fails_to_compile_with_its_name() {
    let bytes = std::fs::read(objects::COUNTER).unwrap();
    let err = runtime()
        .load_bytes("cut.wasm", &bytes[..bytes.len() / 2])
        .unwrap_err();
    assert!(matches!(err, LoadError::Compile { .. }), "{err}");
    assert!(err.to_string().contains("cut.wasm"));
}

#[test]
fn a_component_of_another_world_is_refused() {
    let err = runtime().load_file(objects::STRANGER.as_ref()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{text}");
    assert!(
        text.contains("liveobjects:object/lifecycle@0.1.0"),
        "{text}"
    );
    assert!(text.contains("liveobjects:stranger/greeter"), "{text}");
}

#[test]
fn a_missing_method_lists_the_methods_that_exist() {
    let runtime = runtime();
    let logic = load(&runtime, objects::COUNTER);
    let mut replica = runtime
        .instantiate(&logic, ReplicaIdentity::local("test:counter", "a"))
        .unwrap();
    replica.init(None).unwrap();
    let err = replica.call_wave("increment", &["1"]).unwrap_err();
    assert!(matches!(err, ReplicaError::NoSuchMethod { .. }));
    let text = err.to_string();
    assert!(
        text.contains("`increment`") && text.contains("add, get, updates"),
        "{text}"
    );
}

#[test]
fn wrong_argument_count_and_type_are_explained() {
    let runtime = runtime();
    let logic = load(&runtime, objects::REGISTER);
    let mut replica = runtime
        .instantiate(&logic, ReplicaIdentity::local("test:register", "a"))
        .unwrap();
    replica.init(None).unwrap();

    let err = replica.call_wave("set", &[]).unwrap_err();
    assert!(
        matches!(
            err,
            ReplicaError::ArgumentCount {
                expected: 1,
                got: 0,
                ..
            }
        ),
        "{err}"
    );

    let err = replica.call_wave("set", &["42"]).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, ReplicaError::BadArgument(p) if p.position == 1),
        "{text}"
    );
    assert!(
        text.contains("variant"),
        "should show the expected type: {text}"
    );
    assert!(text.contains("`42`"), "{text}");

    // The same method with a well-typed argument works.
    replica.call_wave("set", &["integer(42)"]).unwrap();
}

#[test]
fn methods_can_be_qualified_by_interface() {
    let runtime = runtime();
    let logic = load(&runtime, objects::COUNTER);
    let mut replica = runtime
        .instantiate(&logic, ReplicaIdentity::local("test:counter", "a"))
        .unwrap();
    replica.init(None).unwrap();
    replica.call_wave("counter.get", &[]).unwrap();
    replica
        .call_wave("liveobjects:counter/counter@0.1.0.get", &[])
        .unwrap();
}
