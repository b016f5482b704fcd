//! Plain-text layout for the inspection commands: aligned columns, labelled lines, and the
//! units people read (KiB/MiB, `4m10s`, milliseconds with as many digits as matter).
//!
//! Column widths are computed from the cells, the way `ss` and `ps` do it, so a table stays
//! aligned whatever the addresses and counters look like. Related columns (both directions of
//! a flow, the percentiles of one latency) sit under a dashed group heading instead of
//! repeating the same words in every title. Everything here is ASCII, so a character is a
//! column. A value that cannot be known is shown as [`UNKNOWN`].

/// What a cell shows for a value that is `null` in the report.
pub const UNKNOWN: &str = "-";

/// Spaces between two columns.
const GAP: usize = 2;

/// Which side of its column a cell keeps to: text to the left, numbers to the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// One column: its title, an optional group heading shared with its neighbours, and its side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub group: &'static str,
    pub title: &'static str,
    pub align: Align,
}

impl Column {
    pub const fn text(title: &'static str) -> Column {
        Column {
            group: "",
            title,
            align: Align::Left,
        }
    }

    pub const fn number(title: &'static str) -> Column {
        Column {
            group: "",
            title,
            align: Align::Right,
        }
    }

    /// The same column under a group heading; neighbours with the same heading share it.
    pub const fn under(self, group: &'static str) -> Column {
        Column { group, ..self }
    }
}

/// Rows of cells under titled columns.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[Column]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it has one cell per column.
    pub fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(row.len(), self.columns.len(), "one cell per column");
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The group line (when any column has a group), the titles, then the rows; each line ends
    /// with a newline and carries no trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|c| c.title.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        let groups = self.group_spans(&mut widths);
        let mut out = String::new();
        if !groups.is_empty() {
            let mut line = String::new();
            let mut column = 0;
            for (first, count, name) in groups {
                while column < first {
                    line.push_str(&" ".repeat(widths[column] + GAP));
                    column += 1;
                }
                let span = span_width(&widths[first..first + count]);
                line.push_str(&dashed(name, span));
                line.push_str(&" ".repeat(GAP));
                column += count;
            }
            push_line(&mut out, &line);
        }
        let titles: Vec<&str> = self.columns.iter().map(|c| c.title).collect();
        push_line(&mut out, &self.line(&widths, &titles));
        for row in &self.rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            push_line(&mut out, &self.line(&widths, &cells));
        }
        out
    }

    /// Runs of neighbouring columns under the same group heading, as (first column, number of
    /// columns, heading). A heading wider than its columns widens the last of them.
    fn group_spans(&self, widths: &mut [usize]) -> Vec<(usize, usize, &'static str)> {
        let mut spans = Vec::new();
        let mut column = 0;
        while column < self.columns.len() {
            let group = self.columns[column].group;
            let count = self.columns[column..]
                .iter()
                .take_while(|c| c.group == group)
                .count();
            if !group.is_empty() {
                // At least one dash and a space on either side of the heading.
                let needed = group.len() + 4;
                let span = span_width(&widths[column..column + count]);
                if span < needed {
                    widths[column + count - 1] += needed - span;
                }
                spans.push((column, count, group));
            }
            column += count;
        }
        spans
    }

    fn line(&self, widths: &[usize], cells: &[&str]) -> String {
        let mut line = String::new();
        for ((column, width), cell) in self.columns.iter().zip(widths).zip(cells) {
            match column.align {
                Align::Left => line.push_str(&format!("{cell:<width$}")),
                Align::Right => line.push_str(&format!("{cell:>width$}")),
            }
            line.push_str(&" ".repeat(GAP));
        }
        line
    }
}

fn span_width(widths: &[usize]) -> usize {
    widths.iter().sum::<usize>() + GAP * widths.len().saturating_sub(1)
}

/// `name` centred in a run of dashes `width` long: `---- BYTES ----`.
fn dashed(name: &str, width: usize) -> String {
    let label = format!(" {name} ");
    let dashes = width.saturating_sub(label.len());
    let left = dashes / 2;
    format!("{}{label}{}", "-".repeat(left), "-".repeat(dashes - left))
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line.trim_end());
    out.push('\n');
}

/// `label   value` lines with the values lined up after the longest label.
pub fn labelled(lines: &[(&str, String)]) -> String {
    let width = lines
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (label, value) in lines {
        push_line(&mut out, &format!("{label:<width$}  {value}"));
    }
    out
}

