//! Label and field selectors: the query-string syntax
//! (`a=b,c!=d,e in (x,y),f notin (z),g,!h`, `spec.nodeName=x,status.phase!=Running`)
//! and `metav1.LabelSelector` objects (matchLabels + matchExpressions).

#[cfg(test)]
use std::collections::BTreeMap;

use serde_json::Value;

use super::kinds::{Kind, field_value};
use super::status::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq,
    NotEq,
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
    value: String,
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct LabelSelector {
    reqs: Vec<Requirement>,
}

#[cfg(test)]
type Labels = BTreeMap<String, String>;

fn parse_err(sel: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: found '{sel}', error: {why}"
    ))
}

fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
    });
    name_ok && prefix_ok
}

fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Result<Vec<&str>, ApiError> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(parse_err(s, "unbalanced ')'"));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(parse_err(s, "unbalanced '('"));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn parse_set(term: &str, rest: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| parse_err(term, "expected '(' and ')' around the value set"))?;
    let vals: Vec<String> = inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if vals.is_empty() {
        return Err(parse_err(
            term,
            "for 'in', 'notin' operators, values set can't be empty",
        ));
    }
    for v in &vals {
        if !valid_label_value(v) {
            return Err(parse_err(term, format!("invalid label value: {v:?}")));
        }
    }
    Ok(vals)
}

fn parse_term(term: &str) -> Result<Requirement, ApiError> {
    let t = term.trim();
    if let Some(key) = t.strip_prefix('!') {
        let key = key.trim();
        if !valid_label_key(key) {
            return Err(parse_err(term, format!("invalid label key {key:?}")));
        }
        return Ok(Requirement {
            key: key.to_string(),
            op: Op::DoesNotExist,
            value: String::new(),
        });
    }
    let key_end = t
        .find(|c: char| c.is_whitespace() || matches!(c, '=' | '!' | '<' | '>'))
        .unwrap_or(t.len());
    let key = &t[..key_end];
    if !valid_label_key(key) {
        return Err(parse_err(term, format!("invalid label key {key:?}")));
    }
    let rest = t[key_end..].trim_start();
    let (op, value) = if rest.is_empty() {
        (Op::Exists, String::new())
    } else if let Some(v) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        (Op::Eq, v.trim().to_string())
    } else if let Some(v) = rest.strip_prefix("!=") {
        (Op::NotEq, v.trim().to_string())
    } else if let Some(v) = rest.strip_prefix('>') {
        let n = v.trim().parse().map_err(|e| parse_err(term, e))?;
        (Op::Gt(n), String::new())
    } else if let Some(v) = rest.strip_prefix('<') {
        let n = v.trim().parse().map_err(|e| parse_err(term, e))?;
        (Op::Lt(n), String::new())
    } else if let Some(v) = rest.strip_prefix("notin") {
        (Op::NotIn(parse_set(term, v)?), String::new())
    } else if let Some(v) = rest.strip_prefix("in") {
        (Op::In(parse_set(term, v)?), String::new())
    } else {
        return Err(parse_err(
            term,
            "expected one of [=, ==, !=, in, notin, <, >]",
        ));
    };
    if matches!(op, Op::Eq | Op::NotEq) && !valid_label_value(&value) {
        return Err(parse_err(term, format!("invalid label value: {value:?}")));
    }
    Ok(Requirement {
        key: key.to_string(),
        op,
        value,
    })
}

impl LabelSelector {
    pub(super) fn parse(s: &str) -> Result<Self, ApiError> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let reqs = split_terms(s)?
            .into_iter()
            .map(parse_term)
            .collect::<Result<_, _>>()?;
        Ok(Self { reqs })
    }

    /// From a `metav1.LabelSelector` object. `None` for an invalid one.
    pub(super) fn from_object(sel: &Value) -> Option<Self> {
        let mut reqs = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(Requirement {
                    key: k.clone(),
                    op: Op::Eq,
                    value: v.as_str()?.to_string(),
                });
            }
        }
        if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e.get("key")?.as_str()?.to_string();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let op = match e.get("operator")?.as_str()? {
                    "In" => Op::In(values),
                    "NotIn" => Op::NotIn(values),
                    "Exists" => Op::Exists,
                    "DoesNotExist" => Op::DoesNotExist,
                    _ => return None,
                };
                reqs.push(Requirement {
                    key,
                    op,
                    value: String::new(),
                });
            }
        }
        Some(Self { reqs })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    #[cfg(test)]
    fn matches(&self, labels: &Labels) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.reqs.iter().all(|r| {
            let got = get(&r.key);
            match &r.op {
                Op::Eq => got == Some(r.value.as_str()),
                Op::NotEq => got != Some(r.value.as_str()),
                Op::In(vs) => got.is_some_and(|g| vs.iter().any(|v| v == g)),
                Op::NotIn(vs) => got.is_none_or(|g| !vs.iter().any(|v| v == g)),
                Op::Exists => got.is_some(),
                Op::DoesNotExist => got.is_none(),
                Op::Gt(n) => got
                    .and_then(|g| g.parse::<i64>().ok())
                    .is_some_and(|g| g > *n),
                Op::Lt(n) => got
                    .and_then(|g| g.parse::<i64>().ok())
                    .is_some_and(|g| g < *n),
            }
        })
    }

    pub(super) fn matches_object(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        self.is_empty()
            || self.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }
}

