//! The JSON of a link's behaviour fields (`password`, `rules`,
//! `forward_query`, `crawlable`, `expired_url`), read from create and PATCH
//! bodies. Shapes are checked here (every problem named `rules`, …); the
//! values themselves (URLs, the rule vocabulary) by write-svc, which names
//! the field too.

use serde_json::{Map, Value};
use shortfleet_common::rule_json::{self, WHEN_KEYS};
use shortfleet_proto::v1::{RedirectRule, RuleConditions};

use crate::input::Fields;

/// A request may send more rules than a link keeps so write-svc names the
/// limit; past this the body is refused here without being copied.
const RULES_READ_MAX: usize = 64;

/// `rules` as sent: an array of `{"when": {...}, "url": "..."}`.
pub fn rules(f: &mut Fields) -> Option<Vec<RedirectRule>> {
    let parsed = match f.raw("rules")? {
        Value::Null => return None,
        Value::Array(items) if items.len() <= RULES_READ_MAX => items
            .iter()
            .map(rule)
            .collect::<Result<Vec<_>, &'static str>>(),
        Value::Array(_) => Err("at most 20 rules"),
        _ => Err("must be an array of {\"when\": {...}, \"url\": \"...\"} objects"),
    };
    match parsed {
        Ok(rules) => Some(rules),
        Err(message) => {
            f.fail("rules", message);
            None
        }
    }
}

fn rule(item: &Value) -> Result<RedirectRule, &'static str> {
    let Value::Object(item) = item else {
        return Err("each rule must be an object with when and url");
    };
    if item.keys().any(|k| k != "when" && k != "url") {
        return Err("a rule has only when and url");
    }
    let url = match item.get("url") {
        Some(Value::String(u)) => u.clone(),
        _ => return Err("each rule needs a url string"),
    };
    let when = match item.get("when") {
        Some(Value::Object(w)) => conditions(w)?,
        _ => return Err("each rule needs a when object"),
    };
    Ok(RedirectRule {
        when: Some(when),
        url,
    })
}

fn conditions(w: &Map<String, Value>) -> Result<RuleConditions, &'static str> {
    if w.keys().any(|k| !WHEN_KEYS.contains(&k.as_str())) {
        return Err("when may name only device, os, browser, country, language");
    }
    let text = |key: &str| match w.get(key) {
        None => Ok(String::new()),
        Some(Value::String(s)) if !s.chars().any(char::is_control) => Ok(s.clone()),
        Some(_) => Err("when values must be strings without control characters"),
    };
    rule_json::conditions(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        Fields::new(v.as_object().unwrap().clone(), &["rules"])
    }

    #[test]
    fn rules_parse_and_render_back() {
        let body = json!({"rules": [{"when": {"os": "ios", "country": "DE"}, "url": "https://a.example/"}]});
        let mut f = fields(body.clone());
        let rules = rules(&mut f).unwrap();
        assert!(f.finish().is_ok());
        assert_eq!(rules[0].when.as_ref().unwrap().os, "ios");
        assert_eq!(rule_json::to_json(&rules[0]), body["rules"][0]);
    }

    #[test]
    fn bad_shapes_name_rules() {
        for bad in [
            json!({"rules": {}}),
            json!({"rules": [5]}),
            json!({"rules": [{"url": "https://a/"}]}),
            json!({"rules": [{"when": {"planet": "mars"}, "url": "https://a/"}]}),
            json!({"rules": [{"when": {"os": 1}, "url": "https://a/"}]}),
            json!({"rules": [{"when": {}, "url": "https://a/", "x": 1}]}),
        ] {
            let mut f = fields(bad.clone());
            assert!(rules(&mut f).is_none());
            let p = f.finish().unwrap_err();
            assert_eq!(p.errors[0].field, "rules", "{bad}");
        }
    }
}
