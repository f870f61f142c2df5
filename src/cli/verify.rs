//! `reservation-worker verify`: folds every resource's history from
//! scratch and compares it with the stored state, and every budget's
//! spending with what its resources recorded. Reads only, by SCAN and
//! paged XRANGE, so Redis keeps serving while it runs.

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use reservation_worker::admin::Store;
use reservation_worker::audit::{self, Finding, Recorded};
use reservation_worker::config::Settings;
use reservation_worker::domain::ResourceId;
use std::io::IsTerminal as _;

/// Verifies `resources`, or with `all` every resource and every budget.
/// `Ok(false)` when something differs (printed).
pub async fn run(
    settings: &Settings,
    resources: &[String],
    all: bool,
    json: bool,
) -> anyhow::Result<bool> {
    anyhow::ensure!(
        all || !resources.is_empty(),
        "name the resources to verify, or pass --all"
    );
    let store = Store::new(&settings.redis)?;
    let reading = || format!("reading from {}", settings.redis.url);
    let ids: Vec<ResourceId> = if all {
        store.resources().await.with_context(reading)?
    } else {
        resources
            .iter()
            .map(|r| ResourceId::try_from(r.as_str()).context("RESOURCE"))
            .collect::<anyhow::Result<_>>()?
    };
    let budgets = if all {
        store.budgets().await.with_context(reading)?
    } else {
        Vec::new()
    };
    let bar = progress((ids.len() + budgets.len()) as u64);
    let mut findings = Vec::new();
    let mut recorded = Recorded::default();
    for id in &ids {
        bar.set_message(id.to_string());
        let history = store.history(id).await.with_context(reading)?;
        let folded = audit::fold(history.iter().map(|e| &e.event), None);
        let stored = store.stored_state(id).await.with_context(reading)?;
        let differences = audit::resource_differences(&folded, &stored);
        if !differences.is_empty() {
            findings.push(Finding {
                kind: "resource",
                id: id.to_string(),
                differences,
            });
        }
        recorded.add(&folded);
        bar.inc(1);
    }
    for budget in &budgets {
        bar.set_message(budget.to_string());
        let history = store.budget_history(budget).await.with_context(reading)?;
        let stored = store.budget(budget).await.with_context(reading)?;
        let spendings = store.spendings(budget).await.with_context(reading)?;
        let differences = audit::budget_differences(
            audit::fold_budget(&history).as_ref(),
            stored.as_ref(),
            &spendings,
            recorded.0.get(budget).unwrap_or(&Default::default()),
        );
        if !differences.is_empty() {
            findings.push(Finding {
                kind: "budget",
                id: budget.to_string(),
                differences,
            });
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if json {
        let report = serde_json::json!({
            "resources": ids.len(),
            "budgets": budgets.len(),
            "ok": findings.is_empty(),
            "findings": findings,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for f in &findings {
            println!("{} {}:", f.kind, f.id);
            for d in &f.differences {
                println!("  {d}");
            }
        }
        let verdict = if findings.is_empty() {
            "all agree with their histories".to_string()
        } else {
            format!("{} differ", findings.len())
        };
        println!(
            "verified {} resources and {} budgets: {verdict}",
            ids.len(),
            budgets.len()
        );
    }
    Ok(findings.is_empty())
}

/// A progress bar on a terminal, nothing otherwise.
fn progress(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("verifying {bar:40} {pos}/{len} {msg}").expect("template"),
    );
    bar
}
