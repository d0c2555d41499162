//! ProviderHealthDO through the front worker, with the mock upstream as the providers.

use std::time::Duration;

use gateway_e2e::{eventually, send};
use serde_json::json;

use crate::{shared, unique};

fn configure(group: &str, upstream: &str, providers: &[(&str, u32)]) {
    let list: Vec<_> = providers
        .iter()
        .map(|(n, w)| json!({"name": n, "url": format!("{upstream}/{n}"), "weight": w}))
        .collect();
    let r = shared().rt.admin(
        "PUT",
        &format!("/v1/providers/{group}"),
        &json!({ "providers": list }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn configured_group_picks_follow_weights_exactly() {
    let s = shared();
    let group = unique("wrr");
    configure(&group, &s.upstream.url(), &[("w-a", 3), ("w-b", 1)]);
    let mut a = 0;
    for _ in 0..40 {
        let p =
            s.rt.send("POST", &format!("/v1/providers/{group}/pick"), &[], None)
                .json();
        assert_eq!(p["panic"], false);
        if p["name"] == "w-a" {
            a += 1;
        }
    }
    assert_eq!(
        a, 30,
        "smooth weighted round robin is exact over whole cycles"
    );
}

#[test]
fn default_group_comes_from_configuration() {
    let rt = &shared().rt;
    let v = rt.get("/v1/providers/demo").json();
    let names: Vec<_> = v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["spec"]["name"].clone())
        .collect();
    assert_eq!(names, vec!["alpha", "beta", "gamma"]);
    assert!(rt.get("/v1/providers").json()["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["group"] == "demo"));
    rt.get("/v1/providers/never-configured").assert_problem(404);
}

#[test]
fn failures_eject_and_the_probe_alarm_restores_a_healed_provider() {
    let s = shared();
    let group = unique("eject");
    let name = unique("p").replace('-', "_");
    configure(&group, &s.upstream.url(), &[(&name, 1), ("steady", 1)]);
    // Make the provider fail its health probe, report 5 failures: it is ejected.
    let ctl = format!("{}/__control/{name}", s.upstream.url());
    assert_eq!(
        send(
            "PUT",
            &ctl,
            &[],
            Some(br#"{"failure_rate":1.0,"status":503}"#)
        )
        .status,
        200
    );
    for _ in 0..5 {
        let r = s.rt.post_json(
            &format!("/v1/providers/{group}/report"),
            &json!({"provider": name, "ok": false, "latency_ms": 40}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let status = s.rt.get(&format!("/v1/providers/{group}")).json();
    assert_eq!(status["providers"][0]["healthy"], false);
    assert!(status["providers"][0]["health"]["ejected_until"].is_number());
    for _ in 0..6 {
        assert_eq!(
            s.rt.send("POST", &format!("/v1/providers/{group}/pick"), &[], None)
                .json()["name"],
            "steady"
        );
    }
    // Heal it; the probe alarm (every second in tests) brings it back.
    assert_eq!(send("DELETE", &ctl, &[], None).status, 200);
    let v = eventually(
        Duration::from_secs(20),
        "the probe alarm to restore the provider",
        || {
            let v = s.rt.get(&format!("/v1/providers/{group}")).json();
            (v["providers"][0]["healthy"] == true).then_some(v)
        },
    );
    assert!(v["providers"][0]["health"]["probes"].as_u64().unwrap() >= 1);
    assert_eq!(v["providers"][0]["health"]["last_probe_ok"], true);
    assert!(v["object"]["alarm"]["runs"].as_u64().unwrap() >= 1);
    // The passing probe made it half-open: the next request to it is a trial, whose success
    // closes the circuit (with slow start).
    assert_eq!(v["providers"][0]["circuit"], "half_open");
    let mut tried = false;
    for _ in 0..4 {
        let p =
            s.rt.send("POST", &format!("/v1/providers/{group}/pick"), &[], None)
                .json();
        if p["name"] == name.as_str() {
            let r = s.rt.post_json(
                &format!("/v1/providers/{group}/report"),
                &json!({"provider": name, "ok": true, "latency_ms": 12}),
            );
            assert_eq!(r.status, 200);
            tried = true;
            break;
        }
    }
    assert!(tried, "the half-open provider was offered a trial");
    let v = s.rt.get(&format!("/v1/providers/{group}")).json();
    assert_eq!(v["providers"][0]["circuit"], "closed");
    assert!(v["providers"][0]["latency_p50_ms"].as_f64().is_some());
}

#[test]
fn configuration_needs_the_admin_token_and_valid_providers() {
    let rt = &shared().rt;
    let body = json!({"providers": [{"name": "a", "url": "http://127.0.0.1:1/a"}]});
    rt.send(
        "PUT",
        "/v1/providers/g1",
        &[],
        Some(body.to_string().as_bytes()),
    )
    .assert_problem(401);
    rt.admin("PUT", "/v1/providers/g1", &json!({"providers": []}))
        .assert_problem(400);
    rt.admin(
        "PUT",
        "/v1/providers/g1",
        &json!({"providers": [{"name": "a", "url": "ftp://x"}]}),
    )
    .assert_problem(400);
    rt.admin(
        "PUT",
        "/v1/providers/g1",
        &json!({"providers": [{"name": "a", "url": "http://x", "secret": 1}]}),
    )
    .assert_problem(400);
}
