//! Issue 17's "done when", judged from a run's report: each target with
//! what the run measured and whether it was met, so a run says for itself
//! whether it meets them all, and an old report can be judged the same way.
//!
//! Read from the report's JSON rather than from the rounds in memory, so
//! the verdict is exactly what anyone reading the file would compute. A
//! figure the run did not measure (a section missing, or a side with no
//! round) is "not measured", never a pass.

use serde_json::{Map, Value, json};

/// The fleet's redirects per second at 64 connections, at least this
/// share of the bare server's.
pub const FLEET_SHARE_MIN: f64 = 0.45;
/// The gateway's CPU per redirect, at most this multiple of the bare
/// server's CPU per 301, in every saturation round (64 and 256
/// connections, wrk).
pub const GATEWAY_CPU_MAX: f64 = 2.0;
/// The click pipeline's CPU per click, end to end, at most this (µs).
pub const PIPELINE_US_MAX: f64 = 6.0;
/// oha's fixed-rate p99, at most this multiple of the bare server's.
pub const P99_MAX: f64 = 1.5;
/// oha's fixed-rate p99.9, at most this multiple of the bare server's.
pub const P999_MAX: f64 = 3.0;

/// One target: what it asks, what the run measured, and whether that
/// meets it (`None`: not measured).
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub name: &'static str,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

impl Verdict {
    fn new(name: &'static str, target: String, measured: Option<(String, bool)>) -> Self {
        let (measured, met) = match measured {
            Some((text, met)) => (text, Some(met)),
            None => ("not measured".into(), None),
        };
        Self {
            name,
            target,
            measured,
            met,
        }
    }

    pub fn word(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "missed",
            None => "not measured",
        }
    }
}

/// Every target of the issue, judged from a report's sections.
pub fn judge(report: &Map<String, Value>) -> Vec<Verdict> {
    let figure = |section: &str, field: &str| report.get(section)?.get(field)?.as_f64();
    // A multiple of the bare server's figure; `None` if either is missing
    // or the bare figure is not positive (not `stats::ratio`, whose 0 for
    // a zero divisor would pass every "at most" target).
    let over_bare = |section: &str, fleet: &str, bare: &str| {
        let bare = figure(section, bare).filter(|b| *b > 0.0)?;
        Some(figure(section, fleet)? / bare)
    };
    let fleet_share = over_bare(
        "redirect_saturation_64c",
        "fleet_rps_median",
        "baseline_rps_median",
    );
    let gateway_cpu = [
        over_bare(
            "redirect_saturation_64c",
            "gateway_cpu_us_per_redirect_median",
            "baseline_cpu_us_per_redirect_median",
        ),
        over_bare(
            "redirect_saturation_256c",
            "gateway_cpu_us_per_redirect_median",
            "baseline_cpu_us_per_redirect_median",
        ),
        over_bare(
            "wrk_saturation_64c",
            "gateway_cpu_us_per_redirect_median",
            "baseline_cpu_us_per_request_median",
        ),
    ];
    let pipeline = figure("click_pipeline_cpu", "total_cpu_us_per_click");
    let p99 = over_bare("oha_fixed_rate", "fleet_p99_ms", "baseline_p99_ms");
    let p999 = over_bare("oha_fixed_rate", "fleet_p999_ms", "baseline_p999_ms");
    let clicks = |field: &str| report.get("clicks")?.get(field)?.as_u64();

    vec![
        Verdict::new(
            "fleet / bare redirects per second, 64 connections",
            format!("≥ {FLEET_SHARE_MIN}"),
            fleet_share.map(|s| (format!("{s:.3}"), s >= FLEET_SHARE_MIN)),
        ),
        Verdict::new(
            "gateway / bare CPU per request: 64 · 256 conns · wrk",
            format!("≤ {GATEWAY_CPU_MAX} in each"),
            // All three rounds, or not measured.
            gateway_cpu
                .iter()
                .copied()
                .collect::<Option<Vec<f64>>>()
                .map(|ratios| {
                    let text = ratios
                        .iter()
                        .map(|r| format!("{r:.3}"))
                        .collect::<Vec<_>>()
                        .join(" · ");
                    (text, ratios.iter().all(|r| *r <= GATEWAY_CPU_MAX))
                }),
        ),
        Verdict::new(
            "click pipeline CPU per click",
            format!("≤ {PIPELINE_US_MAX} µs"),
            pipeline.map(|us| (format!("{us:.2} µs"), us <= PIPELINE_US_MAX)),
        ),
        Verdict::new(
            "oha p99 at the fixed rate, fleet / bare",
            format!("≤ {P99_MAX}×"),
            p99.map(|r| (format!("{r:.2}×"), r <= P99_MAX)),
        ),
        Verdict::new(
            "oha p99.9 at the fixed rate, fleet / bare",
            format!("≤ {P999_MAX}×"),
            p999.map(|r| (format!("{r:.2}×"), r <= P999_MAX)),
        ),
        Verdict::new(
            "fleet answers that were not redirects",
            "0".into(),
            non_redirects(report).map(|n| (n.to_string(), n == 0)),
        ),
        Verdict::new(
            "clicks lost · doubled",
            "0 · 0".into(),
            clicks("lost")
                .zip(clicks("duplicated"))
                .map(|(lost, doubled)| (format!("{lost} · {doubled}"), lost == 0 && doubled == 0)),
        ),
    ]
}

