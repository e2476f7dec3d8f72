//! Tables for people, JSON for scripts, and time formatting.

use comfy_table::{ContentArrangement, Table, presets::NOTHING};
use serde::Serialize;

pub fn print_json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("API types serialize")
    );
}

pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| h.to_uppercase()));
    table
}

/// `2026-11-24 02:57` (UTC), or `-` for never.
pub fn time(secs: Option<u64>) -> String {
    let Some(secs) = secs else { return "-".into() };
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(secs as i64) else {
        return secs.to_string();
    };
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    at.format(&format).unwrap_or_else(|_| secs.to_string())
}

/// Prints `label: value` lines with the labels aligned.
pub fn fields(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0) + 1;
    for (label, value) in rows {
        println!("{:<width$} {value}", format!("{label}:"));
    }
}
