//! `table import` and `table export` in CSV: one row per line, destinations
//! separated by spaces.

use crate::control::table::Mirror;
use crate::control::table::TableError;

/// CSV form for import/export: `source,destination[,destination...]` per line,
/// `#` comments allowed.
pub fn parse_csv(text: &str) -> Result<Vec<Mirror>, TableError> {
    let mut out: Vec<Mirror> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut cells = line.split(',').map(|c| c.trim().trim_matches('"'));
        let source = cells.next().unwrap_or_default();
        if n == 0 && source.eq_ignore_ascii_case("source") {
            continue;
        }
        let dests: Vec<String> = cells.map(str::to_string).collect();
        let m = Mirror::new(source, &dests)
            .map_err(|e| TableError::Invalid(format!("line {}: {e}", n + 1)))?;
        if out.iter().any(|o| o.source == m.source) {
            return Err(TableError::Invalid(format!(
                "line {}: the source {} is listed twice",
                n + 1,
                m.source
            )));
        }
        out.push(m);
    }
    Ok(out)
}

/// CSV holds image rows only; a repository row's tag rule needs YAML.
pub fn render_csv(mirrors: &[Mirror]) -> Result<String, TableError> {
    let mut s = String::from("source,destinations\n");
    for m in mirrors {
        if m.select.is_some() {
            return Err(TableError::Invalid(format!(
                "mirror {} has a `tags` rule, which CSV cannot hold; export as YAML",
                m.source
            )));
        }
        if !m.platforms.is_empty() {
            return Err(TableError::Invalid(format!(
                "mirror {} has `platforms`, which CSV cannot hold; export as YAML",
                m.source
            )));
        }
        s.push_str(&m.source.to_string());
        for d in m.destination_names() {
            s.push(',');
            s.push_str(&d);
        }
        s.push('\n');
    }
    Ok(s)
}
