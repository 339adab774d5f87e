//! SVG plots for reports, drawn with plotters' SVG backend into strings.

use plotters::prelude::*;

use crate::error::{EvalError, Result};

/// Colour of the baseline's bars.
pub const BASELINE_COLOUR: RGBColor = RGBColor(120, 144, 176);
/// Colour of the candidate's bars.
pub const CANDIDATE_COLOUR: RGBColor = RGBColor(230, 126, 34);
const WIN_COLOUR: RGBColor = RGBColor(46, 139, 87);
const TIE_COLOUR: RGBColor = RGBColor(160, 160, 160);
const LOSS_COLOUR: RGBColor = RGBColor(192, 57, 43);

const WIDTH: u32 = 720;
const HEIGHT: u32 = 340;

/// One series of a bar chart: a label, a colour and one value per category.
pub struct BarSeries<'a> {
    /// Legend label.
    pub label: &'a str,
    /// Bar colour.
    pub colour: RGBColor,
    /// One value per category.
    pub values: Vec<f64>,
}

fn plot_error(plot: &'static str) -> impl Fn(String) -> EvalError {
    move |problem| EvalError::Plot { plot, problem }
}

/// Grouped vertical bars: one group per category, one bar per series, values from 0 to `y_max`.
pub fn grouped_bars(
    plot: &'static str,
    title: &str,
    categories: &[String],
    series: &[BarSeries<'_>],
    y_max: f64,
    y_desc: &str,
) -> Result<String> {
    let err = plot_error(plot);
    let mut svg = String::new();
    {
        let per_group = series.len().max(1) as i32 + 1; // bars, then a gap
        let groups = categories.len().max(1) as i32;
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        // Group i spans [i*per_group, i*per_group + bars]; its label sits at the group's middle.
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(-1..groups * per_group - 1, 0f64..y_max)
            .map_err(|e| err(e.to_string()))?;
        let bars = series.len() as i32;
        let label_at = move |x: &i32| {
            let offset = (x + 1).rem_euclid(per_group) - 1;
            let group = (x + 1).div_euclid(per_group);
            // With an even number of bars the middle is a bar boundary, else a bar's left edge.
            (offset == bars / 2 && group < groups).then_some(group as usize)
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels((groups * per_group + 1) as usize)
            .x_label_formatter(&|x| {
                label_at(x)
                    .and_then(|g| categories.get(g).cloned())
                    .unwrap_or_default()
            })
            .y_desc(y_desc)
            .y_label_formatter(&|y| format!("{y:.2}"))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (s, one) in series.iter().enumerate() {
            let colour = one.colour;
            chart
                .draw_series(one.values.iter().enumerate().map(|(g, v)| {
                    let x0 = g as i32 * per_group + s as i32;
                    Rectangle::new([(x0, 0.0), (x0 + 1, v.clamp(0.0, y_max))], colour.filled())
                }))
                .map_err(|e| err(e.to_string()))?
                .label(one.label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK.mix(0.4))
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// Histogram of per-query deltas in bins of `bin_width`, symmetric around 0 and wide enough for
/// the largest |delta|; the bin holding exact ties (delta = 0) is drawn in grey.
pub fn delta_histogram(title: &str, deltas: &[f64], bin_width: f64) -> Result<String> {
    let err = plot_error("delta_histogram");
    let extent = deltas
        .iter()
        .fold(0.0f64, |m, d| m.max(d.abs()))
        .max(bin_width);
    let half_bins = (extent / bin_width).ceil() as i64;
    let lo = -(half_bins as f64) * bin_width - bin_width / 2.0;
    let bins = (2 * half_bins + 1) as usize;
    let mut counts = vec![0usize; bins];
    for d in deltas {
        let b = ((d - lo) / bin_width).floor().clamp(0.0, (bins - 1) as f64) as usize;
        counts[b] += 1;
    }
    let y_max = (counts.iter().copied().max().unwrap_or(1) as f64 * 1.15).max(1.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let hi = lo + bins as f64 * bin_width;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(lo..hi, 0f64..y_max)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("Δ (candidate − baseline)")
            .y_desc("queries")
            .x_label_formatter(&|x| {
                if x.abs() < 1e-9 {
                    "0".to_string()
                } else {
                    format!("{x:+.2}")
                }
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(counts.iter().enumerate().map(|(b, &c)| {
                let x0 = lo + b as f64 * bin_width;
                let centre = x0 + bin_width / 2.0;
                let colour = if centre.abs() < bin_width / 2.0 {
                    TIE_COLOUR
                } else if centre > 0.0 {
                    WIN_COLOUR
                } else {
                    LOSS_COLOUR
                };
                Rectangle::new([(x0, 0.0), (x0 + bin_width, c as f64)], colour.filled())
            }))
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// Three bars: wins, ties and losses.
pub fn wins_ties_losses(title: &str, wins: usize, ties: usize, losses: usize) -> Result<String> {
    let err = plot_error("wins_ties_losses");
    let counts = [
        ("wins", wins, WIN_COLOUR),
        ("ties", ties, TIE_COLOUR),
        ("losses", losses, LOSS_COLOUR),
    ];
    let x_max = (wins.max(ties).max(losses) as f64 * 1.2).max(1.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 220)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        // Bar i spans y in [2i, 2i + 1]; its label sits at 2i + 1 (reversed so wins is on top).
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, -1..6)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(8)
            .y_label_formatter(&|y| match y {
                5 => "wins".into(),
                3 => "ties".into(),
                1 => "losses".into(),
                _ => String::new(),
            })
            .x_desc("queries")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, (_, n, colour))| {
                let y0 = 4 - 2 * i as i32;
                Rectangle::new([(0.0, y0), (*n as f64, y0 + 2)], colour.filled())
            }))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, (_, n, _))| {
                let y = 5 - 2 * i as i32;
                Text::new(
                    n.to_string(),
                    (*n as f64 + x_max * 0.01, y),
                    ("sans-serif", 14).into_font().color(&BLACK),
                )
            }))
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_well_formed(svg: &str) {
        let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
    }

    #[test]
    fn plots_are_well_formed_svg() {
        let categories: Vec<String> = ["ndcg@10", "recall@100", "mrr@10"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let bars = grouped_bars(
            "bars",
            "Metrics & <things>",
            &categories,
            &[
                BarSeries {
                    label: "base",
                    colour: BASELINE_COLOUR,
                    values: vec![0.6, 0.9, 0.55],
                },
                BarSeries {
                    label: "tuned",
                    colour: CANDIDATE_COLOUR,
                    values: vec![0.65, 0.92, 0.6],
                },
            ],
            1.0,
            "mean",
        )
        .unwrap();
        assert_well_formed(&bars);
        assert!(bars.contains("recall@100"), "category labels are drawn");
        assert!(bars.contains("&lt;things&gt;"), "titles are escaped");
        assert_well_formed(&delta_histogram("Δ", &[0.0, 0.1, -0.3, 0.5, 0.0], 0.05).unwrap());
        assert_well_formed(&delta_histogram("Δ", &[], 0.05).unwrap());
        let wtl = wins_ties_losses("w/t/l", 12, 30, 4).unwrap();
        assert_well_formed(&wtl);
        assert!(wtl.contains("losses"));
    }
}
