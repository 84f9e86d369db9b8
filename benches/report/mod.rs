//! What the benchmarks share: medians, and the report as a table or, with
//! `--json`, one JSON object on the last line (the keys of
//! ../shared/ANCHORS.md).

/// The median of `values`.
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Prints `rows` (key, value, what it measures): a table, or one JSON line
/// when the command line has `--json`.
pub(crate) fn print(rows: &[(&str, f64, &str)]) {
    if std::env::args().any(|a| a == "--json") {
        let fields: Vec<String> = rows
            .iter()
            .map(|(k, v, _)| format!("\"{k}\": {v:.3}"))
            .collect();
        println!("{{{}}}", fields.join(", "));
    } else {
        let width = rows.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
        for (key, value, what) in rows {
            println!("{key:<width$} {value:>14.3}   {what}");
        }
    }
}
