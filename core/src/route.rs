//! The public HTTP surface as data: `route(method, path)` -> [`Route`].
//!
//! Parsing routes here (instead of in a router inside the worker) keeps every path rule, every
//! percent-decoding rule and every 404/405 decision testable natively.
//! Keys may contain `/`: the remaining segments are decoded one by one and joined with `/`.

use crate::validate;
use crate::GatewayError;

/// Rate-limit operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitOp {
    /// `POST`: consume tokens.
    Take,
    /// `GET`: decide without consuming.
    Peek,
    /// `DELETE` (admin): forget the key's state.
    Reset,
}

/// Cache operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOp {
    /// `GET`/`HEAD`.
    Get,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
}

/// Components with a per-object `stats` endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// `ratelimit` shards (`0..RATE_LIMIT_SHARDS`).
    RateLimit,
    /// `cache` shards (`0..CACHE_SHARDS`).
    Cache,
    /// `providers` groups.
    Providers,
    /// `experiments` by name.
    Experiments,
    /// `aggregator` shards (`0..AGGREGATOR_SHARDS`).
    Aggregator,
}

/// A matched route with its decoded, validated parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /health`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `GET /v1/metrics/series`: time series for charts.
    MetricsSeries,
    /// `GET /dashboard`: the live dashboard page.
    Dashboard,
    /// `GET /v1/alerts`: active alerts and history.
    Alerts,
    /// `GET /v1/reports/daily`: the latest daily report.
    DailyReport,
    /// `POST /v1/rollup/run` (admin): run the root aggregator's alarm work now.
    RollupRun,
    /// `/v1/ratelimit/{policy}/{key...}`.
    RateLimit {
        /// Policy name.
        policy: String,
        /// Caller key.
        key: String,
        /// Operation.
        op: RateLimitOp,
    },
    /// `/v1/cache/{namespace}/{key...}`.
    Cache {
        /// Namespace.
        namespace: String,
        /// Key within the namespace.
        key: String,
        /// Operation.
        op: CacheOp,
    },
    /// `ANY /v1/proxy/{group}/{path...}`: the gateway's main job.
    Proxy {
        /// Provider group.
        group: String,
        /// The rest of the path, still percent-encoded, forwarded as is.
        path: String,
    },
    /// `POST /v1/cache/purge` (admin): purge by tags on every shard.
    CachePurge,
    /// `GET /v1/providers`.
    ProvidersList,
    /// `GET /v1/providers/{group}`.
    ProviderStatus(String),
    /// `PUT /v1/providers/{group}` (admin).
    ProviderConfigure(String),
    /// `POST /v1/providers/{group}/pick`.
    ProviderPick(String),
    /// `POST /v1/providers/{group}/report`.
    ProviderReport(String),
    /// `GET /v1/experiments/{name}`.
    ExperimentGet(String),
    /// `PUT /v1/experiments/{name}` (admin).
    ExperimentDefine(String),
    /// `POST /v1/experiments/{name}/assign`.
    ExperimentAssign(String),
    /// `POST /v1/experiments/{name}/events`.
    ExperimentEvent(String),
    /// `POST /v1/experiments/{name}/analyse` (admin): analyse now, promote if the rule holds.
    ExperimentAnalyse(String),
    /// `GET /v1/experiments`: every experiment with its status and decision.
    ExperimentsList,
    /// `DELETE /v1/experiments/{name}` (admin).
    ExperimentDelete(String),
    /// `POST /v1/experiments/{name}/pause` (admin).
    ExperimentPause(String),
    /// `POST /v1/experiments/{name}/resume` (admin).
    ExperimentResume(String),
    /// `POST /v1/experiments/{name}/arms/{arm}/retire` (admin).
    ExperimentRetire {
        /// Experiment name.
        name: String,
        /// Arm name.
        arm: String,
    },
    /// `GET /v1/policies`: effective rate-limit policies.
    PoliciesList,
    /// `GET /v1/policies/{name}`.
    PolicyGet(String),
    /// `PUT /v1/policies/{name}` (admin).
    PolicyPut(String),
    /// `DELETE /v1/policies/{name}` (admin).
    PolicyDelete(String),
    /// `POST /v1/events`: metric events.
    EventsIngest,
    /// `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`: OpenAI-compatible.
    Ai(crate::ai::Endpoint),
    /// `GET /v1/models`: the configured models, in OpenAI's list shape.
    Models,
    /// `GET /v1/keys` (admin): every virtual key with its usage.
    KeysList,
    /// `POST /v1/keys` (admin): issue a key (its secret is in this answer only).
    KeyCreate,
    /// `GET /v1/keys/{id}` (admin).
    KeyGet(String),
    /// `DELETE /v1/keys/{id}` (admin): revoke.
    KeyRevoke(String),
    /// `GET /v1/stats/{component}/{id}`.
    Stats {
        /// Which kind of object.
        component: Component,
        /// Shard number or name.
        id: String,
    },
}

