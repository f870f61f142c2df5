//! Crash points for tests: `RW_FAILPOINTS=name=probability,...` makes the
//! process abort, as a power cut would, when it passes a named point (for
//! example `budget.after_set_aside=0.05`). Unset, as in production, a
//! point costs one load of a static.

use rand::Rng;
use std::sync::OnceLock;

/// The environment variable naming the points and their probabilities.
pub const VARIABLE: &str = "RW_FAILPOINTS";

fn points() -> &'static [(String, f64)] {
    static POINTS: OnceLock<Vec<(String, f64)>> = OnceLock::new();
    POINTS.get_or_init(|| parse(&std::env::var(VARIABLE).unwrap_or_default()))
}

/// `name=p,name=p`; a bare name is probability 1.
fn parse(spec: &str) -> Vec<(String, f64)> {
    spec.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((name, prob)) => (name.trim().to_string(), prob.trim().parse().unwrap_or(1.0)),
            None => (p.trim().to_string(), 1.0),
        })
        .collect()
}

/// Aborts the process at point `name` with its configured probability.
pub fn hit(name: &str) {
    let points = points();
    if points.is_empty() {
        return;
    }
    if let Some((_, p)) = points.iter().find(|(n, _)| n == name)
        && rand::rng().random_bool(p.clamp(0.0, 1.0))
    {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_probabilities() {
        assert_eq!(
            parse("a=0.5, b ,"),
            vec![("a".to_string(), 0.5), ("b".to_string(), 1.0)]
        );
        assert!(parse("").is_empty());
    }
}
