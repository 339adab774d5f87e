//! Evaluation reports: `metrics.json`, `per_query.csv`, `report.md` and `report.html` (with
//! inline SVG plots), plus the short table printed to the terminal.
//!
//! This module is the only writer of these files.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use crate::compare::PairedComparison;
use crate::error::{EvalError, Result};
use crate::evaluator::Timings;
use crate::gate::GateOutcome;
use crate::metrics::{Definitions, Evaluation, MetricName};
use crate::plots::{self, BarSeries, BASELINE_COLOUR, CANDIDATE_COLOUR};

/// File names written by [`Report::write`].
pub mod files {
    /// Means per dataset, model and metric, plus comparison and gate.
    pub const METRICS_JSON: &str = "metrics.json";
    /// One row per query: each model's metrics and the delta.
    pub const PER_QUERY_CSV: &str = "per_query.csv";
    /// The report in Markdown.
    pub const REPORT_MD: &str = "report.md";
    /// The report as one HTML page with inline SVG plots.
    pub const REPORT_HTML: &str = "report.html";
}

/// Metrics shown in short tables and plots, when computed.
const HEADLINE: [&str; 7] = [
    "ndcg@10",
    "recall@10",
    "recall@100",
    "mrr@10",
    "map@100",
    "precision@1",
    "hit@10",
];

/// One model's results on one dataset.
#[derive(Debug, Clone)]
pub struct ModelResult {
    /// Short name in tables (e.g. `tuned`, `base`).
    pub label: String,
    /// Where the model (or run file) came from.
    pub source: String,
    /// The model's fingerprint (empty for a run file).
    pub fingerprint: String,
    /// The metrics.
    pub evaluation: Evaluation,
    /// Where the time went (zero for a run file).
    pub timings: Timings,
}

/// Everything evaluated on one dataset.
#[derive(Debug, Clone)]
pub struct DatasetResult {
    /// Dataset name (the directory's name).
    pub name: String,
    /// Where it came from.
    pub source: String,
    /// The qrels split.
    pub split: String,
    /// Corpus size (0 for a run file).
    pub documents: usize,
    /// Data warnings, printed and kept in the report.
    pub warnings: Vec<String>,
    /// The model under evaluation.
    pub candidate: ModelResult,
    /// The model it is compared with, if any.
    pub baseline: Option<ModelResult>,
    /// The paired comparison on nDCG@10, when there is a baseline.
    pub comparison: Option<PairedComparison>,
    /// Query id → text, for the per-query tables.
    pub query_texts: HashMap<String, String>,
}

/// A whole evaluation: the domain set, optionally a general set, and the gate's verdict.
#[derive(Debug, Clone)]
pub struct Report {
    /// Metric definitions used throughout.
    pub definitions: Definitions,
    /// The domain dataset.
    pub domain: DatasetResult,
    /// The general-capability dataset, if evaluated.
    pub general: Option<DatasetResult>,
    /// The gate's verdict, if a gate was asked for.
    pub gate: Option<GateOutcome>,
}

impl DatasetResult {
    fn models(&self) -> Vec<&ModelResult> {
        let mut out = Vec::new();
        if let Some(b) = &self.baseline {
            out.push(b);
        }
        out.push(&self.candidate);
        out
    }

    fn headline(&self) -> Vec<MetricName> {
        let all = &self.candidate.evaluation.metrics;
        let picked: Vec<MetricName> = HEADLINE
            .iter()
            .filter_map(|h| all.iter().find(|m| m.to_string() == *h).copied())
            .collect();
        if picked.is_empty() {
            all.iter().take(6).copied().collect()
        } else {
            picked
        }
    }