/// The fleet's answers that were not a redirect, over every load
/// generator that drove it: the bench's own (errors per round), wrk and
/// oha (non-3xx). `None` if no generator's count is in the report.
fn non_redirects(report: &Map<String, Value>) -> Option<u64> {
    let own = ["redirect_saturation_64c", "redirect_saturation_256c"]
        .iter()
        .filter_map(|section| report.get(*section)?.get("fleet_rounds")?.as_array())
        .flatten()
        .filter_map(|round| round.get("errors")?.as_u64());
    let outside = ["wrk_saturation_64c", "oha_fixed_rate"]
        .iter()
        .filter_map(|section| report.get(*section)?.get("fleet_non_3xx")?.as_u64());
    own.chain(outside).reduce(|a, b| a + b)
}

/// Whether every target was met: `Some(false)` if any was missed, `None`
/// if none was missed but some were not measured.
pub fn all_met(verdicts: &[Verdict]) -> Option<bool> {
    if verdicts.iter().any(|v| v.met == Some(false)) {
        Some(false)
    } else if verdicts.iter().all(|v| v.met == Some(true)) {
        Some(true)
    } else {
        None
    }
}

/// The run's answer in one line: whether every target was met, and if
/// not, how many were missed or not measured.
pub fn summary(verdicts: &[Verdict]) -> String {
    let count = |met: Option<bool>| verdicts.iter().filter(|v| v.met == met).count();
    match all_met(verdicts) {
        Some(true) => "yes".into(),
        Some(false) => format!("no, {} missed", count(Some(false))),
        None => format!("not known, {} not measured", count(None)),
    }
}

/// The verdicts as the report's `targets` section.
pub fn to_json(verdicts: &[Verdict]) -> Value {
    json!({
        "all_met": all_met(verdicts),
        "items": verdicts
            .iter()
            .map(|v| json!({"name": v.name, "target": v.target, "measured": v.measured, "met": v.met}))
            .collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(path: &str) -> Map<String, Value> {
        let text =
            std::fs::read_to_string(format!("{}/results/{path}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// A committed report's verdicts, checked to be met or missed as
    /// `expected` says, in [`judge`]'s order.
    fn judged(file: &str, expected: [bool; 7]) -> Vec<Verdict> {
        let verdicts = judge(&report(file));
        let met: Vec<Option<bool>> = verdicts.iter().map(|v| v.met).collect();
        assert_eq!(met, expected.map(Some), "{file}: {verdicts:#?}");
        verdicts
    }

    /// F31, the fourteenth session's best run: every target but the p99,
    /// 2.001 / 1.314 ms = 1.52×.
    #[test]
    fn f31_meets_every_target_but_the_p99() {
        let verdicts = judged(
            "full-session14-again.json",
            [true, true, true, false, true, true, true],
        );
        assert_eq!(verdicts[3].measured, "1.52×");
        assert_eq!(all_met(&verdicts), Some(false));
        assert_eq!(summary(&verdicts), "no, 1 missed");
    }

    /// F36, this machine's: the gateway under wrk (2.036×), the pipeline,
    /// the p99 and the p99.9 missed; the fleet at 64 connections met by
    /// 49,689 / 110,347 = 0.450.
    #[test]
    fn f36_misses_four() {
        let verdicts = judged(
            "full-session16-review.json",
            [true, false, false, false, false, true, true],
        );
        assert_eq!(verdicts[0].measured, "0.450");
        assert!(verdicts[1].measured.ends_with("· 2.036"), "{verdicts:?}");
        assert_eq!(verdicts[6].measured, "0 · 0");
    }

    #[test]
    fn a_figure_not_measured_is_never_a_pass() {
        let mut partial = report("full-session14-again.json");
        partial.remove("oha_fixed_rate");
        let verdicts = judge(&partial);
        assert_eq!(verdicts[3].met, None);
        assert_eq!(verdicts[4].word(), "not measured");
        assert_eq!(all_met(&verdicts), None, "none missed, two not measured");
        assert_eq!(summary(&verdicts), "not known, 2 not measured");
        assert_eq!(all_met(&judge(&Map::new())), None);
        let json = to_json(&verdicts);
        assert!(json["all_met"].is_null());
        assert_eq!(json["items"].as_array().map(Vec::len), Some(7));
    }

    #[test]
    fn one_non_redirect_anywhere_misses() {
        let mut report = report("full-session14-again.json");
        report["wrk_saturation_64c"]["fleet_non_3xx"] = json!(1);
        let verdicts = judge(&report);
        assert_eq!(verdicts[5].met, Some(false));
        assert_eq!(verdicts[5].measured, "1");
    }
}
