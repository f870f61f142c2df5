//! `reservation-worker verify`: folds every resource's history from
//! scratch and compares it with the stored state, and every budget's
//! spending with what its resources recorded. Reads only, by SCAN and
//! paged XRANGE, so Redis keeps serving while it runs.

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use reservation_worker::admin::{Store, StoreError};
use reservation_worker::audit::{self, Finding, Recorded, RecordedSpending};
use reservation_worker::config::Settings;
use reservation_worker::domain::{BudgetId, ResourceId};
use reservation_worker::telemetry::chain;
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
    let mut budgets = if all {
        store.budgets().await.with_context(reading)?
    } else {
        Vec::new()
    };
    let bar = progress((ids.len() + budgets.len()) as u64);
    let mut findings = Vec::new();
    let mut recorded = Recorded::default();
    for id in &ids {
        bar.set_message(id.to_string());
        let differences = match check_resource(&store, id, &mut recorded).await {
            Ok(differences) => differences,
            Err(e) => vec![format!("cannot be read: {}", chain(&e))],
        };
        if !differences.is_empty() {
            findings.push(Finding {
                kind: "resource",
                id: id.to_string(),
                differences,
            });
        }
        bar.inc(1);
    }
    if all {
        // Budgets the resources name but whose state is gone are checked
        // too: their books cannot agree.
        for budget in recorded.0.keys() {
            if !budgets.contains(budget) {
                budgets.push(budget.clone());
                bar.inc_length(1);
            }
        }
    }
    for budget in &budgets {
        bar.set_message(budget.to_string());
        let mine = recorded.0.get(budget).cloned().unwrap_or_default();
        let differences = match check_budget(&store, budget, &mine).await {
            Ok(differences) => differences,
            Err(e) => vec![format!("cannot be read: {}", chain(&e))],
        };
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

/// One resource: its history folded against its stored state; its live
/// reservations go into `recorded` for the budgets' check.
async fn check_resource(
    store: &Store,
    id: &ResourceId,
    recorded: &mut Recorded,
) -> Result<Vec<String>, StoreError> {
    let history = store.history(id).await?;
    let folded = audit::fold(history.iter().map(|e| &e.event), None);
    let stored = store.stored_state(id).await?;
    recorded.add(id, &folded);
    Ok(audit::resource_differences(&folded, &stored))
}

/// One budget: its cap against its history, its books against what its
/// resources recorded.
async fn check_budget(
    store: &Store,
    budget: &BudgetId,
    recorded: &RecordedSpending,
) -> Result<Vec<String>, StoreError> {
    let history = store.budget_history(budget).await?;
    let stored = store.budget(budget).await?;
    let spendings = store.spendings(budget).await?;
    Ok(audit::budget_differences(
        audit::fold_budget(&history).as_ref(),
        stored.as_ref(),
        &spendings,
        recorded,
    ))
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
