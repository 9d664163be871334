//! `table import` and `table export` in CSV: one row per line, destinations
//! separated by spaces.

use std::collections::HashSet;

use crate::control::table::Mirror;
use crate::control::table::Parsed;
use crate::control::table::TableError;
use crate::control::table::file::shortened;

/// CSV form for import/export: `source,destination[,destination...]` per line,
/// `#` comments allowed. Each bad line is refused on its own.
pub fn parse_csv(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut seen: HashSet<String> = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut cells = line.split(',').map(|c| c.trim().trim_matches('"'));
        let source = cells.next().unwrap_or_default();
        if n == 1 && source.eq_ignore_ascii_case("source") {
            continue;
        }
        let at = format!("line {n} ({})", shortened(source));
        let dests: Vec<String> = cells.map(str::to_string).collect();
        match Mirror::new(source, &dests) {
            Ok(m) if !seen.insert(m.key()) => {
                parsed.refuse(n, at, "the source is listed twice");
            }
            Ok(m) => parsed.take(n, at, m),
            Err(e) => parsed.refuse(n, at, e),
        }
    }
    parsed
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
