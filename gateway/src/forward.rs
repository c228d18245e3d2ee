//! `forward_query`: the redirect request's query string appended to the
//! target's. The target's own parameters come first, then the request's,
//! both exactly as sent (no re-encoding, duplicates kept: the target decides
//! what a repeated name means). A fragment in the target stays last. The
//! result is bounded like any target URL ([`MAX_LOCATION`]); past it the
//! redirect answers 414 rather than a truncated address.

use std::borrow::Cow;

/// The longest `Location` we send: the target URL bound of the fleet.
pub const MAX_LOCATION: usize = shortfleet_common::input::URL_MAX;

#[derive(Debug, PartialEq, Eq)]
pub struct TooLong;

/// `target` with `query` (the request's raw query, without `?`) merged in.
pub fn merge<'t>(target: &'t str, query: Option<&str>) -> Result<Cow<'t, str>, TooLong> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(Cow::Borrowed(target));
    };
    let (base, fragment) = match target.find('#') {
        Some(i) => target.split_at(i),
        None => (target, ""),
    };
    let joiner = match base.find('?') {
        None => "?",
        Some(i) if i + 1 == base.len() || base.ends_with('&') => "",
        Some(_) => "&",
    };
    let len = base.len() + joiner.len() + query.len() + fragment.len();
    if len > MAX_LOCATION {
        return Err(TooLong);
    }
    let mut out = String::with_capacity(len);
    out.push_str(base);
    out.push_str(joiner);
    out.push_str(query);
    out.push_str(fragment);
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merges_after_the_targets_own_parameters() {
        let m = |t, q| merge(t, q).unwrap().into_owned();
        assert_eq!(
            m("https://a.example/p", Some("x=1")),
            "https://a.example/p?x=1"
        );
        assert_eq!(
            m("https://a.example/p?a=1", Some("x=1&a=2")),
            "https://a.example/p?a=1&x=1&a=2"
        );
        assert_eq!(
            m("https://a.example/p?", Some("x=1")),
            "https://a.example/p?x=1"
        );
        assert_eq!(
            m("https://a.example/p?a=1#top", Some("x=1")),
            "https://a.example/p?a=1&x=1#top"
        );
        assert_eq!(m("https://a.example/p#f", None), "https://a.example/p#f");
        assert_eq!(m("https://a.example/p", Some("")), "https://a.example/p");
    }

    #[test]
    fn refuses_past_the_bound() {
        let q = "x=".to_owned() + &"y".repeat(MAX_LOCATION);
        assert_eq!(merge("https://a.example/", Some(&q)), Err(TooLong));
    }

    proptest! {
        /// The target's text survives as a prefix (before any fragment), the
        /// request's query appears whole after it, and nothing else is added
        /// but one separator.
        #[test]
        fn merging_keeps_both_queries_in_order(
            path in "[a-z/]{0,20}",
            own in proptest::option::of("[a-z0-9=&]{0,20}"),
            frag in proptest::option::of("[a-z]{0,8}"),
            query in "[a-zA-Z0-9=&%+]{1,40}",
        ) {
            let mut target = format!("https://a.example/{path}");
            if let Some(own) = &own { target = format!("{target}?{own}"); }
            if let Some(f) = &frag { target = format!("{target}#{f}"); }
            let merged = merge(&target, Some(&query)).unwrap();
            let base = target.split('#').next().unwrap();
            prop_assert!(merged.starts_with(base));
            let tail = &merged.split('#').next().unwrap()[base.len()..];
            prop_assert!(tail == query || (tail.len() == query.len() + 1 && tail.ends_with(&query)));
            prop_assert!(merged.len() <= base.len() + 1 + query.len() + frag.map_or(0, |f| f.len() + 1));
            url::Url::parse(&merged).unwrap();
        }
    }
}
