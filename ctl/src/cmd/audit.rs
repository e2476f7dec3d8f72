//! `sidekeyctl audit`: who made each proxied request, with which credential,
//! to which host and path, its status and latency.

use sidekey_api::AuditRecord;

use crate::client::{Client, ClientResult};
use crate::output::table;

pub async fn run(
    client: &Client,
    follow: bool,
    conn: Option<String>,
    limit: usize,
    json: bool,
) -> ClientResult<()> {
    let print = move |record: AuditRecord| {
        if json {
            println!(
                "{}",
                serde_json::to_string(&record).expect("records serialize")
            );
        } else {
            println!("{}", line(&record));
        }
    };
    if follow {
        return client.audit_follow(conn.as_deref(), limit, print).await;
    }
    let records = client.audit(conn.as_deref(), limit).await?;
    if json {
        records.into_iter().for_each(print);
        return Ok(());
    }
    if records.is_empty() {
        println!("No proxied requests yet.");
        return Ok(());
    }
    let mut t = table(&[
        "time", "conn", "cred", "method", "url", "status", "ms", "outcome",
    ]);
    for r in &records {
        t.add_row(vec![
            time_of(r),
            r.conn.clone(),
            r.cred.clone().unwrap_or_else(|| "-".into()),
            r.method.clone(),
            r.url.clone(),
            r.status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            r.latency_ms
                .map(|l| l.to_string())
                .unwrap_or_else(|| "-".into()),
            r.outcome.to_string(),
        ]);
    }
    println!("{t}");
    Ok(())
}

fn line(r: &AuditRecord) -> String {
    format!(
        "{} {} {} {} {} {} {}ms {}",
        time_of(r),
        r.conn,
        r.cred.as_deref().unwrap_or("-"),
        r.method,
        r.url,
        r.status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into()),
        r.latency_ms.unwrap_or(0),
        r.outcome
    )
}

fn time_of(r: &AuditRecord) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.time_ms) * 1_000_000);
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    at.ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| r.time_ms.to_string())
}