    fn json(&self, role: &str) -> Value {
        let models: serde_json::Map<String, Value> = self
            .models()
            .into_iter()
            .map(|m| {
                let metrics: serde_json::Map<String, Value> = m
                    .evaluation
                    .metrics
                    .iter()
                    .zip(&m.evaluation.mean)
                    .map(|(name, v)| (name.to_string(), json!(v)))
                    .collect();
                (
                    m.label.clone(),
                    json!({
                        "source": m.source,
                        "fingerprint": m.fingerprint,
                        "queries": m.evaluation.per_query.len(),
                        "metrics": metrics,
                        "timings": m.timings,
                        "scoring_s": m.timings.scoring_s(),
                    }),
                )
            })
            .collect();
        let comparison = self.comparison.as_ref().map(|c| {
            json!({
                "metric": c.metric.to_string(),
                "baseline": self.baseline.as_ref().map(|b| b.label.clone()),
                "candidate": self.candidate.label,
                "queries": c.queries,
                "baseline_mean": c.baseline_mean,
                "candidate_mean": c.candidate_mean,
                "mean_delta": c.mean_delta,
                "ci95": [c.ci95.0, c.ci95.1],
                "p_value": c.p_value,
                "test": "paired randomization (sign flip), two-sided; bootstrap percentile interval",
                "resamples": c.resamples,
                "wins": c.wins,
                "ties": c.ties,
                "losses": c.losses,
            })
        });
        json!({
            "role": role,
            "name": self.name,
            "source": self.source,
            "split": self.split,
            "documents": self.documents,
            "queries": self.candidate.evaluation.per_query.len(),
            "warnings": self.warnings,
            "models": models,
            "comparison": comparison,
        })
    }

    fn markdown_table(&self, out: &mut String, metrics: &[MetricName]) {
        let models = self.models();
        let _ = write!(out, "| metric |");
        for m in &models {
            let _ = write!(out, " {} |", m.label);
        }
        if self.baseline.is_some() {
            out.push_str(" Δ |");
        }
        out.push_str("\n|---|");
        for _ in &models {
            out.push_str("---:|");
        }
        if self.baseline.is_some() {
            out.push_str("---:|");
        }
        out.push('\n');
        for row in metric_rows(self, metrics) {
            let _ = write!(out, "| {} |", row.metric);
            for v in &row.values {
                let _ = write!(out, " {} |", fmt_opt(*v));
            }
            if let Some(d) = row.delta {
                let _ = write!(out, " {d:+.4} |");
            }
            out.push('\n');
        }
    }

    /// Queries with the largest gains (`best = true`) or losses, with their texts.
    fn extremes(&self, best: bool, n: usize) -> Vec<(&str, &str, f64, f64, f64)> {
        let Some(c) = &self.comparison else {
            return Vec::new();
        };
        let mut rows: Vec<_> = c
            .per_query
            .iter()
            .filter(|q| {
                if best {
                    q.delta > 1e-9
                } else {
                    q.delta < -1e-9
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            let (x, y) = if best {
                (b.delta, a.delta)
            } else {
                (a.delta, b.delta)
            };
            x.total_cmp(&y).then_with(|| a.query_id.cmp(&b.query_id))
        });
        rows.into_iter()
            .take(n)
            .map(|q| {
                (
                    q.query_id.as_str(),
                    self.query_texts.get(&q.query_id).map_or("", String::as_str),
                    q.baseline,
                    q.candidate,
                    q.delta,
                )
            })
            .collect()
    }

    fn comparison_sentence(&self) -> Option<String> {
        let c = self.comparison.as_ref()?;
        let base = self.baseline.as_ref()?;
        Some(format!(
            "{cand} vs {base}: mean Δ{metric} {delta:+.4} (95% CI {lo:+.4} … {hi:+.4}, paired randomization p = {p:.4}, {n} queries); wins/ties/losses {w}/{t}/{l}",
            cand = self.candidate.label,
            base = base.label,
            metric = c.metric,
            delta = c.mean_delta,
            lo = c.ci95.0,
            hi = c.ci95.1,
            p = c.p_value,
            n = c.queries,
            w = c.wins,
            t = c.ties,
            l = c.losses,
        ))
    }
}

/// One table row: each model's mean of `metric` (baseline first) and, with a baseline, the delta.
struct MetricRow {
    metric: MetricName,
    values: Vec<Option<f64>>,
    delta: Option<f64>,
}

fn metric_rows(data: &DatasetResult, metrics: &[MetricName]) -> Vec<MetricRow> {
    let models = data.models();
    metrics
        .iter()
        .map(|metric| {
            let values: Vec<Option<f64>> = models
                .iter()
                .map(|m| m.evaluation.mean_of(*metric))
                .collect();
            let delta = match (data.baseline.is_some(), values.first(), values.last()) {
                (true, Some(Some(b)), Some(Some(c))) => Some(c - b),
                _ => None,
            };
            MetricRow {
                metric: *metric,
                values,
                delta,
            }
        })
        .collect()
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.4}"))
}