/// A parsed field selector: terms ANDed, `=`/`==`/`!=` only.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

/// Splits on an unescaped `sep`, unescaping `\,` `\=` `\\`.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(last)) = (chars.next(), out.last_mut()) {
                    if n != sep {
                        last.push('\\');
                    }
                    last.push(n);
                }
            }
            c if c == sep => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl FieldSelector {
    pub(super) fn parse(s: &str, kind: Kind) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { terms });
        }
        for term in split_unescaped(s, ',') {
            let (key, eq, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                )));
            };
            let key = key.trim();
            let known = key == "metadata.name"
                || (key == "metadata.namespace" && kind.info().namespaced)
                || kind.info().field_selectors.contains(&key);
            if !known {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {key}"
                )));
            }
            terms.push((key.to_string(), eq, unescape(value)));
        }
        Ok(Self { terms })
    }

    pub(super) fn matches(&self, kind: Kind, obj: &Value) -> bool {
        self.terms
            .iter()
            .all(|(k, eq, v)| (field_value(kind, obj, k) == *v) == *eq)
    }

    /// The `metadata.name=X` term, if the selector pins one name.
    pub(super) fn pinned_name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|(k, eq, _)| k == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_operators() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        let m = |s: &str| LabelSelector::parse(s).map(|sel| sel.matches(&l));
        assert_eq!(m("app=web").ok(), Some(true));
        assert_eq!(m("app==web,tier=front").ok(), Some(true));
        assert_eq!(m("app!=web").ok(), Some(false));
        assert_eq!(m("missing!=x").ok(), Some(true));
        assert_eq!(m("tier in (front, back)").ok(), Some(true));
        assert_eq!(m("tier notin (front)").ok(), Some(false));
        assert_eq!(m("missing notin (front)").ok(), Some(true));
        assert_eq!(m("app,!missing").ok(), Some(true));
        assert_eq!(m("!app").ok(), Some(false));
        assert_eq!(m("n>4,n<6").ok(), Some(true));
        assert_eq!(m("").ok(), Some(true));
        assert!(m("app in (a").is_err());
        assert!(m("app=in valid").is_err());
        assert!(m("=x").is_err());
    }

    #[test]
    fn field_selector_equality_and_escapes() {
        let pod = json!({"metadata": {"name": "a,b", "namespace": "ns"},
                         "spec": {"nodeName": "w1"}, "status": {"phase": "Running"}});
        let fs = FieldSelector::parse("spec.nodeName=w1,status.phase!=Succeeded", Kind::Pod);
        assert!(fs.as_ref().is_ok_and(|f| f.matches(Kind::Pod, &pod)));
        let fs = FieldSelector::parse(r"metadata.name=a\,b", Kind::Pod);
        assert!(fs.as_ref().is_ok_and(|f| f.matches(Kind::Pod, &pod)));
        let fs = FieldSelector::parse("spec.nodeName==w2", Kind::Pod);
        assert!(fs.as_ref().is_ok_and(|f| !f.matches(Kind::Pod, &pod)));
        assert!(FieldSelector::parse("spec.nodeName=w1", Kind::Lease).is_err());
        assert!(FieldSelector::parse("nonsense", Kind::Pod).is_err());
    }

    #[test]
    fn label_selector_object() {
        let sel = json!({"matchLabels": {"app": "web"},
                         "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]});
        let s = LabelSelector::from_object(&sel);
        assert!(
            s.as_ref()
                .is_some_and(|s| s.matches(&labels(&[("app", "web"), ("tier", "front")])))
        );
        assert!(
            s.as_ref()
                .is_some_and(|s| !s.matches(&labels(&[("app", "web")])))
        );
        assert!(LabelSelector::from_object(&json!({})).is_some_and(|s| s.is_empty()));
    }
}
