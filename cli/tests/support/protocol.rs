//! The node protocol's JSON Schemas (docs/schema/), checked against every
//! line the tests read from `hearth node` and every command they send it
//! (docs/node-protocol.md).

use std::sync::OnceLock;

use serde_json::Value;

fn load(file: &str) -> jsonschema::Validator {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schema")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{}: not a schema: {e}", path.display()))
}

fn check(validator: &jsonschema::Validator, file: &str, v: &Value) {
    if !validator.is_valid(v) {
        let why: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
        panic!("{v} does not follow docs/schema/{file}: {}", why.join("; "));
    }
}

/// Panic unless `line` is a line `hearth node` may print.
pub fn check_event(line: &Value) {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    const FILE: &str = "node-event.schema.json";
    check(V.get_or_init(|| load(FILE)), FILE, line);
}

/// Panic unless `cmd` is a command `hearth node` takes.
pub fn check_command(cmd: &Value) {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    const FILE: &str = "node-command.schema.json";
    check(V.get_or_init(|| load(FILE)), FILE, cmd);
}
