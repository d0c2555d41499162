//! ExperimentDO through the front worker.

use std::time::Duration;

use gateway_e2e::eventually;
use serde_json::json;

use crate::{shared, unique};

#[test]
fn assignment_is_sticky_and_follows_the_pinned_hash() {
    let rt = &shared().rt;
    // Buckets for seed "title-search-ttl" computed independently: 50/50 split at 5000.
    let unit = unique("unit");
    let first = rt
        .post_json(
            "/v1/experiments/title-search-ttl/assign",
            &json!({"unit": unit}),
        )
        .json();
    assert_eq!(first["new"], true);
    for _ in 0..3 {
        let again = rt
            .post_json(
                "/v1/experiments/title-search-ttl/assign",
                &json!({"unit": unit}),
            )
            .json();
        assert_eq!(again["variant"], first["variant"]);
        assert_eq!(again["new"], false);
    }
    let ttl = first["params"]["cache_ttl_s"].as_u64().unwrap();
    assert!(ttl == 86_400 || ttl == 172_800);
}

#[test]
fn weight_change_does_not_move_assigned_units() {
    let rt = &shared().rt;
    let name = unique("exp");
    let def = |a: u32, b: u32| json!({"variants": [{"name": "a", "weight": a}, {"name": "b", "weight": b}]});
    assert_eq!(
        rt.admin("PUT", &format!("/v1/experiments/{name}"), &def(50, 50))
            .status,
        201
    );
    let units: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let before: Vec<_> = units
        .iter()
        .map(|u| {
            rt.post_json(
                &format!("/v1/experiments/{name}/assign"),
                &json!({"unit": u}),
            )
            .json()["variant"]
                .clone()
        })
        .collect();
    assert!(before.iter().any(|v| v == "a") && before.iter().any(|v| v == "b"));
    assert_eq!(
        rt.admin("PUT", &format!("/v1/experiments/{name}"), &def(0, 100))
            .status,
        200
    );
    for (u, v) in units.iter().zip(&before) {
        let now = rt
            .post_json(
                &format!("/v1/experiments/{name}/assign"),
                &json!({"unit": u}),
            )
            .json();
        assert_eq!(&now["variant"], v, "unit {u} moved");
    }
    let fresh = rt
        .post_json(
            &format!("/v1/experiments/{name}/assign"),
            &json!({"unit": "brand-new"}),
        )
        .json();
    assert_eq!(fresh["variant"], "b", "new units follow the new weights");
}

#[test]
fn events_are_tallied_and_the_analysis_alarm_runs() {
    let rt = &shared().rt;
    let name = unique("exp-an");
    let def =
        json!({"variants": [{"name": "control", "weight": 1}, {"name": "treatment", "weight": 1}]});
    assert_eq!(
        rt.admin("PUT", &format!("/v1/experiments/{name}"), &def)
            .status,
        201
    );
    rt.post_json(
        &format!("/v1/experiments/{name}/events"),
        &json!({"unit": "ghost", "success": true}),
    )
    .assert_problem(409);
    for i in 0..10 {
        let u = format!("u{i}");
        rt.post_json(
            &format!("/v1/experiments/{name}/assign"),
            &json!({"unit": u}),
        );
        let r = rt.post_json(
            &format!("/v1/experiments/{name}/events"),
            &json!({"unit": u, "success": i % 2 == 0}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let v = eventually(Duration::from_secs(20), "the analysis alarm", || {
        let v = rt.get(&format!("/v1/experiments/{name}")).json();
        (v["analysis"]["events"] == 10).then_some(v)
    });
    let events: u64 = v["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["events"].as_u64().unwrap())
        .sum();
    let successes: u64 = v["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["successes"].as_u64().unwrap())
        .sum();
    assert_eq!((events, successes), (10, 5));
    assert!(v["object"]["alarm"]["runs"].as_u64().unwrap() >= 1);
}

#[test]
fn unknown_experiment_is_404_and_define_needs_admin() {
    let rt = &shared().rt;
    rt.post_json("/v1/experiments/nope/assign", &json!({"unit": "u"}))
        .assert_problem(404);
    let body =
        json!({"variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}).to_string();
    rt.send("PUT", "/v1/experiments/x", &[], Some(body.as_bytes()))
        .assert_problem(401);
    rt.admin(
        "PUT",
        "/v1/experiments/x",
        &json!({"variants": [{"name": "a", "weight": 1}]}),
    )
    .assert_problem(400);
}

#[test]
fn a_clear_winner_is_promoted_exactly_once_and_then_used_for_everyone() {
    let s = shared();
    let name = unique("promo");
    let def = json!({"min_sample": 40, "variants": [
        {"name": "control", "weight": 1, "params": {"cache_ttl_s": 86400}},
        {"name": "treatment", "weight": 1, "params": {"cache_ttl_s": 172800}}
    ]});
    assert_eq!(
        s.rt.admin("PUT", &format!("/v1/experiments/{name}"), &def)
            .status,
        201
    );
    // 200 units; the treatment succeeds 90 % of the time, the control 10 %.
    for i in 0..200 {
        let u = format!("u{i}");
        let a =
            s.rt.post_json(
                &format!("/v1/experiments/{name}/assign"),
                &json!({"unit": u}),
            )
            .json();
        let success = if a["variant"] == "treatment" {
            i % 10 != 0
        } else {
            i % 10 == 0
        };
        let r = s.rt.post_json(
            &format!("/v1/experiments/{name}/events"),
            &json!({"unit": u, "success": success}),
        );
        assert_eq!(r.status, 200);
    }
    // 50 concurrent analyse calls (plus the alarm): one promotion.
    let url = s.rt.url(&format!("/v1/experiments/{name}/analyse"));
    let auth = format!("Bearer {}", gateway_e2e::ADMIN_TOKEN);
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let (url, auth) = (url.clone(), auth.clone());
            std::thread::spawn(move || {
                gateway_e2e::send("POST", &url, &[("Authorization", &auth)], None).status
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    let v = s.rt.get(&format!("/v1/experiments/{name}")).json();
    assert_eq!(v["winner"], "treatment");
    assert_eq!(v["promotions"], 1, "promoted exactly once");
    assert_eq!(v["status"], "concluded");
    assert!(v["analysis"]["arms"][1]["sequential_p"].as_f64().unwrap() < 0.05);
    // Everyone, old or new, now gets the winner's parameters.
    for u in ["u1", "brand-new-unit"] {
        let a =
            s.rt.post_json(
                &format!("/v1/experiments/{name}/assign"),
                &json!({"unit": u}),
            )
            .json();
        assert_eq!(a["variant"], "treatment");
        assert_eq!(a["params"]["cache_ttl_s"], 172800);
    }
    s.rt.send(
        "POST",
        &format!("/v1/experiments/{name}/analyse"),
        &[],
        None,
    )
    .assert_problem(401);
}