/// A table of `metrics`: one column per model, and the delta with a baseline.
fn html_table(out: &mut String, data: &DatasetResult, metrics: &[MetricName]) {
    let models = data.models();
    out.push_str("<table><tr><th>metric</th>");
    for m in &models {
        let _ = write!(out, "<th>{}</th>", html_escape(&m.label));
    }
    if data.baseline.is_some() {
        out.push_str("<th>Δ</th>");
    }
    out.push_str("</tr>\n");
    for row in metric_rows(data, metrics) {
        let _ = write!(out, "<tr><td>{}</td>", row.metric);
        for v in &row.values {
            let _ = write!(out, "<td class=\"n\">{}</td>", fmt_opt(*v));
        }
        if let Some(d) = row.delta {
            let class = if d > 1e-9 {
                "pos"
            } else if d < -1e-9 {
                "neg"
            } else {
                ""
            };
            let _ = write!(out, "<td class=\"n {class}\">{d:+.4}</td>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Quotes a CSV field when it holds a comma, quote or line break (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

impl Report {
    fn datasets(&self) -> Vec<(&'static str, &DatasetResult)> {
        let mut out = vec![("domain", &self.domain)];
        if let Some(g) = &self.general {
            out.push(("general", g));
        }
        out
    }

    /// `metrics.json`: per dataset, per model, per metric; comparison and gate.
    pub fn metrics_json(&self) -> Value {
        json!({
            "definitions": self.definitions.to_string(),
            "datasets": self.datasets().into_iter().map(|(role, d)| d.json(role)).collect::<Vec<_>>(),
            "gate": self.gate,
        })
    }

    /// `per_query.csv`: one row per dataset and query; each model's value of every metric and,
    /// with a baseline, the delta (candidate − baseline).
    pub fn per_query_csv(&self) -> String {
        let metrics = &self.domain.candidate.evaluation.metrics;
        let mut out = String::from("dataset,query_id,query");
        let models = self.domain.models();
        for m in &models {
            for metric in metrics {
                let _ = write!(out, ",{}:{metric}", csv_field(&m.label));
            }
        }
        if self.domain.baseline.is_some() {
            for metric in metrics {
                let _ = write!(out, ",delta:{metric}");
            }
        }
        out.push('\n');
        for (_, data) in self.datasets() {
            let models = data.models();
            let by_query: Vec<HashMap<&str, &Vec<f64>>> = models
                .iter()
                .map(|m| {
                    m.evaluation
                        .per_query
                        .iter()
                        .map(|q| (q.query_id.as_str(), &q.values))
                        .collect()
                })
                .collect();
            for q in &data.candidate.evaluation.per_query {
                let text = data.query_texts.get(&q.query_id).map_or("", String::as_str);
                let _ = write!(
                    out,
                    "{},{},{}",
                    csv_field(&data.name),
                    csv_field(&q.query_id),
                    csv_field(text)
                );
                let rows: Vec<Option<&&Vec<f64>>> = by_query
                    .iter()
                    .map(|m| m.get(q.query_id.as_str()))
                    .collect();
                for row in &rows {
                    for c in 0..metrics.len() {
                        match row {
                            Some(values) => {
                                let _ = write!(out, ",{:.6}", values[c]);
                            }
                            None => out.push(','),
                        }
                    }
                }
                if data.baseline.is_some() {
                    for c in 0..metrics.len() {
                        match (
                            rows.first().copied().flatten(),
                            rows.last().copied().flatten(),
                        ) {
                            (Some(b), Some(cand)) => {
                                let _ = write!(out, ",{:.6}", cand[c] - b[c]);
                            }
                            _ => out.push(','),
                        }
                    }
                }
                out.push('\n');
            }
        }
        out
    }

    /// The short table printed to the terminal.
    pub fn summary_table(&self) -> String {
        let mut out = String::new();
        for (role, data) in self.datasets() {
            let models = data.models();
            let _ = writeln!(
                out,
                "{role}: {} ({} split, {} queries, {} definitions)",
                data.name,
                data.split,
                data.candidate.evaluation.per_query.len(),
                self.definitions
            );
            let _ = write!(out, "  {:<12}", "metric");
            for m in &models {
                let _ = write!(out, " {:>10}", m.label);
            }
            if data.baseline.is_some() {
                let _ = write!(out, " {:>9}", "Δ");
            }
            out.push('\n');
            for row in metric_rows(data, &data.headline()) {
                let _ = write!(out, "  {:<12}", row.metric.to_string());
                for v in row.values.iter().flatten() {
                    let _ = write!(out, " {v:>10.4}");
                }
                if let Some(d) = row.delta {
                    let _ = write!(out, " {d:>+9.4}");
                }
                out.push('\n');
            }
            if let Some(sentence) = data.comparison_sentence() {
                let _ = writeln!(out, "  {sentence}");
            }
        }
        if let Some(gate) = &self.gate {
            for check in &gate.checks {
                let _ = writeln!(
                    out,
                    "gate {}: {}",
                    if check.passed { "PASS" } else { "FAIL" },
                    check.message
                );
            }
        }
        out
    }

    /// `report.md`.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# attune evaluation report\n\n");
        let _ = writeln!(
            out,
            "Metric definitions: **{}** (see attune-eval's `metrics` module). Retrieval: exact cosine over the whole corpus.\n",
            self.definitions
        );
        if let Some(gate) = &self.gate {
            let _ = writeln!(
                out,
                "## Gate: {}\n",
                if gate.passed { "PASSED" } else { "FAILED" }
            );
            for check in &gate.checks {
                let _ = writeln!(
                    out,
                    "- {} {}",
                    if check.passed { "✅" } else { "❌" },
                    check.message
                );
            }
            out.push('\n');
        }
        for (role, data) in self.datasets() {
            let _ = writeln!(
                out,
                "## {} set: {} ({} split)\n",
                if role == "domain" {
                    "Domain"
                } else {
                    "General"
                },
                data.name,
                data.split
            );
            let _ = writeln!(
                out,
                "{} queries, {} documents; source `{}`.\n",
                data.candidate.evaluation.per_query.len(),
                data.documents,
                data.source
            );
            for m in data.models() {
                let _ = writeln!(out, "- **{}**: `{}`", m.label, m.source);
            }
            out.push('\n');
            if let Some(sentence) = data.comparison_sentence() {
                let _ = writeln!(out, "{sentence}.\n");
            }
            data.markdown_table(&mut out, &data.candidate.evaluation.metrics);
            out.push('\n');
            for (title, best) in [("Largest gains", true), ("Largest losses", false)] {
                let rows = data.extremes(best, 10);
                if rows.is_empty() {
                    continue;
                }
                let _ = writeln!(out, "### {title} (nDCG@10)\n");
                out.push_str(
                    "| query | text | baseline | candidate | Δ |\n|---|---|---:|---:|---:|\n",
                );
                for (id, text, b, c, d) in rows {
                    let _ = writeln!(
                        out,
                        "| {id} | {} | {b:.4} | {c:.4} | {d:+.4} |",
                        text.replace('|', "\\|")
                    );
                }
                out.push('\n');
            }
            if !data.warnings.is_empty() {
                out.push_str("### Data warnings\n\n");
                for w in &data.warnings {
                    let _ = writeln!(out, "- {w}");
                }
                out.push('\n');
            }
            self.markdown_timings(&mut out, data);
        }
        out
    }

    fn markdown_timings(&self, out: &mut String, data: &DatasetResult) {
        let models = data.models();
        if models.iter().all(|m| m.timings == Timings::default()) {
            return;
        }
        out.push_str("### Timings (seconds)\n\n| model | corpus embedding | queries embedding | retrieval | metrics | scoring / embedding |\n|---|---:|---:|---:|---:|---:|\n");
        for m in models {
            let t = &m.timings;
            let embedding = t.corpus_embedding_s + t.query_embedding_s;
            let _ = writeln!(
                out,
                "| {} | {:.2}{} | {:.2} | {:.4} | {:.4} | {} |",
                m.label,
                t.corpus_embedding_s,
                if t.corpus_from_cache { " (cache)" } else { "" },
                t.query_embedding_s,
                t.retrieval_s,
                t.metrics_s,
                if t.corpus_from_cache {
                    "–".to_string()
                } else {
                    format!("{:.2}%", 100.0 * t.scoring_s() / embedding.max(1e-12))
                }
            );
        }
        out.push('\n');
    }

    /// `report.html`: one self-contained page with inline SVG plots.
    pub fn html(&self) -> Result<String> {
        let mut out = String::from(concat!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
            "<title>attune evaluation report</title>\n<style>\n",
            "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1040px;margin:24px auto;padding:0 16px;color:#222}\n",
            "h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}\n",
            "table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ddd;padding:4px 8px}\n",
            "td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f6f8}\n",
            ".pos{color:#2e8b57}.neg{color:#c0392b}.gate{padding:8px 12px;border-radius:6px;margin:12px 0}\n",
            ".pass{background:#e8f6ee;border:1px solid #2e8b57}.fail{background:#fbeaea;border:1px solid #c0392b}\n",
            ".plots{display:flex;flex-wrap:wrap;gap:8px}.plots svg{max-width:100%;height:auto;border:1px solid #eee}\n",
            ".muted{color:#666;font-size:.9em}\n</style>\n</head>\n<body>\n",
            "<h1>attune evaluation report</h1>\n"
        ));
        let _ = writeln!(
            out,
            "<p class=\"muted\">Metric definitions: <b>{}</b>. Retrieval: exact cosine over the whole corpus.</p>",
            self.definitions
        );
        if let Some(gate) = &self.gate {
            let _ = writeln!(
                out,
                "<div class=\"gate {}\"><b>Gate {}</b><ul>",
                if gate.passed { "pass" } else { "fail" },
                if gate.passed { "passed" } else { "failed" }
            );
            for check in &gate.checks {
                let _ = writeln!(
                    out,
                    "<li><b>{}</b> {}</li>",
                    if check.passed { "PASS" } else { "FAIL" },
                    html_escape(&check.message)
                );
            }
            out.push_str("</ul></div>\n");
        }
        for (role, data) in self.datasets() {
            self.html_dataset(&mut out, role, data)?;
        }
        out.push_str("</body>\n</html>\n");
        Ok(out)
    }

    fn html_dataset(&self, out: &mut String, role: &str, data: &DatasetResult) -> Result<()> {
        let _ =
            writeln!(
            out,
            "<h2>{} set: {} <span class=\"muted\">({} split, {} queries, {} documents)</span></h2>",
            if role == "domain" { "Domain" } else { "General" },
            html_escape(&data.name),
            html_escape(&data.split),
            data.candidate.evaluation.per_query.len(),
            data.documents
        );
        out.push_str("<ul class=\"muted\">");
        for m in data.models() {
            let _ = write!(
                out,
                "<li><b>{}</b>: <code>{}</code></li>",
                html_escape(&m.label),
                html_escape(&m.source)
            );
        }
        out.push_str("</ul>\n");
        if let Some(sentence) = data.comparison_sentence() {
            let _ = writeln!(out, "<p>{}</p>", html_escape(&sentence));
        }

        // Headline table; every metric in a collapsible one.
        html_table(out, data, &data.headline());
        out.push_str("<details><summary>All metrics</summary>\n");
        html_table(out, data, &data.candidate.evaluation.metrics);
        out.push_str("</details>\n");

        // Plots.
        let models = data.models();
        out.push_str("<div class=\"plots\">\n");
        let headline = data.headline();
        let categories: Vec<String> = headline.iter().map(|m| m.to_string()).collect();
        let series: Vec<BarSeries<'_>> = models
            .iter()
            .map(|m| BarSeries {
                label: &m.label,
                colour: if std::ptr::eq(*m, &data.candidate) {
                    CANDIDATE_COLOUR
                } else {
                    BASELINE_COLOUR
                },
                values: headline
                    .iter()
                    .map(|h| m.evaluation.mean_of(*h).unwrap_or(0.0))
                    .collect(),
            })
            .collect();
        out.push_str(&plots::grouped_bars(
            "metric_bars",
            &format!("{}: mean metrics", data.name),
            &categories,
            &series,
            1.0,
            "mean over queries",
        )?);
        if let Some(c) = &data.comparison {
            let deltas: Vec<f64> = c.per_query.iter().map(|q| q.delta).collect();
            out.push_str(&plots::delta_histogram(
                &format!("{}: per-query Δ{}", data.name, c.metric),
                &deltas,
                0.05,
            )?);
            out.push_str(&plots::wins_ties_losses(
                &format!("{}: wins / ties / losses on {}", data.name, c.metric),
                c.wins,
                c.ties,
                c.losses,
            )?);
        }
        out.push_str("</div>\n");

        for (title, best) in [("Largest gains", true), ("Largest losses", false)] {
            let rows = data.extremes(best, 10);
            if rows.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "<h3>{title} (nDCG@10)</h3>\n<table><tr><th>query</th><th>text</th><th>baseline</th><th>candidate</th><th>Δ</th></tr>"
            );
            for (id, text, b, c, d) in rows {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td class=\"n\">{b:.4}</td><td class=\"n\">{c:.4}</td><td class=\"n {}\">{d:+.4}</td></tr>",
                    html_escape(id),
                    html_escape(text),
                    if d > 0.0 { "pos" } else { "neg" }
                );
            }
            out.push_str("</table>\n");
        }
        if !data.warnings.is_empty() {
            out.push_str("<h3>Data warnings</h3><ul>");
            for w in &data.warnings {
                let _ = write!(out, "<li>{}</li>", html_escape(w));
            }
            out.push_str("</ul>\n");
        }
        let mut timings = String::new();
        self.markdown_timings(&mut timings, data);
        if !timings.is_empty() {
            out.push_str("<h3>Timings (seconds)</h3><table>");
            for (i, line) in timings
                .lines()
                .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
                .enumerate()
            {
                let cell = if i == 0 { "th" } else { "td" };
                out.push_str("<tr>");
                for field in line.trim_matches('|').split('|') {
                    let _ = write!(out, "<{cell}>{}</{cell}>", html_escape(field.trim()));
                }
                out.push_str("</tr>");
            }
            out.push_str("</table>\n");
        }
        Ok(())
    }

    /// Writes the four report files into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
        let json = serde_json::to_string_pretty(&self.metrics_json())
            .expect("report JSON holds only finite numbers and strings");
        let html = self.html()?;
        for (name, body) in [
            (files::METRICS_JSON, json),
            (files::PER_QUERY_CSV, self.per_query_csv()),
            (files::REPORT_MD, self.markdown()),
            (files::REPORT_HTML, html),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, body).map_err(|e| EvalError::io(&path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{compare, ComparisonSettings};
    use crate::metrics::{MetricKind, QueryMetrics};

    fn model(label: &str, ndcg: &[f64]) -> ModelResult {
        let metrics = vec![MetricName::NDCG_10, MetricName::at(MetricKind::Recall, 100)];
        let per_query: Vec<QueryMetrics> = ndcg
            .iter()
            .enumerate()
            .map(|(i, v)| QueryMetrics {
                query_id: format!("q{i}"),
                relevant: 1,
                values: vec![*v, (v + 0.2).min(1.0)],
            })
            .collect();
        let mean = (0..2)
            .map(|c| per_query.iter().map(|q| q.values[c]).sum::<f64>() / per_query.len() as f64)
            .collect();
        ModelResult {
            label: label.into(),
            source: format!("models/{label}"),
            fingerprint: "abc".into(),
            evaluation: Evaluation {
                definitions: Definitions::TrecEval,
                metrics,
                per_query,
                mean,
                judged_without_ranking: 0,
                ranked_without_judgment: 0,
            },
            timings: Timings {
                corpus_embedding_s: 10.0,
                query_embedding_s: 1.0,
                retrieval_s: 0.01,
                metrics_s: 0.001,
                corpus_from_cache: false,
            },
        }
    }

    fn report() -> Report {
        let base = model("base", &[0.5, 0.2, 0.9, 0.4]);
        let tuned = model("tuned", &[0.7, 0.2, 0.8, 0.6]);
        let comparison = compare(
            &base.evaluation,
            &tuned.evaluation,
            MetricName::NDCG_10,
            &ComparisonSettings::default(),
        )
        .unwrap();
        let texts = [
            ("q0", "red \"running\" shoes, size 42"),
            ("q2", "<b>usb-c</b> hub"),
        ];
        Report {
            definitions: Definitions::TrecEval,
            domain: DatasetResult {
                name: "shop".into(),
                source: "data/shop".into(),
                split: "test".into(),
                documents: 10,
                warnings: vec!["data/shop: 1 qrels rows name 1 queries that are not in queries.jsonl; those queries are skipped".into()],
                candidate: tuned,
                baseline: Some(base),
                comparison: Some(comparison),
                query_texts: texts.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            },
            general: None,
            gate: None,
        }
    }

    #[test]
    fn files_hold_every_model_metric_and_delta() {
        let dir = tempfile::tempdir().unwrap();
        let report = report();
        report.write(dir.path()).unwrap();

        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(files::METRICS_JSON)).unwrap(),
        )
        .unwrap();
        let domain = &json["datasets"][0];
        assert_eq!(
            domain["models"]["tuned"]["metrics"]["ndcg@10"]
                .as_f64()
                .unwrap(),
            0.575
        );
        assert_eq!(
            domain["models"]["base"]["metrics"]["ndcg@10"]
                .as_f64()
                .unwrap(),
            0.5
        );
        assert_eq!(domain["comparison"]["wins"], 2);
        assert_eq!(domain["comparison"]["losses"], 1);

        let csv = std::fs::read_to_string(dir.path().join(files::PER_QUERY_CSV)).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "dataset,query_id,query,base:ndcg@10,base:recall@100,tuned:ndcg@10,tuned:recall@100,delta:ndcg@10,delta:recall@100"
        );
        assert_eq!(lines.len(), 5);
        assert!(lines[1].starts_with("shop,q0,\"red \"\"running\"\" shoes, size 42\",0.500000,"));
        assert!(lines[1].ends_with(",0.200000,0.200000"), "{}", lines[1]);

        let md = std::fs::read_to_string(dir.path().join(files::REPORT_MD)).unwrap();
        assert!(
            md.contains("| ndcg@10 | 0.5000 | 0.5750 | +0.0750 |"),
            "{md}"
        );
        assert!(md.contains("Largest losses"));
        assert!(md.contains("qrels rows name 1 queries"));

        let html = std::fs::read_to_string(dir.path().join(files::REPORT_HTML)).unwrap();
        assert!(
            html.contains("&lt;b&gt;usb-c&lt;/b&gt; hub"),
            "query text is escaped"
        );
        assert_eq!(html.matches("<svg").count(), 3);
        // Every inline SVG is well-formed XML on its own.
        for chunk in html.split("<svg").skip(1) {
            let end = chunk.find("</svg>").unwrap() + "</svg>".len();
            let svg = format!("<svg{}", &chunk[..end]);
            roxmltree::Document::parse(&svg).unwrap();
        }
    }

    #[test]
    fn terminal_table_states_the_comparison() {
        let table = report().summary_table();
        assert!(table.contains("ndcg@10"), "{table}");
        assert!(table.contains("+0.0750"), "{table}");
        assert!(table.contains("wins/ties/losses 2/1/1"), "{table}");
    }
}
