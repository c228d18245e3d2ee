//! How read-svc reacts to `LinkEvent`s: the event carries the whole link, so
//! both cache levels are refreshed from it and an edited or deleted link
//! stops redirecting everywhere within a second. After a gap in the
//! subscription the local level is forgotten (events were missed).

use std::sync::Arc;

use shortfleet_common::link_events::Handlers;

use crate::resolver::Resolver;

pub fn handlers(resolver: Resolver) -> Handlers {
    let on_event = resolver.clone();
    Handlers {
        on_event: Arc::new(move |event| {
            let resolver = on_event.clone();
            Box::pin(async move {
                if let Some(link) = event.link {
                    resolver.refresh(link).await;
                }
            })
        }),
        on_subscribed: Arc::new(move || {
            let resolver = resolver.clone();
            Box::pin(async move { resolver.forget_local().await })
        }),
        // Keep serving: local entries expire by their TTL, and Redis entries
        // are refreshed by whichever replica still hears events.
        on_lost: Arc::new(|| {}),
    }
}
