//! Output: a command builds its result once as a [`Table`] (header plus rows of JSON
//! values) and the printer of the chosen [`OutputFormat`] renders it.

use std::io::{self, Write};

use clap::ValueEnum;
use serde_json::{Map, Value};

use crate::proto;

/// How results are printed (`-w/--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns under a header, for people.
    #[default]
    Table,
    /// JSON for scripts: one document per command; `watch` prints one object per line.
    Json,
    /// Values only, comma-separated, one row per line, no header: for `cut` and `awk`.
    Simple,
}

/// A result: column names (snake_case; they become JSON keys and, upper-cased, the table
/// header) and rows of values.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Value>>,
    /// A single record: JSON prints an object rather than an array.
    record: bool,
    /// Print the table format as `KEY  value` lines (for records with many fields).
    vertical: bool,
    /// Columns only JSON shows (bulky fields such as before/after documents).
    json_only: Vec<&'static str>,
}

impl Table {
    /// An empty table with these columns.
    pub fn new(columns: &[&'static str]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
            record: false,
            vertical: false,
            json_only: Vec::new(),
        }
    }

    /// Marks the table a record: JSON prints its row as an object (null when empty).
    pub fn as_record(mut self) -> Self {
        self.record = true;
        self
    }

    /// Prints the table format as one `KEY  value` line per column.
    pub fn vertical(mut self) -> Self {
        self.vertical = true;
        self
    }

