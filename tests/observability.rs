//! The shipped alert rules and Grafana dashboard (`share/`, installed under
//! /usr/share/drydock/): the rules pass `promtool check rules` and their own
//! `promtool test rules`; the dashboard is valid JSON whose queries parse
//! (checked by promtool as recording rules) and use only metrics drydock
//! exports (names read from the exporter's registry).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn share() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("share")
}

/// promtool, or `None` after saying why (a failure when CI=true).
fn promtool() -> Option<PathBuf> {
    let found = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is missing: CI must install the Debian package prometheus"
        );
        eprintln!("SKIPPED: promtool is not installed (Debian package prometheus)");
    }
    found
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("running promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    // Aggregations, which may come before their `by (...)`.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
/// Followed by a parenthesised list of label names, not expressions.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression reads: identifiers that are not
/// functions, keywords, label names or inside label matchers, ranges or
/// strings. Small on purpose: enough for the queries drydock ships, and
/// promtool checks their syntax separately.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_until = |i: &mut usize, open: char, close: char| {
        let mut depth = 0;
        while *i < chars.len() {
            if chars[*i] == open {
                depth += 1;
            } else if chars[*i] == close {
                depth -= 1;
                if depth == 0 {
                    *i += 1;
                    return;
                }
            }
            *i += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => skip_until(&mut i, '{', '}'),
            '[' => skip_until(&mut i, '[', ']'),
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            c if c.is_ascii_digit() || c == '.' => {
                // A number, with its exponent or duration unit.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let call = chars.get(j) == Some(&'(');
                if LABEL_LISTS.contains(&word.as_str()) {
                    if call {
                        i = j;
                        skip_until(&mut i, '(', ')');
                    }
                } else if !call && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

fn exported() -> BTreeSet<String> {
    drydock::testing::report::metrics::exported_names()
}

#[test]
fn metric_name_extraction() {
    let names = metric_names(
        r#"histogram_quantile(0.9, sum by (le, phase) (rate(drydock_phase_duration_seconds_bucket{phase!="x y"}[5m])))
           and on(instance) time() - drydock_last_report_timestamp_seconds > 3 * 86400 or vector(0)"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "drydock_last_report_timestamp_seconds",
            "drydock_phase_duration_seconds_bucket"
        ]
    );
    let e = exported();
    for name in [
        "drydock_reboots_total",
        "drydock_phase_duration_seconds_bucket",
        "drydock_state",
        "drydock_kubernetes_version_info",
        "drydock_identity_certificate_expiry_timestamp_seconds",
    ] {
        assert!(e.contains(name), "{name} not in {e:?}");
    }
    assert!(
        !e.contains("drydock_reboots"),
        "counters are named with _total"
    );
}

fn rule_exprs(rules: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .expect("named rule")
                .to_string();
            out.push((name, rule["expr"].as_str().expect("expr").to_string()));
        }
    }
    out
}

#[test]
fn alert_rules_pass_promtool_and_use_only_exported_metrics() {
    let rules_path = share().join("prometheus/drydock.rules.yml");
    let rules: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&rules_path).unwrap()).expect("YAML");
    let exprs = rule_exprs(&rules);
    assert!(exprs.len() >= 9, "{exprs:?}");
    let exported = exported();
    for (name, expr) in &exprs {
        let used = metric_names(expr);
        assert!(!used.is_empty(), "{name} reads no metric: {expr}");
        for metric in used {
            assert!(
                exported.contains(&metric),
                "alert {name} uses {metric}, which drydock does not export"
            );
        }
    }

    // Every rule has at least one test case.
    let test_files = ["drydock.rules.test.yml", "drydock.rules.days.test.yml"];
    let cases: Vec<Value> = test_files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(share().join("prometheus").join(f)).unwrap();
            let tests: Value = serde_saphyr::from_str(&text).expect("YAML");
            tests["tests"].as_array().unwrap().clone()
        })
        .collect();
    let tested: BTreeSet<&str> = cases
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .filter_map(|c| c["alertname"].as_str().map(String::from))
        .map(|s| &*s.leak())
        .collect();
    for (name, _) in &exprs {
        assert!(
            tested.contains(name.as_str()),
            "alert {name} has no test that makes it fire"
        );
    }

    let Some(promtool) = promtool() else {
        return;
    };
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules_path));
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = run(Command::new(&promtool)
        .current_dir(share().join("prometheus"))
        .args(["test", "rules"])
        .args(test_files));
    assert!(ok && out.contains("SUCCESS"), "promtool test rules:\n{out}");
}

fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| dashboard_exprs(i, out)),
        _ => {}
    }
}

/// Grafana's own variables, as Prometheus would see them after expansion.
fn expand_grafana(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1d")
}

#[test]
fn dashboard_parses_and_uses_only_exported_metrics() {
    let path = share().join("grafana/drydock-fleet.json");
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard is JSON");
    assert_eq!(dash["uid"], "drydock-fleet");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(p["targets"].as_array().is_some_and(|t| !t.is_empty()));
    }
    let mut exprs = Vec::new();
    dashboard_exprs(&dash, &mut exprs);
    let exported = exported();
    for expr in &exprs {
        let used = metric_names(&expand_grafana(expr));
        assert!(
            used.iter().any(|m| m.starts_with("drydock_")),
            "query reads no drydock metric: {expr}"
        );
        for metric in used {
            assert!(
                exported.contains(&metric),
                "dashboard query uses {metric}, which drydock does not export: {expr}"
            );
        }
    }

    // Every query parses: promtool checks them as recording rules.
    let Some(promtool) = promtool() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rules = serde_json::json!({ "groups": [{
        "name": "dashboard",
        "rules": exprs.iter().enumerate().map(|(i, e)| serde_json::json!({
            "record": format!("dashboard:query_{i}"),
            "expr": expand_grafana(e),
        })).collect::<Vec<_>>(),
    }]});
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, serde_saphyr::to_string(&rules).unwrap()).unwrap();
    let (ok, out) = run(Command::new(&promtool).args(["check", "rules"]).arg(&file));
    assert!(ok, "a dashboard query does not parse:\n{out}");
}
