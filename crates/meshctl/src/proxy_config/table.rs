//! Column-aligned tables the way istioctl prints them with Go's
//! `text/tabwriter`: every column but the last padded to its widest cell
//! plus a fixed gap, the last column left as it is, so scripts that cut
//! istioctl's output cut ours the same way.

use std::fmt::Write;

/// A header and rows of cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Column names.
    pub header: Vec<String>,
    /// One entry per line, as many cells as the header.
    pub rows: Vec<Vec<String>>,
    /// Spaces after the widest cell of a column (istioctl uses 5 for most
    /// tables, 1 for listeners).
    pub gap: usize,
}

// === impl Table ===

impl Table {
    /// An empty table with these columns.
    pub fn new(header: &[&str], gap: usize) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            gap,
        }
    }

    /// Adds a row.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// The aligned text, one line per row after the header.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths = vec![0usize; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i + 1 == columns {
                    out.push_str(cell);
                } else {
                    let pad = widths[i] + self.gap - cell.chars().count();
                    let _ = write!(out, "{cell}{:pad$}", "");
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_like_tabwriter() {
        let mut t = Table::new(&["SERVICE FQDN", "PORT", "SUBSET"], 5);
        t.push(vec![
            "istio-policy.istio-system".into(),
            "15004".into(),
            "-".into(),
        ]);
        t.push(vec!["xds-grpc".into(), "-".into(), "-".into()]);
        assert_eq!(
            t.render(),
            "SERVICE FQDN                  PORT      SUBSET\n\
             istio-policy.istio-system     15004     -\n\
             xds-grpc                      -         -\n"
        );
    }
}
