//! The official `openai` Python package (installed by `make test` into `.tools/py`) against the
//! gateway: a plain and a streamed chat completion, and the SDK's own exception types for an
//! unknown model and a revoked key.

use std::process::Command;

use gateway_e2e::root;
use serde_json::{json, Value};

use crate::ai::issue;
use crate::shared;

fn run(args: &[&str]) -> Value {
    let python = root().join(".tools/py/bin/python");
    let script = root().join("tests/sdk/openai_client.py");
    let out = Command::new(&python)
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} (run `bash scripts/setup.sh openai`): {e}",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "the SDK script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the SDK script prints JSON")
}

#[test]
fn the_openai_python_sdk_gets_plain_and_streamed_completions() {
    let s = shared();
    let name = format!("sdk_{}", crate::unique("").replace('-', ""));
    let r = s.rt.admin(
        "PUT",
        "/v1/providers/ai_sdk",
        &json!({"providers": [{"name": name, "url": format!("{}/{name}/v1", s.upstream.url())}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (id, secret) = issue(json!({"name": "sdk", "models": ["e2e-sdk"]}));
    let base = s.rt.url("/v1");

    // The mock answers `"stream": true` calls with SSE once told to stream.
    let url = format!("{}/__control/{name}", s.upstream.url());
    let r = gateway_e2e::send(
        "PUT",
        &url,
        &[],
        Some(br#"{"stream":true,"stream_chunks":4,"stream_delay_ms":5}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = run(&[&base, &secret, "e2e-sdk"]);
    assert_eq!(v["plain"]["model"], "sdk-upstream", "{v}");
    assert_eq!(v["plain"]["content"], format!("hello from {name}"), "{v}");
    assert_eq!(v["plain"]["finish_reason"], "stop");
    assert!(v["plain"]["total_tokens"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["stream"]["content"], "tok0 tok1 tok2 tok3 ", "{v}");
    assert!(v["stream"]["chunks"].as_u64().unwrap() >= 5, "{v}");
    assert!(v["stream"]["total_tokens"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["unknown_model"]["type"], "NotFoundError", "{v}");
    assert_eq!(v["unknown_model"]["status"], 404);
    assert_eq!(v["unknown_model"]["code"], "model_not_found");

    let r = s.rt.admin("DELETE", &format!("/v1/keys/{id}"), &json!({}));
    assert_eq!(r.status, 200);
    let v = run(&[&base, &secret, "e2e-sdk", "revoked"]);
    assert_eq!(v["revoked"]["type"], "AuthenticationError", "{v}");
    assert_eq!(v["revoked"]["code"], "key-revoked");
}
