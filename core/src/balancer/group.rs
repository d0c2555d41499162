//! One provider group as `ProviderHealthDO` holds it: the [`Balancer`] plus the group's name,
//! driven by the object's messages. [`Group::handle`] answers a message and lists the rows to
//! write ([`Write`]); the adapter only loads, persists and answers.

use super::{Balancer, EjectionPolicy, ProviderHealth, ProviderSpec, Strategy};
use crate::protocol::providers::{GroupStatus, ProviderStatus, Request, Response};
use crate::protocol::ObjectStats;
use crate::{GatewayError, UnixMillis};

/// A row the object must write before it answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Upsert one provider's health.
    Health {
        /// Provider name.
        provider: String,
        /// Its state.
        state: Box<ProviderHealth>,
    },
    /// Replace the group: its name, providers (in order) and strategy; health rows of providers
    /// no longer in it are deleted.
    Replace {
        /// Group name.
        group: String,
        /// Providers, in order.
        specs: Vec<ProviderSpec>,
        /// Strategy.
        strategy: Strategy,
    },
}

/// A loaded provider group.
#[derive(Debug, Clone)]
pub struct Group {
    name: String,
    balancer: Balancer,
}

impl Group {
    /// Rebuilds a group from its stored parts. Health rows are postcard blobs; one that no longer
    /// decodes (written by an older layout) is dropped (that provider starts fresh) rather than
    /// failing the whole group: health is a cache of recent outcomes, not acknowledged data.
    pub fn restore(
        name: String,
        specs: Vec<ProviderSpec>,
        strategy: Strategy,
        health: Vec<(String, Vec<u8>)>,
    ) -> Group {
        let mut balancer = Balancer::new(specs, EjectionPolicy::default()).with_strategy(strategy);
        for (provider, bytes) in health {
            if let Ok(h) = postcard::from_bytes::<ProviderHealth>(&bytes) {
                balancer.restore_health(&provider, h);
            }
        }
        Group { name, balancer }
    }

    /// The group for a first use: the stored providers, else the configured ones (which must
    /// then be stored: the returned write), else 404.
    pub fn first_use(
        stored_name: Option<String>,
        stored: Vec<ProviderSpec>,
        configured: Option<&Vec<ProviderSpec>>,
        asked: Option<&str>,
    ) -> Result<(String, Vec<ProviderSpec>, Option<Write>), GatewayError> {
        if !stored.is_empty() {
            return Ok((stored_name.unwrap_or_default(), stored, None));
        }
        let group = asked.ok_or_else(|| GatewayError::NotFound("no providers".into()))?;
        let specs = configured
            .cloned()
            .ok_or_else(|| GatewayError::NotFound(format!("no provider group named {group}")))?;
        let write = Write::Replace {
            group: group.into(),
            specs: specs.clone(),
            strategy: Strategy::default(),
        };
        Ok((group.to_string(), specs, Some(write)))
    }

