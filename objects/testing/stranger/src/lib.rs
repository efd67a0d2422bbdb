//! Test-only: a valid component that does NOT implement the liveobjects world
//! (no `lifecycle` export). The host must refuse it with a clear error.

wit_bindgen::generate!({
    inline: r#"
        package liveobjects:stranger@0.1.0;
        interface greeter {
            hello: func() -> string;
        }
        world stranger {
            export greeter;
        }
    "#,
});

struct Stranger;

impl exports::liveobjects::stranger::greeter::Guest for Stranger {
    fn hello() -> String {
        "hello".into()
    }
}

export!(Stranger);