impl Route {
    /// Whether the route changes configuration or state that needs the admin token.
    pub fn requires_admin(&self) -> bool {
        matches!(
            self,
            Route::ProviderConfigure(_)
                | Route::ExperimentDefine(_)
                | Route::PolicyPut(_)
                | Route::ExperimentAnalyse(_)
                | Route::ExperimentDelete(_)
                | Route::RollupRun
                | Route::ExperimentPause(_)
                | Route::ExperimentResume(_)
                | Route::ExperimentRetire { .. }
                | Route::CachePurge
                | Route::PolicyDelete(_)
                | Route::KeysList
                | Route::KeyCreate
                | Route::KeyGet(_)
                | Route::KeyRevoke(_)
                | Route::RateLimit {
                    op: RateLimitOp::Reset,
                    ..
                }
        )
    }
}

fn not_allowed(method: &str, allowed: &'static str) -> GatewayError {
    GatewayError::MethodNotAllowed {
        method: method.to_string(),
        allowed: allowed.into(),
    }
}

fn rest_key(segments: &[&str]) -> Result<String, GatewayError> {
    let parts: Result<Vec<String>, _> = segments
        .iter()
        .map(|s| validate::percent_decode(s))
        .collect();
    let key = parts?.join("/");
    validate::key("key", &key)?;
    Ok(key)
}

fn name(what: &'static str, segment: &str) -> Result<String, GatewayError> {
    let decoded = validate::percent_decode(segment)?;
    validate::name(what, &decoded)?;
    Ok(decoded)
}