/// A byte count for people: `512 B`, `1.5 KiB`, `23.1 MiB`.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    // 1023.96 would print as "1024.0": move up a unit before rounding gets there.
    while value >= 1023.95 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A length of time given in milliseconds, as short as stays exact enough to read:
/// `850ms`, `12.3s`, `4m10s`, `2h05m`, `3d04h`.
pub fn duration(ms: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    let secs = ms / 1000;
    if secs < HOUR {
        format!("{}m{:02}s", secs / MINUTE, secs % MINUTE)
    } else if secs < DAY {
        format!("{}h{:02}m", secs / HOUR, secs % HOUR / MINUTE)
    } else {
        format!("{}d{:02}h", secs / DAY, secs % DAY / HOUR)
    }
}

/// Microseconds as milliseconds, with three significant digits or the whole number of
/// milliseconds, whichever is longer: `0.045`, `1.23`, `12.3`, `502`.
pub fn millis(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    match us {
        0..1_000 => format!("{ms:.3}"),
        1_000..10_000 => format!("{ms:.2}"),
        10_000..100_000 => format!("{ms:.1}"),
        _ => format!("{ms:.0}"),
    }
}

/// Microseconds in prose, with the unit: `0.081 ms`, `502 ms`, `1.50 s`.
pub fn latency(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1_000_000.0)
    } else {
        format!("{} ms", millis(us))
    }
}

/// A value that may be `null`, formatted, or [`UNKNOWN`].
pub fn or_unknown<T>(value: Option<T>, format: impl FnOnce(T) -> String) -> String {
    value.map_or_else(|| UNKNOWN.to_string(), format)
}

/// An address and port as one string, with an IPv6 address in brackets.
pub fn host_port(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut table = Table::new(&[Column::text("NAME"), Column::number("N")]);
        table.push(vec!["a".into(), "12345".into()]);
        table.push(vec!["longer name".into(), "7".into()]);
        assert_eq!(
            table.render(),
            "NAME             N\n\
             a            12345\n\
             longer name      7\n"
        );
    }

    #[test]
    fn a_group_heading_spans_its_columns_and_widens_them_when_longer() {
        let mut table = Table::new(&[
            Column::text("ID"),
            Column::number("IN").under("bytes moved"),
            Column::number("OUT").under("bytes moved"),
        ]);
        table.push(vec!["1".into(), "5".into(), "6".into()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "    - bytes moved -");
        assert_eq!(lines[1], "ID  IN          OUT");
        assert_eq!(lines[2], "1    5            6");
        // The group line starts where the first grouped column starts and ends with the last.
        assert_eq!(lines[0].find('-'), lines[1].find("IN"));
        assert_eq!(lines[0].len(), lines[1].len());
    }

    #[test]
    fn lines_have_no_trailing_spaces() {
        let mut table = Table::new(&[Column::number("A"), Column::text("NOTE")]);
        table.push(vec!["1".into(), "".into()]);
        assert!(table.render().lines().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn labelled_lines_line_up() {
        let text = labelled(&[("a", "1".into()), ("longer", "2".into())]);
        assert_eq!(text, "a       1\nlonger  2\n");
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(bytes(24_222_105), "23.1 MiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn durations_shorten_with_length() {
        assert_eq!(duration(0), "0ms");
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_345), "12.3s");
        assert_eq!(duration(250_000), "4m10s");
        assert_eq!(duration(7_512_000), "2h05m");
        assert_eq!(duration(273_600_000), "3d04h");
    }

    #[test]
    fn milliseconds_keep_three_significant_digits() {
        assert_eq!(millis(0), "0.000");
        assert_eq!(millis(45), "0.045");
        assert_eq!(millis(1_234), "1.23");
        assert_eq!(millis(12_345), "12.3");
        assert_eq!(millis(502_400), "502");
        assert_eq!(latency(81), "0.081 ms");
        assert_eq!(latency(1_500_000), "1.50 s");
    }

    #[test]
    fn unknown_values_and_addresses() {
        assert_eq!(or_unknown(None::<u64>, |v| v.to_string()), "-");
        assert_eq!(or_unknown(Some(3u64), |v| v.to_string()), "3");
        assert_eq!(host_port("127.0.0.1", 80), "127.0.0.1:80");
        assert_eq!(host_port("::1", 80), "[::1]:80");
    }
}
