//! The results as a Markdown table (medians over runs, ratios to direct, targets and whether
//! they were met) and as JSON (every per-run figure, for later comparison).

use serde_json::json;

use crate::modes::Mode;
use crate::plan::{lower_is_better, Target, METRICS};
use crate::runner::{Figures, Outcome};
use crate::stats::median;

fn median_of(figures: &Figures, name: &str, mode: Mode) -> Option<f64> {
    figures
        .get(name)
        .and_then(|modes| modes.get(&mode))
        .filter(|values| !values.is_empty())
        .map(|values| median(values))
}

/// Whether mirrord-net meets `target` for the row `name`; `None` when a figure is missing.
fn meets(figures: &Figures, name: &str, target: Target) -> Option<bool> {
    let ours = median_of(figures, name, Mode::MirrordNet)?;
    Some(match target {
        Target::RatioAtMost { ratio } => ours / median_of(figures, name, Mode::Direct)? <= ratio,
        Target::RatioAtLeast { ratio } => ours / median_of(figures, name, Mode::Direct)? >= ratio,
        Target::AtMost { value } => ours <= value,
        Target::NotBelowRow { row } => ours >= median_of(figures, row, Mode::MirrordNet)?,
        Target::RowRatioAtMost { row, ratio } => {
            ours / median_of(figures, row, Mode::MirrordNet)? <= ratio
        }
    })
}

fn number(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn cell(value: Option<f64>) -> String {
    value.map_or("—".to_string(), number)
}

fn ratio(ours: Option<f64>, direct: Option<f64>) -> String {
    match (ours, direct) {
        (Some(ours), Some(direct)) if direct > 0.0 => format!("{:.2}×", ours / direct),
        _ => "—".to_string(),
    }
}

pub fn markdown(outcome: &Outcome, wrapper: bool) -> String {
    let figures = &outcome.figures;
    // Beside direct and the default path: the other packet paths, then the wrapper.
    let mut others = vec![
        Mode::MirrordNetRouted,
        Mode::MirrordNetQuic,
        Mode::MirrordNet1500,
        Mode::MirrordNetStream,
    ];
    if wrapper {
        others.push(Mode::Wrapper);
    }
    let mut text =
        String::from("| workload | unit | direct | mirrord-net | ratio | target | met |");
    for mode in &others {
        text.push_str(&format!(" {} | ratio |", mode.label()));
    }
    text.push('\n');
    text.push_str("|---|---|--:|--:|--:|---|---|");
    for _ in &others {
        text.push_str("--:|--:|");
    }
    text.push('\n');
    for metric in METRICS {
        let direct = median_of(figures, metric.name, Mode::Direct);
        let ours = median_of(figures, metric.name, Mode::MirrordNet);
        let (target, met) = match metric.target {
            Some(target) => (
                target.describe(),
                match meets(figures, metric.name, target) {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "—",
                },
            ),
            None => (String::new(), ""),
        };
        text.push_str(&format!(
            "| {} | {}{} | {} | {} | {} | {} | {} |",
            metric.name,
            metric.unit,
            if lower_is_better(metric.unit) {
                " ↓"
            } else {
                " ↑"
            },
            cell(direct),
            cell(ours),
            ratio(ours, direct),
            target,
            met
        ));
        for &mode in &others {
            let theirs = median_of(figures, metric.name, mode);
            text.push_str(&format!(" {} | {} |", cell(theirs), ratio(theirs, direct)));
        }
        text.push('\n');
    }
    if !outcome.errors.is_empty() {
        text.push_str("\nFailed runs (no figure):\n\n");
        for error in &outcome.errors {
            let first = error.lines().next().unwrap_or_default();
            text.push_str(&format!("- {first}\n"));
        }
    }
    text
}

pub fn json(outcome: &Outcome, context: serde_json::Value) -> serde_json::Value {
    let figures = &outcome.figures;
    let metrics: Vec<_> = METRICS
        .iter()
        .map(|metric| {
            let modes: serde_json::Map<String, serde_json::Value> = figures
                .get(metric.name)
                .into_iter()
                .flatten()
                .map(|(mode, runs)| {
                    (
                        mode.label().to_string(),
                        json!({ "runs": runs, "median": median(runs) }),
                    )
                })
                .collect();
            json!({
                "name": metric.name,
                "unit": metric.unit,
                "modes": modes,
                "target": metric.target,
                "met": metric.target.and_then(|target| meets(figures, metric.name, target)),
            })
        })
        .collect();
    json!({
        "context": context,
        "metrics": metrics,
        "errors": outcome.errors,
    })
}