    /// An admin replacement of the group's providers: validated, with the health of providers
    /// that stay kept (`health` are the stored rows).
    pub fn configure(
        group: String,
        specs: Vec<ProviderSpec>,
        strategy: Strategy,
        health: Vec<(String, Vec<u8>)>,
    ) -> Result<(Group, Write), GatewayError> {
        super::validate_group(&specs)?;
        let kept = health
            .into_iter()
            .filter(|(n, _)| specs.iter().any(|s| &s.name == n))
            .collect();
        let write = Write::Replace {
            group: group.clone(),
            specs: specs.clone(),
            strategy,
        };
        Ok((Group::restore(group, specs, strategy, kept), write))
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The balancer (read-only).
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    fn health_of(&self, provider: &str, i: Option<usize>) -> Option<Write> {
        let state = Box::new(self.balancer.health(i?)?.clone());
        Some(Write::Health {
            provider: provider.into(),
            state,
        })
    }

    /// Answers a message other than `Configure` (which replaces the group: [`Group::configure`])
    /// and `Status` ([`Group::status`]). `rand` is a fresh random number for the weighted draw.
    pub fn handle(
        &mut self,
        msg: Request,
        now: UnixMillis,
        rand: u64,
    ) -> Result<(Response, Vec<Write>), GatewayError> {
        let mut writes = Vec::new();
        let reply = match msg {
            Request::Pick {
                exclude, prefer, ..
            } => {
                let pick = self
                    .balancer
                    .pick_with(now, &exclude, rand, &prefer)
                    .ok_or_else(|| {
                        GatewayError::Unavailable("every provider of the group was tried".into())
                    })?;
                Response::Picked(pick)
            }
            Request::PickRanked { prefer, max, .. } => Response::Candidates {
                picks: self
                    .balancer
                    .pick_ranked(now, rand, &prefer, usize::from(max)),
                budget_resets_in_ms: self.balancer.budgets_reset_in_ms(now),
            },
            Request::Settle {
                outcomes, released, ..
            } => {
                for (provider, panic) in released {
                    self.balancer.release(&provider, panic, now);
                }
                self.report_all(outcomes, now, &mut writes);
                Response::Reported
            }
            Request::ReportMany { outcomes, .. } => {
                self.report_all(outcomes, now, &mut writes);
                Response::Reported
            }
            Request::Report {
                group,
                provider,
                outcome,
            } => {
                let i = self
                    .balancer
                    .report(&provider, outcome, now)
                    .ok_or_else(|| {
                        GatewayError::NotFound(format!("no provider named {provider} in {group}"))
                    })?;
                writes.extend(self.health_of(&provider, Some(i)));
                Response::Reported
            }
            Request::Configure { .. } | Request::Status { .. } => {
                return Err(GatewayError::Internal(
                    "configure and status are answered by Group::configure and Group::status"
                        .into(),
                ))
            }
        };
        Ok((reply, writes))
    }

    fn report_all(
        &mut self,
        outcomes: Vec<(String, super::Outcome)>,
        now: UnixMillis,
        writes: &mut Vec<Write>,
    ) {
        for (provider, outcome) in outcomes {
            let i = self.balancer.report(&provider, outcome, now);
            writes.extend(self.health_of(&provider, i));
        }
    }

    /// The group's live status.
    pub fn status(&self, now: UnixMillis, object: ObjectStats) -> GroupStatus {
        let b = &self.balancer;
        let providers = b
            .specs()
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let health = b.health(i).cloned().unwrap_or_default();
                ProviderStatus {
                    spec: spec.clone(),
                    healthy: b.in_rotation(i, now),
                    budget_left_micro_usd: b.budget_left(i, now),
                    circuit: health.circuit_at(now),
                    latency_p50_ms: health.latency.quantile(0.5),
                    latency_p95_ms: health.latency.quantile(0.95),
                    latency_p99_ms: health.latency.quantile(0.99),
                    health,
                }
            })
            .collect();
        GroupStatus {
            group: self.name.clone(),
            strategy: b.strategy(),
            providers,
            object,
        }
    }

    /// What the alarm probes: (provider, health URL).
    pub fn probe_targets(&self) -> Vec<(String, String)> {
        self.balancer.probe_targets()
    }

    /// Applies the alarm's probe results; the health rows to write.
    pub fn on_probes(&mut self, results: Vec<(String, bool)>, now: UnixMillis) -> Vec<Write> {
        let mut writes = Vec::new();
        for (provider, ok) in results {
            let i = self.balancer.on_probe(&provider, ok, now);
            writes.extend(self.health_of(&provider, i));
        }
        writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::{Outcome, Preference};

    fn spec(name: &str) -> ProviderSpec {
        serde_json::from_value(serde_json::json!({ "name": name, "url": format!("http://{name}") }))
            .unwrap()
    }

    fn group() -> Group {
        Group::restore(
            "g".into(),
            vec![spec("a"), spec("b")],
            Strategy::default(),
            vec![],
        )
    }

    fn failure() -> Outcome {
        Outcome {
            ok: false,
            latency_ms: 10,
            retry_after_ms: None,
            input_tokens: 0,
            output_tokens: 0,
            error: None,
        }
    }

    #[test]
    fn a_report_writes_the_providers_health_and_an_unknown_provider_is_404() {
        let mut g = group();
        let msg = Request::Report {
            group: "g".into(),
            provider: "a".into(),
            outcome: failure(),
        };
        let (reply, writes) = g.handle(msg, UnixMillis(1_000), 0).unwrap();
        assert_eq!(reply, Response::Reported);
        assert!(
            matches!(&writes[..], [Write::Health { provider, state }] if provider == "a" && state.failures == 1)
        );
        let unknown = Request::Report {
            group: "g".into(),
            provider: "zz".into(),
            outcome: failure(),
        };
        assert!(matches!(
            g.handle(unknown, UnixMillis(1_000), 0),
            Err(GatewayError::NotFound(_))
        ));
    }

    #[test]
    fn settle_releases_and_reports_only_known_providers() {
        let mut g = group();
        let (reply, _) = g
            .handle(
                Request::PickRanked {
                    group: "g".into(),
                    prefer: Preference::default(),
                    max: 2,
                },
                UnixMillis(1_000),
                7,
            )
            .unwrap();
        let Response::Candidates { picks, .. } = reply else {
            panic!("expected candidates")
        };
        assert_eq!(picks.len(), 2);
        let msg = Request::Settle {
            group: "g".into(),
            outcomes: vec![("a".into(), failure()), ("ghost".into(), failure())],
            released: vec![("b".into(), false)],
        };
        let (_, writes) = g.handle(msg, UnixMillis(1_100), 0).unwrap();
        assert_eq!(
            writes.len(),
            1,
            "only the known provider's health is written"
        );
    }

    #[test]
    fn configure_validates_and_keeps_the_health_of_providers_that_stay() {
        let mut g = group();
        g.handle(
            Request::Report {
                group: "g".into(),
                provider: "a".into(),
                outcome: failure(),
            },
            UnixMillis(1_000),
            0,
        )
        .unwrap();
        let stored: Vec<(String, Vec<u8>)> = ["a", "b"]
            .iter()
            .filter_map(|n| {
                let i = g.balancer().position(n)?;
                Some((
                    n.to_string(),
                    postcard::to_allocvec(g.balancer().health(i)?).unwrap(),
                ))
            })
            .collect();
        let (g2, write) = Group::configure(
            "g".into(),
            vec![spec("a"), spec("c")],
            Strategy::default(),
            stored,
        )
        .unwrap();
        assert!(matches!(write, Write::Replace { ref specs, .. } if specs.len() == 2));
        let a = g2.balancer().position("a").unwrap();
        assert_eq!(g2.balancer().health(a).unwrap().failures, 1);
        assert!(Group::configure("g".into(), vec![], Strategy::default(), vec![]).is_err());
    }

    #[test]
    fn unreadable_health_starts_that_provider_fresh() {
        let g = Group::restore(
            "g".into(),
            vec![spec("a")],
            Strategy::default(),
            vec![("a".into(), vec![0xff, 0xff, 0xff])],
        );
        assert_eq!(g.balancer().health(0).unwrap().failures, 0);
    }

    #[test]
    fn first_use_falls_back_to_configuration_and_asks_to_store_it() {
        let configured = vec![spec("a")];
        let (name, specs, write) =
            Group::first_use(None, vec![], Some(&configured), Some("g")).unwrap();
        assert_eq!((name.as_str(), specs.len()), ("g", 1));
        assert!(write.is_some());
        let (_, _, none) = Group::first_use(
            Some("g".into()),
            vec![spec("b")],
            Some(&configured),
            Some("g"),
        )
        .unwrap();
        assert!(none.is_none(), "stored providers win and need no write");
        assert!(Group::first_use(None, vec![], None, Some("g")).is_err());
        assert!(Group::first_use(None, vec![], None, None).is_err());
    }
}