/// Matches `method` and `path` (still percent-encoded, without query) to a route.
pub fn route(method: &str, path: &str) -> Result<Route, GatewayError> {
    let not_found = || GatewayError::NotFound(format!("no route for {path}"));
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let segs: Vec<&str> = trimmed.split('/').collect();
    let m = method;
    let is = |want: &str| m.eq_ignore_ascii_case(want);
    match segs.as_slice() {
        ["health"] => {
            if is("GET") || is("HEAD") {
                Ok(Route::Health)
            } else {
                Err(not_allowed(m, "GET, HEAD"))
            }
        }
        ["metrics"] => {
            if is("GET") {
                Ok(Route::Metrics)
            } else {
                Err(not_allowed(m, "GET"))
            }
        }
        ["dashboard"] | ["v1", "alerts"] => {
            if !is("GET") {
                return Err(not_allowed(m, "GET"));
            }
            Ok(if segs[0] == "dashboard" {
                Route::Dashboard
            } else {
                Route::Alerts
            })
        }
        ["v1", "metrics", "series"] | ["v1", "reports", "daily"] => {
            if !is("GET") {
                return Err(not_allowed(m, "GET"));
            }
            Ok(if segs.get(1) == Some(&"metrics") {
                Route::MetricsSeries
            } else {
                Route::DailyReport
            })
        }
        ["v1", "chat", "completions"] | ["v1", "completions"] | ["v1", "embeddings"] => {
            if !is("POST") {
                return Err(not_allowed(m, "POST"));
            }
            Ok(Route::Ai(match segs[1] {
                "chat" => crate::ai::Endpoint::ChatCompletions,
                "completions" => crate::ai::Endpoint::Completions,
                _ => crate::ai::Endpoint::Embeddings,
            }))
        }
        ["v1", "models"] => {
            if is("GET") {
                Ok(Route::Models)
            } else {
                Err(not_allowed(m, "GET"))
            }
        }
        ["v1", "keys"] => {
            if is("GET") {
                Ok(Route::KeysList)
            } else if is("POST") {
                Ok(Route::KeyCreate)
            } else {
                Err(not_allowed(m, "GET, POST"))
            }
        }
        ["v1", "keys", id] => {
            crate::keys::validate_id(id)?;
            if is("GET") {
                Ok(Route::KeyGet(id.to_string()))
            } else if is("DELETE") {
                Ok(Route::KeyRevoke(id.to_string()))
            } else {
                Err(not_allowed(m, "GET, DELETE"))
            }
        }
        ["v1", "rollup", "run"] => {
            if is("POST") {
                Ok(Route::RollupRun)
            } else {
                Err(not_allowed(m, "POST"))
            }
        }
        ["v1", "ratelimit", policy, rest @ ..] if !rest.is_empty() => {
            let op = if is("POST") {
                RateLimitOp::Take
            } else if is("GET") {
                RateLimitOp::Peek
            } else if is("DELETE") {
                RateLimitOp::Reset
            } else {
                return Err(not_allowed(m, "GET, POST, DELETE"));
            };
            Ok(Route::RateLimit {
                policy: name("policy", policy)?,
                key: rest_key(rest)?,
                op,
            })
        }
        ["v1", "proxy", group, rest @ ..] => {
            let path = rest.join("/");
            if path.len() > 2048 || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Err(GatewayError::bad_request(
                    "invalid-path",
                    "proxied path is too long or has control characters",
                ));
            }
            Ok(Route::Proxy {
                group: name("group", group)?,
                path,
            })
        }
        ["v1", "cache", "purge"] => {
            if is("POST") {
                Ok(Route::CachePurge)
            } else {
                Err(not_allowed(m, "POST"))
            }
        }
        ["v1", "cache", namespace, rest @ ..] if !rest.is_empty() => {
            let op = if is("GET") || is("HEAD") {
                CacheOp::Get
            } else if is("PUT") {
                CacheOp::Put
            } else if is("DELETE") {
                CacheOp::Delete
            } else {
                return Err(not_allowed(m, "GET, HEAD, PUT, DELETE"));
            };
            Ok(Route::Cache {
                namespace: name("namespace", namespace)?,
                key: rest_key(rest)?,
                op,
            })
        }
        ["v1", "providers"] => {
            if is("GET") {
                Ok(Route::ProvidersList)
            } else {
                Err(not_allowed(m, "GET"))
            }
        }
        ["v1", "providers", group] => {
            let g = name("group", group)?;
            if is("GET") {
                Ok(Route::ProviderStatus(g))
            } else if is("PUT") {
                Ok(Route::ProviderConfigure(g))
            } else {
                Err(not_allowed(m, "GET, PUT"))
            }
        }
        ["v1", "providers", group, action @ ("pick" | "report")] => {
            if !is("POST") {
                return Err(not_allowed(m, "POST"));
            }
            let g = name("group", group)?;
            Ok(if *action == "pick" {
                Route::ProviderPick(g)
            } else {
                Route::ProviderReport(g)
            })
        }
        ["v1", "experiments"] => {
            if is("GET") {
                Ok(Route::ExperimentsList)
            } else {
                Err(not_allowed(m, "GET"))
            }
        }
        ["v1", "experiments", exp] => {
            let n = name("experiment", exp)?;
            if is("GET") {
                Ok(Route::ExperimentGet(n))
            } else if is("PUT") {
                Ok(Route::ExperimentDefine(n))
            } else if is("DELETE") {
                Ok(Route::ExperimentDelete(n))
            } else {
                Err(not_allowed(m, "GET, PUT, DELETE"))
            }
        }
        ["v1", "experiments", exp, action @ ("assign" | "events" | "analyse" | "pause" | "resume")] =>
        {
            if !is("POST") {
                return Err(not_allowed(m, "POST"));
            }
            let n = name("experiment", exp)?;
            Ok(match *action {
                "assign" => Route::ExperimentAssign(n),
                "events" => Route::ExperimentEvent(n),
                "pause" => Route::ExperimentPause(n),
                "resume" => Route::ExperimentResume(n),
                _ => Route::ExperimentAnalyse(n),
            })
        }
        ["v1", "experiments", exp, "arms", arm, "retire"] => {
            if !is("POST") {
                return Err(not_allowed(m, "POST"));
            }
            Ok(Route::ExperimentRetire {
                name: name("experiment", exp)?,
                arm: name("arm", arm)?,
            })
        }
        ["v1", "policies"] => {
            if is("GET") {
                Ok(Route::PoliciesList)
            } else {
                Err(not_allowed(m, "GET"))
            }
        }
        ["v1", "policies", policy] => {
            let n = name("policy", policy)?;
            if is("GET") {
                Ok(Route::PolicyGet(n))
            } else if is("PUT") {
                Ok(Route::PolicyPut(n))
            } else if is("DELETE") {
                Ok(Route::PolicyDelete(n))
            } else {
                Err(not_allowed(m, "GET, PUT, DELETE"))
            }
        }
        ["v1", "events"] => {
            if is("POST") {
                Ok(Route::EventsIngest)
            } else {
                Err(not_allowed(m, "POST"))
            }
        }
        ["v1", "stats", component, id] => {
            let component = match *component {
                "ratelimit" => Component::RateLimit,
                "cache" => Component::Cache,
                "providers" => Component::Providers,
                "experiments" => Component::Experiments,
                "aggregator" => Component::Aggregator,
                _ => return Err(not_found()),
            };
            if !is("GET") {
                return Err(not_allowed(m, "GET"));
            }
            Ok(Route::Stats {
                component,
                id: name("id", id)?,
            })
        }
        _ => Err(not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_every_route() {
        assert_eq!(route("GET", "/health").unwrap(), Route::Health);
        assert_eq!(
            route("POST", "/v1/ratelimit/default/user%3A42").unwrap(),
            Route::RateLimit {
                policy: "default".into(),
                key: "user:42".into(),
                op: RateLimitOp::Take
            }
        );
        assert_eq!(
            route("GET", "/v1/cache/titles/a/b%20c").unwrap(),
            Route::Cache {
                namespace: "titles".into(),
                key: "a/b c".into(),
                op: CacheOp::Get
            }
        );
        assert_eq!(
            route("POST", "/v1/providers/llm/pick").unwrap(),
            Route::ProviderPick("llm".into())
        );
        assert_eq!(
            route("PATCH", "/v1/proxy/llm/v1/chat%2Fx/completions").unwrap(),
            Route::Proxy {
                group: "llm".into(),
                path: "v1/chat%2Fx/completions".into()
            }
        );
        assert_eq!(
            route("GET", "/v1/proxy/llm/a%00b").unwrap().clone(),
            Route::Proxy {
                group: "llm".into(),
                path: "a%00b".into()
            }
        );
        assert_eq!(
            route("GET", "/v1/proxy/bad%20group/x")
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            route("PUT", "/v1/experiments/ttl").unwrap(),
            Route::ExperimentDefine("ttl".into())
        );
        assert_eq!(
            route("GET", "/v1/stats/cache/3").unwrap(),
            Route::Stats {
                component: Component::Cache,
                id: "3".into()
            }
        );
    }

    #[test]
    fn wrong_method_is_405_unknown_path_is_404_bad_segment_is_400() {
        assert_eq!(route("PATCH", "/v1/cache/a/b").unwrap_err().status(), 405);
        assert_eq!(route("GET", "/v2/nothing").unwrap_err().status(), 404);
        assert_eq!(route("GET", "/v1/cache/a").unwrap_err().status(), 404);
        assert_eq!(
            route("GET", "/v1/cache/bad%20ns/k").unwrap_err().status(),
            400
        );
        assert_eq!(route("GET", "/v1/cache/ns/%00").unwrap_err().status(), 400);
        assert_eq!(route("GET", "/v1/cache/ns/%zz").unwrap_err().status(), 400);
    }

    #[test]
    fn admin_routes_are_flagged() {
        assert!(route("PUT", "/v1/providers/g").unwrap().requires_admin());
        assert!(route("DELETE", "/v1/ratelimit/p/k")
            .unwrap()
            .requires_admin());
        assert!(!route("POST", "/v1/ratelimit/p/k").unwrap().requires_admin());
        assert!(route("PUT", "/v1/policies/p").unwrap().requires_admin());
        assert!(route("DELETE", "/v1/policies/p").unwrap().requires_admin());
        assert!(!route("GET", "/v1/policies/p").unwrap().requires_admin());
        for (m, p) in [
            ("DELETE", "/v1/experiments/e"),
            ("POST", "/v1/experiments/e/pause"),
            ("POST", "/v1/experiments/e/resume"),
            ("POST", "/v1/experiments/e/arms/treatment/retire"),
            ("POST", "/v1/experiments/e/analyse"),
        ] {
            assert!(route(m, p).unwrap().requires_admin(), "{m} {p}");
        }
        assert!(!route("GET", "/v1/experiments").unwrap().requires_admin());
        assert!(route("POST", "/v1/rollup/run").unwrap().requires_admin());
        assert_eq!(route("GET", "/dashboard").unwrap(), Route::Dashboard);
        assert_eq!(route("GET", "/v1/alerts").unwrap(), Route::Alerts);
        assert_eq!(
            route("GET", "/v1/metrics/series").unwrap(),
            Route::MetricsSeries
        );
        assert_eq!(
            route("GET", "/v1/reports/daily").unwrap(),
            Route::DailyReport
        );
        assert_eq!(route("POST", "/dashboard").unwrap_err().status(), 405);
        assert_eq!(
            route("POST", "/v1/experiments/e/arms/t/retire").unwrap(),
            Route::ExperimentRetire {
                name: "e".into(),
                arm: "t".into()
            }
        );
    }

    #[test]
    fn ai_and_key_routes() {
        use crate::ai::Endpoint;
        assert_eq!(
            route("POST", "/v1/chat/completions").unwrap(),
            Route::Ai(Endpoint::ChatCompletions)
        );
        assert_eq!(
            route("POST", "/v1/completions").unwrap(),
            Route::Ai(Endpoint::Completions)
        );
        assert_eq!(
            route("POST", "/v1/embeddings").unwrap(),
            Route::Ai(Endpoint::Embeddings)
        );
        assert_eq!(
            route("GET", "/v1/chat/completions").unwrap_err().status(),
            405
        );
        assert_eq!(route("GET", "/v1/models").unwrap(), Route::Models);
        assert_eq!(route("POST", "/v1/keys").unwrap(), Route::KeyCreate);
        let id = "key_0123456789abcdef";
        assert_eq!(
            route("DELETE", &format!("/v1/keys/{id}")).unwrap(),
            Route::KeyRevoke(id.into())
        );
        assert_eq!(route("GET", "/v1/keys/nope").unwrap_err().status(), 400);
        assert!(Route::KeyCreate.requires_admin() && Route::KeyRevoke(id.into()).requires_admin());
        assert!(!Route::Ai(Endpoint::Embeddings).requires_admin());
    }
}
