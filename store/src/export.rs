//! Exports for auditors: the audit log as CSV or JSON Lines, one row at a time, and the agent
//! inventory as CSV.
//!
//! CSV follows RFC 4180: rows end in CRLF; a field holding a comma, a double quote, CR or LF is
//! put in double quotes with inner quotes doubled. Times are RFC 3339 UTC with milliseconds.
//! Lists of names (the delegation chain, models, tools) are joined with `;`; structured values
//! (verdicts, labels, budgets) are JSON.

use std::borrow::Cow;

use futures_util::{Stream, TryStreamExt};
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::StoreError;
use crate::agents::Agent;
use crate::audit::AuditRecord;
use crate::time::format_rfc3339_ms;

/// How an audit export is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

impl std::str::FromStr for ExportFormat {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(ExportFormat::Csv),
            "jsonl" | "ndjson" => Ok(ExportFormat::Jsonl),
            _ => Err(StoreError::Invalid(format!(
                "export format must be csv or jsonl, got {s:?}"
            ))),
        }
    }
}

impl ExportFormat {
    /// The HTTP content type of an export in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Jsonl => "application/x-ndjson",
        }
    }
}

/// The audit CSV's columns, in order.
pub const AUDIT_CSV_COLUMNS: &[&str] = &[
    "seq",
    "time",
    "request_id",
    "run_id",
    "chain",
    "agent",
    "owner",
    "team",
    "kind",
    "target",
    "provider",
    "decided_by",
    "verdicts",
    "policy_version",
    "input_tokens",
    "output_tokens",
    "cost_micro_usd",
    "latency_us",
    "status",
    "error_code",
    "truncated",
    "body",
    "prev_hash",
    "hash",
];

/// The agent inventory CSV's columns, in order.
pub const AGENT_CSV_COLUMNS: &[&str] = &[
    "id",
    "name",
    "owner",
    "team",
    "description",
    "purpose",
    "status",
    "source",
    "models",
    "tools",
    "budgets",
    "labels",
    "created_at",
    "updated_at",
    "last_seen_at",
];

/// One CSV field, neutralised if a spreadsheet would run it as a formula, then quoted if it has
/// to be. A `;` is quoted too: spreadsheets in locales whose list separator is `;` split on it.
pub fn csv_field(s: &str) -> Cow<'_, str> {
    let s = neutralise_formula(s);
    if s.contains([',', ';', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        s
    }
}

/// A cell starting with `=`, `+`, `-`, `@`, TAB or CR is a formula to Excel, LibreOffice and
/// Google Sheets (CSV injection: an agent's name or a tool argument reading
/// `=HYPERLINK(...)` would run on the auditor's machine). Such a cell gets a leading `'`, which
/// spreadsheets show as text. Plain numbers (`-5`, `+1.5`) are left alone: they cannot run, and
/// numeric columns stay numeric.
pub fn neutralise_formula(s: &str) -> Cow<'_, str> {
    let risky = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if risky && s.parse::<f64>().map_or(true, |n| !n.is_finite()) {
        Cow::Owned(format!("'{s}"))
    } else {
        Cow::Borrowed(s)
    }
}

fn csv_line<'a>(fields: impl IntoIterator<Item = Cow<'a, str>>) -> String {
    let mut line = String::new();
    for (i, f) in fields.into_iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&csv_field(&f));
    }
    line.push_str("\r\n");
    line
}

fn opt(s: &Option<String>) -> Cow<'_, str> {
    Cow::Borrowed(s.as_deref().unwrap_or(""))
}

fn json(v: &impl Serialize) -> Cow<'static, str> {
    // Serializing a JSON value or a string map cannot fail.
    Cow::Owned(serde_json::to_string(v).unwrap_or_default())
}

/// The audit CSV's header line.
pub fn audit_csv_header() -> String {
    csv_line(AUDIT_CSV_COLUMNS.iter().map(|c| Cow::Borrowed(*c)))
}

/// One audit event as a CSV line (CRLF-terminated).
pub fn audit_csv_row(r: &AuditRecord) -> String {
    csv_line([
        Cow::Owned(r.seq.to_string()),
        Cow::Owned(format_rfc3339_ms(r.time_ms)),
        Cow::Borrowed(r.request_id.as_str()),
        Cow::Borrowed(r.run_id.as_str()),
        Cow::Owned(r.chain.join(";")),
        opt(&r.agent),
        opt(&r.owner),
        opt(&r.team),
        Cow::Borrowed(r.kind.as_str()),
        Cow::Borrowed(r.target.as_str()),
        opt(&r.provider),
        opt(&r.decided_by),
        json(&r.verdicts),
        Cow::Borrowed(r.policy_version.as_str()),
        Cow::Owned(r.input_tokens.to_string()),
        Cow::Owned(r.output_tokens.to_string()),
        Cow::Owned(r.cost_micro_usd.to_string()),
        Cow::Owned(r.latency_us.to_string()),
        Cow::Owned(r.status.to_string()),
        opt(&r.error_code),
        Cow::Borrowed(if r.truncated { "true" } else { "false" }),
        opt(&r.body),
        Cow::Borrowed(r.prev_hash.as_str()),
        Cow::Borrowed(r.hash.as_str()),
    ])
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    #[serde(flatten)]
    record: &'a AuditRecord,
}