    /// Shows `columns` in JSON only.
    pub fn json_only(mut self, columns: &[&'static str]) -> Self {
        self.json_only = columns.to_vec();
        self
    }

    /// Indices of the columns the table and simple formats show.
    fn shown(&self) -> Vec<usize> {
        (0..self.columns.len())
            .filter(|i| !self.json_only.contains(&self.columns[*i]))
            .collect()
    }

    /// A table of exactly one row, printed as a JSON object.
    pub fn record(columns: &[&'static str], row: Vec<Value>) -> Self {
        let mut t = Self::new(columns);
        t.push(row);
        t.record = true;
        t
    }

    /// Appends a row; missing cells are null, extra cells are dropped.
    pub fn push(&mut self, mut row: Vec<Value>) {
        row.resize(self.columns.len(), Value::Null);
        self.rows.push(row);
    }

    /// The rows.
    pub fn rows(&self) -> &[Vec<Value>] {
        &self.rows
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The header line of the table format.
    pub fn header(&self) -> Vec<String> {
        self.shown()
            .into_iter()
            .map(|i| self.columns[i].replace('_', " ").to_uppercase())
            .collect()
    }

    /// JSON: an array of objects keyed by column (an object for a record).
    pub fn to_json(&self) -> Value {
        let objects: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let map: Map<String, Value> = self
                    .columns
                    .iter()
                    .zip(row)
                    .map(|(c, v)| (c.to_string(), v.clone()))
                    .collect();
                Value::Object(map)
            })
            .collect();
        if self.record && objects.len() <= 1 {
            return objects.into_iter().next().unwrap_or(Value::Null);
        }
        Value::Array(objects)
    }

    /// Aligned columns with a header (or `KEY  value` lines when vertical).
    pub fn render_table(&self) -> String {
        let shown = self.shown();
        let texts = |r: &Vec<Value>| shown.iter().map(|i| cell_text(&r[*i])).collect();
        let cells: Vec<Vec<String>> = if self.vertical {
            let mut out = Vec::new();
            for (n, row) in self.rows.iter().enumerate() {
                if n > 0 {
                    out.push(vec![String::new(), String::new()]);
                }
                let values: Vec<String> = texts(row);
                out.extend(
                    self.header()
                        .into_iter()
                        .zip(values)
                        .map(|(h, v)| vec![h, v]),
                );
            }
            out
        } else {
            // One row per line: free text (a pause reason, an audit reason) is cut so one
            // long cell cannot push every other column off the screen; -w json has it all.
            let clipped = |r: &Vec<Value>| -> Vec<String> {
                texts(r).into_iter().map(|t: String| clip(&t)).collect()
            };
            std::iter::once(self.header())
                .chain(self.rows.iter().map(clipped))
                .collect()
        };
        let columns = cells.first().map_or(0, Vec::len);
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                cells
                    .iter()
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &cells {
            let last = row.len().saturating_sub(1);
            let line: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == last {
                        c.clone()
                    } else {
                        format!("{c:<w$}", w = widths[i])
                    }
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    /// Comma-separated values, one row per line.
    pub fn render_simple(&self) -> String {
        let shown = self.shown();
        let mut out = String::new();
        for row in &self.rows {
            let line: Vec<String> = shown.iter().map(|i| cell_text(&row[*i])).collect();
            out.push_str(&line.join(", "));
            out.push('\n');
        }
        out
    }

    /// The table in `format`.
    pub fn render(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Table => self.render_table(),
            OutputFormat::Simple => self.render_simple(),
            OutputFormat::Json => format!("{}\n", pretty(&self.to_json())),
        }
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// How a value reads in a table cell: null as `-`, strings without quotes, arrays
/// comma-joined.
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell_text).collect::<Vec<_>>().join(","),
        Value::Object(_) => v.to_string(),
    }
}

/// Prints one table.
pub fn print(out: &mut dyn Write, format: OutputFormat, table: &Table) -> io::Result<()> {
    out.write_all(table.render(format).as_bytes())?;
    out.flush()
}

/// Prints several named tables: titled blocks for people, one JSON object keyed by name
/// for scripts. Empty tables are left out of the table and simple formats.
pub fn print_sections(
    out: &mut dyn Write,
    format: OutputFormat,
    sections: &[(&str, &Table)],
) -> io::Result<()> {
    match format {
        OutputFormat::Json => {
            let map: Map<String, Value> = sections
                .iter()
                .map(|(name, t)| (name.to_string(), t.to_json()))
                .collect();
            writeln!(out, "{}", pretty(&Value::Object(map)))?;
        }
        OutputFormat::Table => {
            let mut first = true;
            for (name, t) in sections.iter().filter(|(_, t)| !t.is_empty()) {
                if !first {
                    writeln!(out)?;
                }
                first = false;
                writeln!(out, "{}:", name.replace('_', " "))?;
                out.write_all(t.render_table().as_bytes())?;
            }
        }
        OutputFormat::Simple => {
            for (_, t) in sections {
                out.write_all(t.render_simple().as_bytes())?;
            }
        }
    }
    out.flush()
}

/// The widest cell of a horizontal table, in characters.
pub const MAX_CELL: usize = 60;

/// `text` on one line and at most [`MAX_CELL`] characters, marked `…` when cut.
pub fn clip(text: &str) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= MAX_CELL {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(MAX_CELL - 1).collect();
    cut.push('…');
    cut
}

/// A duration in milliseconds as people read it (`750ms`, `2s`).
pub fn millis(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

/// A wall-clock time in ms since the epoch as RFC 3339 (null when 0 or out of range).
pub fn timestamp(ms: i64) -> Value {
    if ms <= 0 {
        return Value::Null;
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    Value::String(humantime::format_rfc3339_millis(t).to_string())
}

/// `HELD`-style short name of a lease state.
pub fn lease_state(l: &proto::Lease) -> &'static str {
    match l.state() {
        proto::LeaseState::Held => "held",
        proto::LeaseState::Revoking => "revoking",
        proto::LeaseState::Vacant => "vacant",
        proto::LeaseState::Unspecified => "unknown",
    }
}

/// Short name of a lease mode.
pub fn lease_mode(l: &proto::Lease) -> &'static str {
    match l.mode() {
        proto::LeaseMode::ReadWrite => "read-write",
        proto::LeaseMode::ReadOnly => "read-only",
        proto::LeaseMode::Unspecified => "unknown",
    }
}

/// The columns of a lease row.
pub const LEASE_COLUMNS: [&str; 7] = [
    "service", "primary", "token", "state", "mode", "ttl", "revision",
];

/// A lease as a row of [`LEASE_COLUMNS`].
pub fn lease_row(l: &proto::Lease) -> Vec<Value> {
    let primary = if l.holder_region.is_empty() || l.state() == proto::LeaseState::Vacant {
        Value::Null
    } else {
        Value::from(l.holder_region.clone())
    };
    vec![
        Value::from(l.service.clone()),
        primary,
        Value::from(l.token),
        Value::from(lease_state(l)),
        Value::from(lease_mode(l)),
        Value::from(millis(l.ttl_ms)),
        Value::from(l.revision),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Table {
        let mut t = Table::new(&["id", "region", "applied_index"]);
        t.push(vec![json!(1), json!("us-east"), json!(42)]);
        t.push(vec![json!(12), json!(""), Value::Null]);
        t
    }

    #[test]
    fn table_format_aligns_columns_under_a_header() {
        assert_eq!(
            sample().render(OutputFormat::Table),
            "ID  REGION   APPLIED INDEX\n1   us-east  42\n12  -        -\n"
        );
    }

    #[test]
    fn simple_format_has_values_only() {
        assert_eq!(
            sample().render(OutputFormat::Simple),
            "1, us-east, 42\n12, -, -\n"
        );
    }

    #[test]
    fn json_format_keys_rows_by_column() {
        let v: Value = serde_json::from_str(&sample().render(OutputFormat::Json)).unwrap();
        assert_eq!(
            v,
            json!([
                {"id": 1, "region": "us-east", "applied_index": 42},
                {"id": 12, "region": "", "applied_index": null}
            ])
        );
    }

    #[test]
    fn vertical_tables_and_json_only_columns() {
        let t = Table::record(
            &["service", "ttl", "before"],
            vec![json!("payments"), json!("2s"), json!({"a": 1})],
        )
        .vertical()
        .json_only(&["before"]);
        assert_eq!(
            t.render(OutputFormat::Table),
            "SERVICE  payments\nTTL      2s\n"
        );
        assert_eq!(t.render(OutputFormat::Simple), "payments, 2s\n");
        assert_eq!(t.to_json()["before"], json!({"a": 1}));
    }

    #[test]
    fn a_record_is_a_json_object() {
        let t = Table::record(&["a", "b"], vec![json!(1)]);
        assert_eq!(t.to_json(), json!({"a": 1, "b": null}));
        assert_eq!(Table::new(&["a"]).as_record().to_json(), Value::Null);
    }

    #[test]
    fn sections_print_titled_blocks_or_one_object() {
        let a = Table::record(&["x"], vec![json!(1)]);
        let b = Table::new(&["y"]);
        let mut buf = Vec::new();
        print_sections(
            &mut buf,
            OutputFormat::Table,
            &[("before", &a), ("checks", &b)],
        )
        .unwrap();
        assert_eq!(String::from_utf8(buf).unwrap(), "before:\nX\n1\n");
        let mut buf = Vec::new();
        print_sections(
            &mut buf,
            OutputFormat::Json,
            &[("before", &a), ("checks", &b)],
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v, json!({"before": {"x": 1}, "checks": []}));
    }

    #[test]
    fn lease_rows_show_no_primary_when_vacant() {
        let l = proto::Lease {
            service: "payments".into(),
            holder_region: "us-east".into(),
            token: 7,
            revision: 9,
            ttl_ms: 2000,
            state: proto::LeaseState::Vacant as i32,
            mode: proto::LeaseMode::ReadWrite as i32,
            ..Default::default()
        };
        let row = lease_row(&l);
        assert_eq!(row[1], Value::Null);
        assert_eq!(row[3], json!("vacant"));
        assert_eq!(row[5], json!("2s"));
        assert_eq!(cell_text(&json!(["a", "b"])), "a,b");
    }
}
