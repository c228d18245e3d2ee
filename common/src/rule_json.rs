//! A redirect rule as JSON: `{"when": {"os": "ios", …}, "url": "…"}`, with
//! empty conditions left out. One shape for the REST link object (gateway)
//! and the `rules` jsonb column (write-svc), so the two cannot drift.

use serde_json::{Map, Value, json};
use shortfleet_proto::v1::{RedirectRule, RuleConditions};

/// The conditions a rule's `when` may name, in the order they are shown.
pub const WHEN_KEYS: [&str; 5] = ["device", "os", "browser", "country", "language"];

/// One rule as JSON.
pub fn to_json(rule: &RedirectRule) -> Value {
    let w = rule.when.clone().unwrap_or_default();
    let mut when = Map::new();
    for (key, value) in WHEN_KEYS
        .into_iter()
        .zip([w.device, w.os, w.browser, w.country, w.language])
    {
        if !value.is_empty() {
            when.insert(key.into(), Value::String(value));
        }
    }
    json!({"when": when, "url": rule.url})
}

/// Conditions from a `when` object, reading each key with `text` (which
/// decides what a missing or mistyped value becomes).
pub fn conditions<E>(mut text: impl FnMut(&str) -> Result<String, E>) -> Result<RuleConditions, E> {
    Ok(RuleConditions {
        device: text("device")?,
        os: text("os")?,
        browser: text("browser")?,
        country: text("country")?,
        language: text("language")?,
    })
}

/// Rules back from JSON this module wrote (a stored column): anything
/// missing reads as empty.
pub fn from_stored(value: &Value) -> Vec<RedirectRule> {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let Some(rules) = value.as_array() else {
        return Vec::new();
    };
    rules
        .iter()
        .map(|r| {
            let when = r.get("when").unwrap_or(&Value::Null);
            let conditions = conditions(|k| Ok::<_, std::convert::Infallible>(text(when, k)));
            RedirectRule {
                when: Some(conditions.unwrap_or_default()),
                url: text(r, "url"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_round_trip_leaving_empty_conditions_out() {
        let rule = RedirectRule {
            when: Some(RuleConditions {
                os: "ios".into(),
                country: "DE".into(),
                ..Default::default()
            }),
            url: "https://a.example/".into(),
        };
        let value = to_json(&rule);
        assert_eq!(
            value,
            json!({"when": {"os": "ios", "country": "DE"}, "url": "https://a.example/"})
        );
        assert_eq!(from_stored(&Value::Array(vec![value])), vec![rule]);
        assert!(from_stored(&Value::Null).is_empty());
    }
}