/// One audit event as a JSON line (`\n`-terminated): every field of [`AuditRecord`] plus
/// `time` in RFC 3339.
pub fn audit_jsonl_row(r: &AuditRecord) -> String {
    let mut line = serde_json::to_string(&JsonLine {
        time: format_rfc3339_ms(r.time_ms),
        record: r,
    })
    .unwrap_or_default();
    line.push('\n');
    line
}

/// One line of an audit export in `format` (the CSV header is separate).
pub fn audit_row(format: ExportFormat, r: &AuditRecord) -> String {
    match format {
        ExportFormat::Csv => audit_csv_row(r),
        ExportFormat::Jsonl => audit_jsonl_row(r),
    }
}

/// The agent inventory as CSV, header included.
pub fn agents_csv(agents: &[Agent]) -> String {
    let mut out = csv_line(AGENT_CSV_COLUMNS.iter().map(|c| Cow::Borrowed(*c)));
    for a in agents {
        out.push_str(&csv_line([
            Cow::Borrowed(a.id.as_str()),
            Cow::Borrowed(a.name.as_str()),
            Cow::Borrowed(a.owner.as_str()),
            Cow::Borrowed(a.team.as_str()),
            Cow::Borrowed(a.description.as_str()),
            Cow::Borrowed(a.purpose.as_str()),
            Cow::Borrowed(a.status.as_str()),
            Cow::Borrowed(a.source.as_str()),
            Cow::Owned(a.models.join(";")),
            Cow::Owned(a.tools.join(";")),
            json(&a.budgets),
            json(&a.labels),
            Cow::Owned(format_rfc3339_ms(a.created_at)),
            Cow::Owned(format_rfc3339_ms(a.updated_at)),
            Cow::Owned(a.last_seen_at.map(format_rfc3339_ms).unwrap_or_default()),
        ]));
    }
    out
}

/// Write an audit stream to `out` in `format` (CSV with its header), one row at a time; the
/// number of events written.
pub async fn write_audit<S, W>(
    events: S,
    format: ExportFormat,
    out: &mut W,
) -> Result<u64, StoreError>
where
    S: Stream<Item = Result<AuditRecord, StoreError>>,
    W: AsyncWrite + Unpin,
{
    if format == ExportFormat::Csv {
        out.write_all(audit_csv_header().as_bytes()).await?;
    }
    let mut events = std::pin::pin!(events);
    let mut n = 0;
    while let Some(r) = events.try_next().await? {
        out.write_all(audit_row(format, &r).as_bytes()).await?;
        n += 1;
    }
    out.flush().await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field(""), "");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("cr\r"), "\"cr\r\"");
        // A `;`-separating spreadsheet would split these into a second cell, here a formula.
        assert_eq!(csv_field("a;b"), "\"a;b\"");
        assert_eq!(csv_field("x;=cmd()"), "\"x;=cmd()\"");
    }

    #[test]
    fn formulas_are_neutralised() {
        assert_eq!(csv_field("=1+2"), "'=1+2");
        assert_eq!(csv_field("+cmd|' /C calc'!A0"), "'+cmd|' /C calc'!A0");
        assert_eq!(csv_field("-2+3"), "'-2+3");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("\t=1"), "'\t=1");
        assert_eq!(csv_field("\r=1"), "\"'\r=1\"");
        assert_eq!(
            csv_field("=HYPERLINK(\"x\",\"y\")"),
            "\"'=HYPERLINK(\"\"x\"\",\"\"y\"\")\""
        );
        assert_eq!(csv_field("-5"), "-5");
        assert_eq!(csv_field("+1.5"), "+1.5");
        assert_eq!(csv_field("-inf"), "'-inf");
        assert_eq!(csv_field("a=b"), "a=b");
        // Neutralised first, then quoted for the `;`.
        assert_eq!(csv_field("=SUM(A1;A2)"), "\"'=SUM(A1;A2)\"");
        assert_eq!(csv_field("@x;y"), "\"'@x;y\"");
    }

    #[test]
    fn header_matches_row_width() {
        let r = AuditRecord {
            seq: 1,
            time_ms: 0,
            request_id: String::new(),
            run_id: String::new(),
            chain: vec![],
            agent: None,
            owner: None,
            team: None,
            kind: "llm".into(),
            target: String::new(),
            provider: None,
            decided_by: None,
            verdicts: serde_json::Value::Null,
            policy_version: String::new(),
            input_tokens: 0,
            output_tokens: 0,
            cost_micro_usd: 0,
            latency_us: 0,
            status: 200,
            error_code: None,
            truncated: false,
            body: None,
            prev_hash: String::new(),
            hash: String::new(),
        };
        let row = audit_csv_row(&r);
        assert_eq!(row.matches(',').count(), AUDIT_CSV_COLUMNS.len() - 1);
        assert!(row.starts_with("1,1970-01-01T00:00:00.000Z,"));
        let line = audit_jsonl_row(&r);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["seq"], 1);
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
    }

    #[test]
    fn formats_parse() {
        assert_eq!("CSV".parse::<ExportFormat>().unwrap(), ExportFormat::Csv);
        assert_eq!(
            "jsonl".parse::<ExportFormat>().unwrap(),
            ExportFormat::Jsonl
        );
        assert!("xml".parse::<ExportFormat>().is_err());
    }
}
