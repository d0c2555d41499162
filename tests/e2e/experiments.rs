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
        .map(|a| a["metrics"]["cache_hit"]["n"].as_u64().unwrap())
        .sum();
    let successes: f64 = v["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a["metrics"]["cache_hit"]["mean"].as_f64().unwrap_or(0.0)
                * a["metrics"]["cache_hit"]["n"].as_f64().unwrap()
        })
        .sum();
    assert_eq!(events, 10);
    assert!((successes - 5.0).abs() < 1e-9, "{successes}");
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
    assert!(
        v["analysis"]["arms"][1]["metrics"][0]["sequential_p"]
            .as_f64()
            .unwrap()
            < 0.05
    );
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

/// Assigns `unit` and returns the answer.
fn assign(name: &str, unit: &str) -> serde_json::Value {
    let r = shared().rt.post_json(
        &format!("/v1/experiments/{name}/assign"),
        &json!({ "unit": unit }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn admins_list_pause_resume_retire_and_delete_experiments() {
    let rt = &shared().rt;
    let name = unique("life");
    let def = json!({"min_sample": 1000, "variants": [
        {"name": "control", "weight": 1, "params": {"cache_ttl_s": 60}},
        {"name": "t1", "weight": 1, "params": {"cache_ttl_s": 120}},
        {"name": "t2", "weight": 1, "params": {"cache_ttl_s": 240}}
    ], "guardrails": ["latency_ms"]});
    assert_eq!(
        rt.admin("PUT", &format!("/v1/experiments/{name}"), &def)
            .status,
        201
    );
    let listed = rt.get("/v1/experiments").json();
    let names: Vec<&str> = listed["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(names.contains(&name.as_str()), "{names:?}");
    assert!(
        names.contains(&"title-search-ttl"),
        "configured experiments are listed"
    );
    let units: Vec<String> = (0..30).map(|i| format!("u{i}")).collect();
    let first: Vec<String> = units
        .iter()
        .map(|u| assign(&name, u)["variant"].as_str().unwrap().to_string())
        .collect();
    assert!(first.iter().any(|v| v == "t2"));

    // Paused: everyone gets the control, nothing is counted, nothing moves.
    let p = rt.admin("POST", &format!("/v1/experiments/{name}/pause"), &json!({}));
    assert_eq!(p.json()["status"], "paused");
    let a = assign(&name, &units[0]);
    assert_eq!(
        (a["variant"].as_str(), a["counted"].as_bool()),
        (Some("control"), Some(false))
    );
    let e = rt.post_json(
        &format!("/v1/experiments/{name}/events"),
        &json!({"unit": units[0], "metrics": {"cache_hit": 1}}),
    );
    assert_eq!(e.json()["recorded"], false);
    let r = rt.admin(
        "POST",
        &format!("/v1/experiments/{name}/resume"),
        &json!({}),
    );
    assert_eq!(r.json()["status"], "running");
    for (u, v) in units.iter().zip(&first) {
        assert_eq!(
            assign(&name, u)["variant"],
            v.as_str(),
            "resuming moves nobody"
        );
    }

    // Retiring t2: its units get the control and are not counted; other arms keep their units;
    // new units never land on t2.
    let s = rt.admin(
        "POST",
        &format!("/v1/experiments/{name}/arms/t2/retire"),
        &json!({}),
    );
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.json()["variants"][2]["retired"], true);
    for (u, v) in units.iter().zip(&first) {
        let a = assign(&name, u);
        if v == "t2" {
            assert_eq!(
                (a["variant"].as_str(), a["counted"].as_bool()),
                (Some("control"), Some(false))
            );
        } else {
            assert_eq!(a["variant"], v.as_str(), "other arms keep their units");
        }
    }
    for i in 0..40 {
        assert_ne!(assign(&name, &format!("new{i}"))["variant"], "t2");
    }
    let v = rt.get(&format!("/v1/experiments/{name}")).json();
    let kinds: Vec<&str> = v["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["pause", "resume", "retire"]);
    rt.admin(
        "POST",
        &format!("/v1/experiments/{name}/arms/control/retire"),
        &json!({}),
    )
    .assert_problem(400);
    rt.admin(
        "POST",
        &format!("/v1/experiments/{name}/arms/nope/retire"),
        &json!({}),
    )
    .assert_problem(404);

    // Delete: gone from the list and 404 afterwards, admin only.
    rt.send("DELETE", &format!("/v1/experiments/{name}"), &[], None)
        .assert_problem(401);
    let d = rt.admin("DELETE", &format!("/v1/experiments/{name}"), &json!({}));
    assert_eq!(d.json()["deleted"], true);
    rt.get(&format!("/v1/experiments/{name}"))
        .assert_problem(404);
    let listed = rt.get("/v1/experiments").json();
    assert!(!listed["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == name.as_str()));
}

#[test]
fn a_ttl_experiment_on_the_proxy_path_is_promoted_by_the_alarm_and_then_applied() {
    let s = shared();
    let (g, _) = crate::proxy::group(&[("ttl", 1)], json!({}));
    let name = unique("proxy-ttl");
    // Control caches for 1 s, treatment for an hour: callers coming back every ~1.3 s hit the
    // cache only in the treatment.
    let def = json!({"min_sample": 30, "primary": "cache_hit", "guardrails": ["error"],
    "target": {"group": g, "path_prefix": "/titles"},
    "variants": [
        {"name": "control", "weight": 1, "params": {"cache_ttl_s": 1}},
        {"name": "treatment", "weight": 1, "params": {"cache_ttl_s": 3600}}
    ]});
    assert_eq!(
        s.rt.admin("PUT", &format!("/v1/experiments/{name}"), &def)
            .status,
        201
    );
    let path = format!("/v1/proxy/{g}/titles/dune");
    let call = |caller: &str| s.rt.send("GET", &path, &[("X-API-Key", caller)], None);
    // The worker's copy of the targets may be up to 10 s old.
    eventually(
        Duration::from_secs(15),
        "the experiment applies to the path",
        || {
            call("probe")
                .header("x-experiment")
                .filter(|h| h.starts_with(&format!("{name}=")))
                .map(|_| ())
        },
    );
    let callers: Vec<String> = (0..40).map(|i| format!("caller-{i}")).collect();
    let mut cohort = std::collections::HashMap::new();
    for round in 0..3 {
        for c in &callers {
            let r = call(c);
            assert_eq!(r.status, 200, "{}", r.text());
            let arm = r
                .header("x-experiment")
                .unwrap()
                .split('=')
                .nth(1)
                .unwrap()
                .to_string();
            if round == 0 {
                cohort.insert(c.clone(), arm);
            }
        }
        std::thread::sleep(Duration::from_millis(1300));
    }
    // The alarm (every second in the tests) promotes the treatment, once.
    let v = eventually(Duration::from_secs(20), "promotion by the alarm", || {
        let v = s.rt.get(&format!("/v1/experiments/{name}")).json();
        (v["status"] == "concluded").then_some(v)
    });
    assert_eq!(v["winner"], "treatment", "{v}");
    assert_eq!(v["promotions"], 1);
    assert_eq!(v["decision"]["kind"], "promote");
    let promotes = v["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "promote")
        .count();
    assert_eq!(promotes, 1, "one promotion recorded");
    let arms = &v["variants"];
    let rate = |i: usize| arms[i]["metrics"]["cache_hit"]["mean"].as_f64().unwrap();
    assert!(
        rate(1) > rate(0) + 0.3,
        "treatment hit rate {} vs {}",
        rate(1),
        rate(0)
    );
    // The gateway now uses the winner's TTL for a caller who was in the control: a second call
    // 1.5 s later is a cache hit (the control's 1 s TTL would have expired).
    let was_control = cohort
        .iter()
        .find(|(_, arm)| *arm == "control")
        .map(|(c, _)| c.clone())
        .expect("some caller was in the control");
    // A worker isolate reuses a caller's cohort for up to 5 s.
    eventually(
        Duration::from_secs(10),
        "the winner applies to a former control caller",
        || {
            (call(&was_control).header("x-experiment")
                == Some(format!("{name}=treatment").as_str()))
            .then_some(())
        },
    );
    // Once the control's 1 s entry has expired, the next miss is filled with the winner's TTL.
    std::thread::sleep(Duration::from_millis(1200));
    let fill = call(&was_control);
    assert_eq!(
        fill.header("x-experiment"),
        Some(format!("{name}=treatment").as_str())
    );
    std::thread::sleep(Duration::from_millis(1500));
    let again = call(&was_control);
    assert_eq!(
        again.header("x-cache"),
        Some("HIT"),
        "filled with the winner's TTL"
    );
}

#[test]
fn a_guardrail_regression_rolls_the_treatment_back() {
    let rt = &shared().rt;
    let name = unique("guard");
    let def = json!({"min_sample": 20, "primary": "cache_hit", "guardrails": ["latency_ms"],
    "variants": [
        {"name": "control", "weight": 1, "params": {"cache_ttl_s": 60}},
        {"name": "treatment", "weight": 1, "params": {"cache_ttl_s": 600}}
    ]});
    assert_eq!(
        rt.admin("PUT", &format!("/v1/experiments/{name}"), &def)
            .status,
        201
    );
    // Same hit rate; the treatment is twice as slow.
    let mut treated = None;
    for i in 0..60 {
        let u = format!("u{i}");
        let arm = assign(&name, &u)["variant"].as_str().unwrap().to_string();
        let base = if arm == "treatment" { 200.0 } else { 100.0 };
        if arm == "treatment" {
            treated = Some(u.clone());
        }
        for k in 0..2 {
            let r = rt.post_json(
                &format!("/v1/experiments/{name}/events"),
                &json!({"unit": u, "metrics": {"cache_hit": (i + k) % 2, "latency_ms": base + f64::from(k * 10 + i % 7)}}),
            );
            // Recorded until the alarm rolls the treatment back (possibly mid-loop).
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    let v = eventually(Duration::from_secs(15), "rollback by the alarm", || {
        let v = rt.get(&format!("/v1/experiments/{name}")).json();
        (v["status"] == "rolled_back").then_some(v)
    });
    assert_eq!(v["decision"]["kind"], "rollback");
    assert_eq!(v["decision"]["arm"], "treatment");
    assert!(v["decision"]["reason"]
        .as_str()
        .unwrap()
        .contains("latency_ms"));
    assert_eq!(v["variants"][1]["retired"], true);
    assert_eq!(v["promotions"], 0, "a regressing arm is never promoted");
    let a = assign(&name, &treated.expect("some unit was treated"));
    assert_eq!(
        a["variant"], "control",
        "rolled back to the control's parameters"
    );
    assert_eq!(a["params"]["cache_ttl_s"], 60);
    // Analysing again (an alarm retry) changes nothing.
    let again = rt.admin(
        "POST",
        &format!("/v1/experiments/{name}/analyse"),
        &json!({}),
    );
    let rollbacks = again.json()["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "rollback")
        .count();
    assert_eq!(rollbacks, 1);
}
