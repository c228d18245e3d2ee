//! The replica's `robots.txt`: crawlers are kept off every short link
//! except the crawlable ones, which are allowed by name. The body is built
//! from write-svc's `ListCrawlable` at most once per [`TTL`] per replica
//! (concurrent misses make one call) and served from memory otherwise, so
//! crawlers hammering it cost nothing. A link event that can change the
//! list (a crawlable link, or one the held body allows) drops the held
//! body, so a change shows within a second, like every other cache; the
//! TTL bounds it when events are not received. When write-svc cannot answer and no
//! copy is held, everything is disallowed (the safe answer) and that answer
//! is not kept. The HTTP side is `handlers::robots`.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use moka::future::Cache;
use shortfleet_common::link_events::Handlers;
use shortfleet_proto::v1::Link;

/// How long a replica keeps its robots.txt: a link made crawlable appears
/// within this (redirects' `X-Robots-Tag` follows the link at once).
pub const TTL: Duration = Duration::from_secs(60);
const DISALLOW_ALL: &str = "User-agent: *\nDisallow: /\n";

/// One cached body per replica, and a count of the events that dropped it.
#[derive(Clone)]
pub struct Robots {
    body: Cache<(), Bytes>,
    /// Bumped by every drop: a load that began before a drop may hold the
    /// list from before the change, so it is not kept.
    generation: Arc<AtomicU64>,
}

impl Default for Robots {
    fn default() -> Self {
        Self {
            body: Cache::builder().max_capacity(1).time_to_live(TTL).build(),
            generation: Arc::default(),
        }
    }
}

impl Robots {
    /// The body: the cached one, or one built from the crawlable codes
    /// `load` fetches; everything disallowed when that fails.
    pub async fn body<E>(&self, load: impl Future<Output = Result<Vec<String>, E>>) -> Bytes
    where
        E: Send + Sync + 'static,
    {
        let began = self.generation.load(Ordering::Acquire);
        let build = async { load.await.map(|codes| body(&codes)) };
        match self.body.try_get_with((), build).await {
            Ok(body) => {
                if self.generation.load(Ordering::Acquire) != began {
                    // Answered, but not kept: it may predate the change.
                    self.body.invalidate(&()).await;
                }
                body
            }
            Err(_) => Bytes::from_static(DISALLOW_ALL.as_bytes()),
        }
    }

    /// Forgets the held body; a load already out is answered but not kept.
    pub fn forget(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.body.invalidate_all();
    }

    /// A link event: forgets the held body when the link may enter or
    /// leave it. Events for links that are not crawlable and not listed
    /// (nearly all of them) cost one substring search.
    pub async fn saw_link(&self, link: &Link) {
        let listed = self
            .body
            .get(&())
            .await
            .is_some_and(|body| allows(&body, &link.code));
        if link.crawlable || listed {
            self.forget();
        }
    }

    /// What robots.txt does with link events: [`Self::saw_link`] for each,
    /// and everything forgotten when the subscription is (re)made or lost,
    /// since events may have been missed.
    pub fn handlers(&self) -> Handlers {
        let (on_event, on_subscribed, on_lost) = (self.clone(), self.clone(), self.clone());
        Handlers {
            on_event: Arc::new(move |event| {
                let robots = on_event.clone();
                Box::pin(async move {
                    if let Some(link) = &event.link {
                        robots.saw_link(link).await;
                    }
                })
            }),
            on_subscribed: Arc::new(move || {
                on_subscribed.forget();
                Box::pin(async {})
            }),
            on_lost: Arc::new(move || on_lost.forget()),
        }
    }
}

/// Whether `body` has the `Allow` line of `code`.
fn allows(body: &[u8], code: &str) -> bool {
    let line = format!("Allow: /{code}$\n");
    body.windows(line.len()).any(|w| w == line.as_bytes())
}

/// `Allow` lines for the crawlable codes, then `Disallow: /`: the longest
/// (most specific) matching rule wins for crawlers (RFC 9309 §2.2.2).
fn body(codes: &[String]) -> Bytes {
    let mut out = String::with_capacity(32 + codes.len() * 16);
    out.push_str("User-agent: *\n");
    for code in codes {
        // `$` ends the match: /abc allows neither /abcd nor /abc/x.
        out.push_str("Allow: /");
        out.push_str(code);
        out.push_str("$\n");
    }
    out.push_str("Disallow: /\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_only_the_crawlable_codes() {
        assert_eq!(body(&[]), DISALLOW_ALL.as_bytes());
        assert_eq!(
            body(&["abc".into(), "x-y_z".into()]),
            "User-agent: *\nAllow: /abc$\nAllow: /x-y_z$\nDisallow: /\n".as_bytes()
        );
    }

    fn link(code: &str, crawlable: bool) -> Link {
        Link {
            code: code.into(),
            crawlable,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn events_that_can_change_the_list_drop_the_held_body() {
        let robots = Robots::default();
        let loads = std::sync::atomic::AtomicUsize::new(0);
        let load = |codes: Vec<&str>| {
            let codes: Vec<String> = codes.into_iter().map(String::from).collect();
            let loads = &loads;
            async move {
                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(codes)
            }
        };
        let first = robots.body(load(vec!["abc"])).await;
        assert!(allows(&first, "abc") && !allows(&first, "ab"));
        // Neither crawlable nor listed: the body stays.
        robots.saw_link(&link("zzz", false)).await;
        assert_eq!(robots.body(load(vec!["other"])).await, first);
        // A listed link stops being crawlable: reloaded.
        robots.saw_link(&link("abc", false)).await;
        let second = robots.body(load(vec![])).await;
        assert_eq!(second, DISALLOW_ALL.as_bytes());
        // A link becomes crawlable: reloaded.
        robots.saw_link(&link("new", true)).await;
        assert!(allows(&robots.body(load(vec!["new"])).await, "new"));
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_list_loaded_across_a_change_is_answered_but_not_kept() {
        let robots = Robots::default();
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let (r, gate) = (robots.clone(), release.clone());
        let slow = tokio::spawn(async move {
            r.body(async move {
                gate.notified().await;
                Ok::<_, std::convert::Infallible>(vec!["old".to_owned()])
            })
            .await
        });
        // The change lands while the load is out.
        tokio::task::yield_now().await;
        robots.saw_link(&link("new", true)).await;
        release.notify_one();
        assert!(allows(&slow.await.unwrap(), "old"));
        let fresh = robots
            .body(async { Ok::<_, std::convert::Infallible>(vec!["new".to_owned()]) })
            .await;
        assert!(allows(&fresh, "new"), "the pre-change list was kept");
        // Lost events: everything is forgotten.
        robots.forget();
        let after = robots
            .body(async { Ok::<_, std::convert::Infallible>(vec![]) })
            .await;
        assert_eq!(after, DISALLOW_ALL.as_bytes());
    }
}
