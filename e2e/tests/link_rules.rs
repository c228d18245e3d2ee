//! What a link can do on redirect, through the real fleet (issue 15): rules
//! by device, OS, browser, country and language in order; a rule edited and
//! seen by every gateway replica within a second; passwords (form, wrong,
//! right, header, attempt limit, no target leaked); forward_query;
//! robots.txt and `X-Robots-Tag`; expired_url (over max_clicks, expired,
//! disabled); clicks by rule in stats; a protected link's forms are no
//! clicks.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use reqwest::{Client, RequestBuilder, StatusCode, redirect::Policy};
use serde_json::{Value, json};
use shortfleet_common::geoip::testing as mmdb;
use shortfleet_e2e::{Fleet, FleetOptions};

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
const ANDROID_PHONE: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36";
const WINDOWS_CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
const LINUX_FIREFOX: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";

fn client() -> Client {
    Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_decide_their_own_redirects() {
    // A real MaxMind DB file placing one documentation network in the
    // Netherlands: a country rule for a client without a country header is
    // decided by the gateway's GeoIP lookup of its (forwarded) address.
    let geoip_db =
        std::env::temp_dir().join(format!("shortfleet-e2e-rules-{}.mmdb", std::process::id()));
    std::fs::write(
        &geoip_db,
        mmdb::build(&[mmdb::Network {
            addr: "203.0.113.0".parse().unwrap(),
            prefix: 24,
            record: mmdb::country("NL"),
        }]),
    )
    .unwrap();
    let mut fleet = Fleet::start(FleetOptions {
        gateway_env: vec![
            ("SHORTFLEET_ANONYMOUS_LIMIT".into(), "100000/60".into()),
            ("SHORTFLEET_TIER_FREE".into(), "100000/60".into()),
            // The test client plays a CDN that tells the country.
            ("SHORTFLEET_TRUSTED_PROXIES".into(), "127.0.0.0/8".into()),
            ("SHORTFLEET_COUNTRY_HEADER".into(), "CF-IPCountry".into()),
            ("SHORTFLEET_GEOIP_DB".into(), geoip_db.display().to_string()),
            ("SHORTFLEET_LINK_PASSWORD_LIMIT".into(), "4/600".into()),
        ],
        ..Default::default()
    })
    .await
    .expect("fleet starts");
    let replica = fleet
        .start_gateway_replica("gateway-2")
        .await
        .expect("second replica");
    let result = flows(&fleet, &replica).await;
    if result.is_err() {
        for svc in shortfleet_e2e::SERVICES {
            eprintln!("--- {svc} log tail ---\n{}", fleet.log_tail(svc, 15));
        }
    }
    fleet.shutdown().await.expect("fleet stops");
    let _ = std::fs::remove_file(&geoip_db);
    result.expect("flows hold");
}

struct Api<'a> {
    http: Client,
    base: &'a str,
    key: String,
}

