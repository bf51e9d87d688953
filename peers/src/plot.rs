//! SVG plots of latency distributions (plotters, SVG backend): one
//! empirical CDF per series on a logarithmic time axis.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::stats;

/// Points drawn per series.
const POINTS: usize = 400;

/// One line of a plot: a name and its samples.
pub struct Series {
    pub name: String,
    pub samples: Vec<f64>,
}

/// Writes the CDFs of `series` (samples in µs) to `path`. Series without
/// samples are left out; no file is written when none has any.
pub fn cdf_svg(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<bool> {
    let series: Vec<&Series> = series.iter().filter(|s| !s.samples.is_empty()).collect();
    let positive = series
        .iter()
        .flat_map(|s| s.samples.iter().copied())
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = positive.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if series.is_empty() || !lo.is_finite() {
        return Ok(false);
    }
    let (lo, hi) = (lo * 0.9, (hi * 1.1).max(lo * 2.0));
    draw(path, title, &series, lo, hi).map_err(|e| anyhow!("plotting {}: {e}", path.display()))?;
    Ok(true)
}

fn draw(
    path: &Path,
    title: &str,
    series: &[&Series],
    lo: f64,
    hi: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(
            (lo..hi).log_scale().with_key_points(ticks(lo, hi)),
            0f64..1f64,
        )?;
    chart
        .configure_mesh()
        .x_desc("latency (µs, log scale)")
        .y_desc("fraction of samples ≤ x")
        .x_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v}")
            }
        })
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = stats::cdf(&s.samples, POINTS)
            .into_iter()
            .map(|(x, y)| (x.max(lo), y))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!("{} (n={})", s.name, s.samples.len()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Ticks at 1, 2 and 5 times the powers of ten between `lo` and `hi`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (first, last) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    (first..=last)
        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
        .filter(|v| (lo..=hi).contains(v))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ticks_follow_one_two_five() {
        assert_eq!(
            super::ticks(15.0, 600.0),
            vec![20.0, 50.0, 100.0, 200.0, 500.0]
        );
    }
}
