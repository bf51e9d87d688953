//! Percentiles and summaries of measured samples.

use serde::Serialize;

/// The distribution of one set of samples (all in the same unit).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// The sample at quantile `q` (0..=1) of `sorted` (ascending), by the
/// nearest-rank method: the smallest sample with at least `q` of them at or
/// below it. `NaN` for no samples.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `values` sorted ascending (NaNs last).
pub fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// The median of `values`; `NaN` for none.
pub fn median(values: &[f64]) -> f64 {
    percentile(&sorted(values), 0.5)
}

/// Summary of `values`; every field `NaN` (and `n` 0) for none.
pub fn summarize(values: &[f64]) -> Summary {
    let s = sorted(values);
    if s.is_empty() {
        return Summary {
            n: 0,
            mean: f64::NAN,
            min: f64::NAN,
            p50: f64::NAN,
            p90: f64::NAN,
            p99: f64::NAN,
            max: f64::NAN,
        };
    }
    Summary {
        n: s.len(),
        mean: s.iter().sum::<f64>() / s.len() as f64,
        min: s[0],
        p50: percentile(&s, 0.5),
        p90: percentile(&s, 0.9),
        p99: percentile(&s, 0.99),
        max: s[s.len() - 1],
    }
}

/// Points `(value, fraction of samples ≤ value)` of the empirical CDF of
/// `values`, at most `points` of them (evenly spaced in rank), always
/// including the largest sample.
pub fn cdf(values: &[f64], points: usize) -> Vec<(f64, f64)> {
    let s = sorted(values);
    if s.is_empty() || points == 0 {
        return Vec::new();
    }
    let step = (s.len() / points).max(1);
    let n = s.len() as f64;
    let mut out: Vec<(f64, f64)> = (step - 1..s.len())
        .step_by(step)
        .map(|i| (s[i], (i + 1) as f64 / n))
        .collect();
    if out.last().map(|p| p.1) != Some(1.0) {
        out.push((s[s.len() - 1], 1.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&v);
        assert_eq!((s.p50, s.p90, s.p99, s.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn cdf_ends_at_the_largest_sample() {
        let v: Vec<f64> = (0..1000).map(f64::from).collect();
        let c = cdf(&v, 100);
        assert!(c.len() <= 101);
        assert_eq!(*c.last().unwrap(), (999.0, 1.0));
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }
}
