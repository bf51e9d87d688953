//! The Grafana dashboard (`grafana/dashboards/cachenode.json`) queries only
//! metrics cachenode emits, and every panel is wired to the provisioned
//! Prometheus data source. Plain file parsing: no Grafana, no Prometheus.

use cachenode::metrics;
use serde_json::Value;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/grafana/dashboards/cachenode.json"
);

/// The uid of the data source in `grafana/provisioning/datasources`.
const DATASOURCE_UID: &str = "prometheus";

/// Histograms exist in Prometheus only as `_bucket`, `_sum` and `_count`.
const HISTOGRAMS: &[&str] = &[
    metrics::OPERATION_SECONDS,
    metrics::COMPUTATION_SECONDS,
    metrics::PROPAGATION_SECONDS,
];
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

fn load() -> Value {
    let text = std::fs::read_to_string(DASHBOARD)
        .unwrap_or_else(|e| panic!("cannot read {DASHBOARD}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every token of `expr` matching `cachenode_[a-z_]+` (not preceded by a
/// name character).
fn metric_tokens(expr: &str) -> Vec<&str> {
    const PREFIX: &str = "cachenode_";
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = expr[from..].find(PREFIX).map(|i| from + i) {
        let mut end = at + PREFIX.len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let glued = at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if !glued && end > at + PREFIX.len() {
            out.push(&expr[at..end]);
        }
        from = end;
    }
    out
}

/// The metric `token` names: a histogram series (`_bucket`, `_sum`,
/// `_count`) maps back to its histogram. `Err` when it names none.
fn metric_of(token: &str) -> Result<&'static str, String> {
    for suffix in HISTOGRAM_SUFFIXES {
        if let Some(base) = token.strip_suffix(suffix) {
            if let Some(h) = HISTOGRAMS.iter().find(|h| **h == base) {
                return Ok(h);
            }
        }
    }
    if HISTOGRAMS.contains(&token) {
        return Err(format!(
            "{token} is a histogram: query {token}_bucket, _sum or _count"
        ));
    }
    metrics::ALL
        .iter()
        .find(|m| **m == token)
        .copied()
        .ok_or_else(|| format!("{token} is not in cachenode::metrics::ALL"))
}

fn uid(v: &Value) -> Option<&str> {
    v.get("datasource")?.get("uid")?.as_str()
}

/// What is wrong with `dashboard`, one line per problem.
fn problems(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(panels) = dashboard["panels"].as_array().filter(|p| !p.is_empty()) else {
        return vec!["the dashboard has no panels".into()];
    };
    let mut ids = std::collections::HashSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        if !ids.insert(panel["id"].to_string()) {
            out.push(format!("{title}: panel id {} is used twice", panel["id"]));
        }
        if uid(panel) != Some(DATASOURCE_UID) {
            out.push(format!("{title}: datasource uid is not {DATASOURCE_UID:?}"));
        }
        let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
        if targets.is_empty() {
            out.push(format!("{title}: no targets"));
        }
        for target in targets {
            let ref_id = target["refId"].as_str().unwrap_or("?");
            let at = format!("{title} / {ref_id}");
            if target.get("datasource").is_some() && uid(target) != Some(DATASOURCE_UID) {
                out.push(format!("{at}: datasource uid is not {DATASOURCE_UID:?}"));
            }
            let Some(expr) = target["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                out.push(format!("{at}: no expr"));
                continue;
            };
            let tokens = metric_tokens(expr);
            if tokens.is_empty() {
                out.push(format!("{at}: expr uses no cachenode metric: {expr}"));
            }
            for token in tokens {
                if let Err(e) = metric_of(token) {
                    out.push(format!("{at}: {e}"));
                }
            }
            if !expr.contains(r#"instance=~"$instance""#) {
                out.push(format!("{at}: expr ignores the $instance variable: {expr}"));
            }
        }
    }
    out
}

#[test]
fn dashboard_queries_only_cachenode_metrics() {
    let dashboard = load();
    let found = problems(&dashboard);
    assert!(found.is_empty(), "{DASHBOARD}:\n  {}", found.join("\n  "));
}

#[test]
fn dashboard_has_the_instance_variable() {
    let dashboard = load();
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let instance = vars
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an `instance` template variable");
    assert_eq!(uid(instance), Some(DATASOURCE_UID));
    let query = instance["query"]["query"]
        .as_str()
        .or_else(|| instance["query"].as_str())
        .expect("the variable's query");
    assert_eq!(
        query,
        format!("label_values({}, instance)", metrics::RAM_BYTES)
    );
}

#[test]
fn histograms_are_in_the_list_of_all_metrics() {
    for h in HISTOGRAMS {
        assert!(metrics::ALL.contains(h), "{h}");
    }
}

/// The check itself: a typo, a bare histogram, a gauge with a histogram
/// suffix, a missing target and a wrong data source are all reported.
#[test]
fn check_catches_broken_dashboards() {
    let panel = |expr: &str| {
        serde_json::json!({
            "id": 1,
            "title": "p",
            "datasource": { "type": "prometheus", "uid": "prometheus" },
            "targets": [{ "refId": "A", "expr": expr }],
        })
    };
    let one = |p: Value| serde_json::json!({ "panels": [p] });

    let good = r#"sum(rate(cachenode_hits_total{instance=~"$instance"}[1m]))"#;
    assert_eq!(problems(&one(panel(good))), Vec::<String>::new());
    let good = r#"histogram_quantile(0.99, sum by (le) (rate(cachenode_bus_propagation_seconds_bucket{instance=~"$instance"}[1m])))"#;
    assert_eq!(problems(&one(panel(good))), Vec::<String>::new());

    for bad in [
        r#"sum(rate(cachenode_hit_total{instance=~"$instance"}[1m]))"#,
        r#"rate(cachenode_bus_propagation_second_bucket{instance=~"$instance"}[1m])"#,
        r#"rate(cachenode_operation_seconds{instance=~"$instance"}[1m])"#,
        r#"cachenode_ram_bytes_count{instance=~"$instance"}"#,
        r#"cachenode_ram_bytes{instance=~"$instance"} / cachenode_ram_entrys{instance=~"$instance"}"#,
        r#"up{instance=~"$instance"}"#,
        r#"cachenode_ram_bytes"#,
    ] {
        let found = problems(&one(panel(bad)));
        assert!(!found.is_empty(), "not caught: {bad}");
    }

    let mut no_targets = panel(good);
    no_targets["targets"] = serde_json::json!([]);
    assert!(!problems(&one(no_targets)).is_empty());

    let mut other_source = panel(good);
    other_source["datasource"]["uid"] = "loki".into();
    assert!(!problems(&one(other_source)).is_empty());
    assert!(!problems(&serde_json::json!({ "panels": [] })).is_empty());
}

#[test]
fn tokens_are_whole_metric_names() {
    assert_eq!(
        metric_tokens("a(cachenode_ram_bytes{x=\"y\"}) + my_cachenode_x + cachenode_hits_total"),
        ["cachenode_ram_bytes", "cachenode_hits_total"]
    );
}
