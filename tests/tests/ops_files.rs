#![forbid(unsafe_code)]
//! The operator's files in ops/: the Prometheus alert rules pass `promtool check rules` and
//! their unit tests (`promtool test rules`: each alert fires on the series that mean
//! trouble, and not before), and the rules and the Grafana dashboard name only metrics the
//! proxy exposes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use fencegate::metrics::Metrics;

fn ops(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ops")
        .join(file)
}

/// The metric families the proxy's /metrics exposes.
fn exposed() -> BTreeSet<String> {
    Metrics::new(Arc::default())
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

/// The `fencegate_*` names in `text`, histogram suffixes taken off.
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("fencegate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(family.to_string());
        rest = &tail[end..];
    }
    out
}

fn assert_all_exposed(file: &str, text: &str) {
    let exposed = exposed();
    let names = named(text);
    assert!(!names.is_empty(), "{file} names no fencegate metric");
    let missing: Vec<_> = names.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "{file} names metrics the proxy does not expose: {missing:?}; exposed: {exposed:?}"
    );
}

fn promtool(args: &[&str]) {
    let dir = ops("prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool (Debian's prometheus package; scripts/test installs it): {e}")
        });
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    promtool(&["check", "rules", "fencegate-alerts.yml"]);
    promtool(&["test", "rules", "fencegate-alerts.test.yml"]);
    let rules = std::fs::read_to_string(ops("prometheus/fencegate-alerts.yml")).unwrap();
    assert_all_exposed("fencegate-alerts.yml", &rules);
}

#[test]
fn the_dashboard_is_grafana_json_over_exposed_metrics() {
    let text = std::fs::read_to_string(ops("grafana/fencegate.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "fencegate");
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("a panel id")),
            "ids unique"
        );
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{panel}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("an expression");
            assert!(expr.contains("fencegate_"), "{expr}");
        }
    }
    let vars = dash["templating"]["list"].as_array().expect("variables");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"),
        "a data source variable"
    );
    assert_all_exposed("fencegate.json", &text);
}