impl Api<'_> {
    async fn create(&self, body: Value) -> anyhow::Result<(StatusCode, Value)> {
        let r = self
            .http
            .post(format!("{}/api/v1/links", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await?;
        Ok((r.status(), r.json().await?))
    }

    async fn patch(&self, code: &str, body: Value) -> anyhow::Result<(StatusCode, Value)> {
        let r = self
            .http
            .patch(format!("{}/api/v1/links/{code}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await?;
        Ok((r.status(), r.json().await?))
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await?
            .json()
            .await?)
    }
}

/// The `Location` a request is sent to (empty when none).
async fn location(req: RequestBuilder) -> anyhow::Result<(StatusCode, String)> {
    let r = req.send().await?;
    let loc = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    Ok((r.status(), loc))
}

fn field_of(problem: &Value) -> String {
    problem["errors"][0]["field"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

async fn flows(fleet: &Fleet, replica: &str) -> anyhow::Result<()> {
    let base = fleet.gateway_url.as_str();
    let api = Api {
        http: client(),
        base,
        key: fleet.create_key("alice", "free")?,
    };
    let http = client();

    // --- rules: each dimension, in order --------------------------------
    let (status, link) = api
        .create(json!({
            "url": "https://example.com/default",
            "rules": [
                {"when": {"os": "iOS"}, "url": "https://example.com/ios"},
                {"when": {"device": "mobile"}, "url": "https://example.com/mobile"},
                {"when": {"country": "de"}, "url": "https://example.com/de"},
                {"when": {"language": "fr"}, "url": "https://example.com/fr"},
                {"when": {"browser": "firefox"}, "url": "https://example.com/firefox"},
                {"when": {"country": "NL"}, "url": "https://example.com/nl"},
            ],
        }))
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{link}");
    assert_eq!(link["rules"][0]["when"], json!({"os": "ios"}), "normalised");
    assert_eq!(link["rules"][2]["when"], json!({"country": "DE"}));
    assert_eq!(link["password_protected"], false);
    assert_eq!(link["forward_query"], false);
    assert_eq!(link["crawlable"], false);
    let code = link["code"].as_str().unwrap().to_owned();
    let go = |ua: &str| http.get(format!("{base}/{code}")).header("user-agent", ua);
    let cases: Vec<(RequestBuilder, &str)> = vec![
        // iOS is also mobile: the first rule wins.
        (go(IPHONE), "ios"),
        (go(ANDROID_PHONE), "mobile"),
        (go(WINDOWS_CHROME).header("cf-ipcountry", "DE"), "de"),
        (
            go(WINDOWS_CHROME).header("accept-language", "fr-CH, en;q=0.5"),
            "fr",
        ),
        // French accepted, but English preferred: no language rule.
        (
            go(WINDOWS_CHROME).header("accept-language", "en, fr;q=0.9"),
            "default",
        ),
        (go(LINUX_FIREFOX), "firefox"),
        (go(WINDOWS_CHROME), "default"),
        // No country header: the GeoIP file places the forwarded address.
        (
            go(WINDOWS_CHROME).header("x-forwarded-for", "203.0.113.7"),
            "nl",
        ),
        // An address the file does not know matches no country rule.
        (
            go(WINDOWS_CHROME).header("x-forwarded-for", "192.0.2.50"),
            "default",
        ),
        // The trusted header wins over the file (the CDN saw the client).
        (
            go(WINDOWS_CHROME)
                .header("x-forwarded-for", "203.0.113.7")
                .header("cf-ipcountry", "DE"),
            "de",
        ),
    ];
    for (req, want) in cases {
        let r = req.send().await?;
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(
            r.headers()["location"],
            format!("https://example.com/{want}").as_str()
        );
        assert_eq!(r.headers()["x-robots-tag"], "noindex", "not crawlable");
    }

    // --- bad behaviour fields are 400 naming the field -------------------
    for (body, field) in [
        (
            json!({"url": "https://e.com", "rules": [{"when": {"device": "phone"}, "url": "https://e.com/p"}]}),
            "rules",
        ),
        (
            json!({"url": "https://e.com", "rules": [{"when": {"os": "ios"}, "url": "ftp://e.com"}]}),
            "rules",
        ),
        (
            json!({"url": "https://e.com", "rules": [{"when": {}, "url": "https://e.com/x"}]}),
            "rules",
        ),
        (
            json!({"url": "https://e.com", "rules": vec![json!({"when": {"os": "ios"}, "url": "https://e.com/x"}); 21]}),
            "rules",
        ),
        (
            json!({"url": "https://e.com", "expired_url": "javascript:alert(1)"}),
            "expired_url",
        ),
        (json!({"url": "https://e.com", "password": ""}), "password"),
        (
            json!({"url": "https://e.com", "crawlable": "yes"}),
            "crawlable",
        ),
    ] {
        let (status, problem) = api.create(body.clone()).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(field_of(&problem), field, "{problem}");
    }
    // Targets that lead back to this gateway, however the address is
    // spelled (issue 11's five-hop self-loop): refused, naming the field.
    let port = base.rsplit(':').next().unwrap();
    for looped in [
        format!("http://0.0.0.0:{port}/x"),
        format!("http://0:{port}/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/x"),
        format!("http://127.1:{port}/x"),
    ] {
        for (body, field) in [
            (json!({"url": looped}), "url"),
            (
                json!({"url": "https://e.com", "rules": [{"when": {"os": "ios"}, "url": looped}]}),
                "rules",
            ),
            (
                json!({"url": "https://e.com", "expired_url": looped}),
                "expired_url",
            ),
        ] {
            let (status, problem) = api.create(body.clone()).await?;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(field_of(&problem), field, "{problem}");
        }
    }

    // --- a rule edited is seen by every replica within a second ----------
    for gw in [base, replica] {
        // Warm both micro-caches with the old answer.
        let (_, loc) = location(
            http.get(format!("{gw}/{code}"))
                .header("user-agent", IPHONE),
        )
        .await?;
        assert_eq!(loc, "https://example.com/ios");
    }
    let (status, _) = api
        .patch(
            &code,
            json!({"rules": [{"when": {"os": "ios"}, "url": "https://example.com/ios-2"}]}),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    let edited = Instant::now();
    for gw in [base, replica] {
        loop {
            let (_, loc) = location(
                http.get(format!("{gw}/{code}"))
                    .header("user-agent", IPHONE),
            )
            .await?;
            if loc == "https://example.com/ios-2" {
                break;
            }
            assert!(
                edited.elapsed() < Duration::from_secs(1),
                "{gw} still answers {loc} after a second"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (_, loc) = location(go(ANDROID_PHONE)).await?;
    assert_eq!(
        loc, "https://example.com/default",
        "the other rules are gone"
    );

    // --- passwords -------------------------------------------------------
    let secret_target = "https://example.com/very-secret-target";
    let (status, locked) = api
        .create(json!({"url": secret_target, "password": "s3cret pass",
                       "rules": [{"when": {"os": "ios"}, "url": "https://example.com/secret-ios"}]}))
        .await?;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(locked["password_protected"], true);
    assert!(locked.get("password").is_none() && !locked.to_string().contains("argon2"));
    let pcode = locked["code"].as_str().unwrap().to_owned();
    let shown = api.get(&format!("/api/v1/links/{pcode}")).await?;
    assert!(!shown.to_string().contains("argon2"), "no hash in the API");
    let leaks = |text: &str| text.contains("very-secret") || text.contains("secret-ios");
    // Twice: the second answer comes from the micro-cache, still checked.
    for _ in 0..2 {
        let form = http
            .get(format!("{base}/{pcode}?utm=1"))
            .header("user-agent", IPHONE)
            .send()
            .await?;
        assert_eq!(form.status(), StatusCode::OK);
        assert!(form.headers().get("location").is_none());
        assert_eq!(form.headers()["cache-control"], "no-store");
        assert_eq!(form.headers()["x-robots-tag"], "noindex");
        assert!(
            form.headers()["content-security-policy"]
                .to_str()?
                .contains("default-src 'none'")
        );
        let headers = format!("{:?}", form.headers());
        let page = form.text().await?;
        assert!(
            page.contains(&format!("action=\"/{pcode}?utm=1\"")),
            "{page}"
        );
        assert!(
            !leaks(&page) && !leaks(&headers),
            "no target before the check"
        );
    }
    let head = http.head(format!("{base}/{pcode}")).send().await?;
    assert_eq!(head.status(), StatusCode::OK);
    assert!(head.headers().get("location").is_none());
    let wrong = http
        .post(format!("{base}/{pcode}"))
        .form(&[("password", "nope")])
        .send()
        .await?;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get("location").is_none());
    let page = wrong.text().await?;
    assert!(page.contains("Wrong password") && !leaks(&page));
    let right = http
        .post(format!("{base}/{pcode}"))
        .header("user-agent", IPHONE)
        .form(&[("password", "s3cret pass")])
        .send()
        .await?;
    assert_eq!(
        right.status(),
        StatusCode::SEE_OTHER,
        "303: never re-posted"
    );
    assert_eq!(
        right.headers()["location"],
        "https://example.com/secret-ios",
        "rules apply after unlocking"
    );
    assert_eq!(right.headers()["cache-control"], "no-store");
    let (status, loc) = location(
        http.get(format!("{base}/{pcode}"))
            .header("x-link-password", "s3cret pass"),
    )
    .await?;
    assert_eq!((status, loc.as_str()), (StatusCode::FOUND, secret_target));
    let bad_header = http
        .get(format!("{base}/{pcode}"))
        .header("x-link-password", "guess")
        .send()
        .await?;
    assert_eq!(bad_header.status(), StatusCode::UNAUTHORIZED);
    assert!(!leaks(&bad_header.text().await?));
    // 4 attempts per client and code: this client has used 4 now.
    let limited = http
        .post(format!("{base}/{pcode}"))
        .form(&[("password", "s3cret pass")])
        .send()
        .await?;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    assert!(limited.headers().get("location").is_none());
    assert!(!leaks(&limited.text().await?));
    // Another client address (via the trusted proxy) is not limited.
    let (status, _) = location(
        http.get(format!("{base}/{pcode}"))
            .header("x-forwarded-for", "198.51.100.9")
            .header("x-link-password", "s3cret pass"),
    )
    .await?;
    assert_eq!(status, StatusCode::FOUND);
    // PATCH "password": null opens the link.
    let (status, opened) = api.patch(&pcode, json!({"password": null})).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(opened["password_protected"], false);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (status, _) = location(http.get(format!("{base}/{pcode}"))).await?;
        if status == StatusCode::FOUND {
            break;
        }
        assert!(Instant::now() < deadline, "still protected after a second");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A protected link's max_clicks counts redirects, not forms shown or
    // wrong passwords: one click allowed, the form twice and a wrong guess
    // first, then the right password gets through once and only once.
    let (status, limited) = api
        .create(
            json!({"url": "https://example.com/once", "password": "open sesame",
                       "max_clicks": 1}),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{limited}");
    let lcode = limited["code"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let form = http.get(format!("{base}/{lcode}")).send().await?;
        assert_eq!(form.status(), StatusCode::OK, "the form, not a click");
    }
    let wrong = http
        .get(format!("{base}/{lcode}"))
        .header("x-link-password", "guess")
        .send()
        .await?;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let unlock = || {
        http.get(format!("{base}/{lcode}"))
            .header("x-link-password", "open sesame")
    };
    let (status, loc) = location(unlock()).await?;
    assert_eq!(
        (status, loc.as_str()),
        (StatusCode::FOUND, "https://example.com/once"),
        "the form and the wrong guess used up no click"
    );
    let (status, _) = location(unlock()).await?;
    assert_eq!(status, StatusCode::GONE, "the one click is spent");

    // --- forward_query ---------------------------------------------------
    let (_, with_query) = api
        .create(json!({"url": "https://example.com/p?a=1#frag", "forward_query": true}))
        .await?;
    let (_, without_query) = api
        .create(json!({"url": "https://example.com/q", "forward_query": true}))
        .await?;
    let (_, not_forwarding) = api
        .create(json!({"url": "https://example.com/r?a=1"}))
        .await?;
    let code_of = |l: &Value| l["code"].as_str().unwrap().to_owned();
    let (_, loc) = location(http.get(format!("{base}/{}?x=2&a=3", code_of(&with_query)))).await?;
    assert_eq!(loc, "https://example.com/p?a=1&x=2&a=3#frag");
    let (_, loc) = location(http.get(format!("{base}/{}?x=2", code_of(&without_query)))).await?;
    assert_eq!(loc, "https://example.com/q?x=2");
    let (_, loc) = location(http.get(format!("{base}/{}", code_of(&without_query)))).await?;
    assert_eq!(loc, "https://example.com/q");
    let (_, loc) = location(http.get(format!("{base}/{}?x=2", code_of(&not_forwarding)))).await?;
    assert_eq!(loc, "https://example.com/r?a=1");
    let long = "x=".to_owned() + &"y".repeat(8200);
    let too_long = http
        .get(format!("{base}/{}?{long}", code_of(&without_query)))
        .send()
        .await?;
    assert_eq!(too_long.status(), StatusCode::URI_TOO_LONG);

    // --- crawler control -------------------------------------------------
    let (_, crawlable) = api
        .create(json!({"url": "https://example.com/indexed", "crawlable": true}))
        .await?;
    let ccode = code_of(&crawlable);
    let r = http.get(format!("{base}/{ccode}")).send().await?;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(r.headers().get("x-robots-tag").is_none());
    let robots = http.get(format!("{base}/robots.txt")).send().await?;
    assert_eq!(robots.status(), StatusCode::OK);
    let text = robots.text().await?;
    assert!(text.contains(&format!("Allow: /{ccode}$\n")), "{text}");
    assert!(text.ends_with("Disallow: /\n"));
    assert!(!text.contains(&code), "non-crawlable codes are not listed");
    // Made non-crawlable: its link event drops the replica's robots.txt,
    // so within a second it is no longer allowed.
    let (status, _) = api.patch(&ccode, json!({"crawlable": false})).await?;
    assert_eq!(status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let text = http
            .get(format!("{base}/robots.txt"))
            .send()
            .await?
            .text()
            .await?;
        if !text.contains(&format!("Allow: /{ccode}$")) {
            break;
        }
        assert!(Instant::now() < deadline, "still allowed: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // --- expired_url -----------------------------------------------------
    let (_, fallback) = api
        .create(json!({"url": "https://example.com/live", "max_clicks": 1,
                       "expired_url": "https://example.com/sorry"}))
        .await?;
    let fcode = code_of(&fallback);
    assert_eq!(fallback["expired_url"], "https://example.com/sorry");
    let (_, loc) = location(http.get(format!("{base}/{fcode}"))).await?;
    assert_eq!(loc, "https://example.com/live");
    let (status, loc) = location(http.get(format!("{base}/{fcode}"))).await?;
    assert_eq!(
        (status, loc.as_str()),
        (StatusCode::FOUND, "https://example.com/sorry"),
        "over max_clicks"
    );
    // Expired by its expires_at: redirects go to expired_url once it passes.
    let expires_at = (chrono::Utc::now() + chrono::TimeDelta::milliseconds(1500)).to_rfc3339();
    let (_, expiring) = api
        .create(
            json!({"url": "https://example.com/soon", "expires_at": expires_at,
                       "expired_url": "https://example.com/sorry"}),
        )
        .await?;
    let ecode = code_of(&expiring);
    let (_, loc) = location(http.get(format!("{base}/{ecode}"))).await?;
    assert_eq!(loc, "https://example.com/soon", "before expires_at");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, loc) = location(http.get(format!("{base}/{ecode}"))).await?;
        if loc == "https://example.com/sorry" {
            assert_eq!(status, StatusCode::FOUND);
            break;
        }
        assert_eq!(loc, "https://example.com/soon");
        assert!(
            Instant::now() < deadline,
            "expired link still answers {loc}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, disabled) = api
        .create(
            json!({"url": "https://example.com/off", "expired_url": "https://example.com/sorry"}),
        )
        .await?;
    let dcode = code_of(&disabled);
    let (status, _) = api.patch(&dcode, json!({"disabled": true})).await?;
    assert_eq!(status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (_, loc) = location(http.get(format!("{base}/{dcode}"))).await?;
        if loc == "https://example.com/sorry" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "disabled link still answers {loc}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deleted = api
        .http
        .delete(format!("{base}/api/v1/links/{dcode}"))
        .bearer_auth(&api.key)
        .send()
        .await?;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (status, _) = location(http.get(format!("{base}/{dcode}"))).await?;
        if status == StatusCode::GONE {
            break;
        }
        assert!(Instant::now() < deadline, "deleted link answers {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // --- clicks by rule --------------------------------------------------
    // Human clicks on the rules link: 10 cases + 2 warm-ups + the edit's
    // polls (at least 2) + 1 Android; rule 0 sent the iOS ones, rule 5 the
    // one the GeoIP file placed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = api.get(&format!("/api/v1/links/{code}/stats")).await?;
        let by_rule = api
            .get(&format!("/api/v1/links/{code}/stats?rule=0"))
            .await?;
        let none = api
            .get(&format!("/api/v1/links/{code}/stats?rule=none"))
            .await?;
        let rules = stats["rules"].as_array().cloned().unwrap_or_default();
        let count = |name: &str| {
            rules
                .iter()
                .find(|r| r["name"] == name)
                .and_then(|r| r["clicks"].as_u64())
                .unwrap_or(0)
        };
        let total = stats["total"].as_u64().unwrap_or(0);
        if total >= 15 {
            assert_eq!(count("1"), 1, "{stats}");
            assert_eq!(count("5"), 1, "{stats}");
            assert!(count("0") >= 5, "{stats}");
            assert_eq!(by_rule["total"].as_u64(), Some(count("0")), "{by_rule}");
            assert_eq!(by_rule["rules"][0]["name"], "0");
            assert_eq!(none["total"].as_u64(), Some(count("none")), "{none}");
            assert_eq!(
                ["0", "1", "2", "3", "4", "5", "none"]
                    .map(count)
                    .iter()
                    .sum::<u64>(),
                total
            );
            break;
        }
        assert!(Instant::now() < deadline, "clicks never arrived: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let bad = api
        .http
        .get(format!("{base}/api/v1/links/{code}/stats?rule=twenty"))
        .bearer_auth(&api.key)
        .send()
        .await?;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // The protected link with max_clicks: its forms and the wrong guess
    // were no clicks; the one unlocked redirect is. Clicks reach analytics
    // in the order the gateway made them, so once that click shows, any
    // the forms had made would show too.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = api.get(&format!("/api/v1/links/{lcode}/stats")).await?;
        // This client sends no User-Agent: its clicks count as bots.
        let seen = stats["total"].as_u64().unwrap_or(0) + stats["bots"].as_u64().unwrap_or(0);
        if seen > 0 {
            assert_eq!(seen, 1, "forms or wrong passwords were counted: {stats}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the unlocked click never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
