//! Plain-text tables whose columns fit their widest cell, so long names never shift a row.

/// How a column's cells line up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Renders `header` and `rows` as lines, columns separated by two spaces. The last column is
/// not padded, so lines carry no trailing blanks. Cells are single-line: line breaks in a cell
/// become spaces and surrounding whitespace is trimmed.
pub fn render(header: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| one_line(cell)).collect())
        .collect();
    let widths: Vec<usize> = header
        .iter()
        .enumerate()
        .map(|(i, (title, _))| {
            rows.iter()
                .filter_map(|row| row.get(i))
                .map(|cell| cell.chars().count())
                .fold(title.chars().count(), usize::max)
        })
        .collect();
    let titles: Vec<String> = header.iter().map(|(t, _)| t.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&titles).chain(&rows) {
        out.push_str(&line(row, header, &widths));
        out.push('\n');
    }
    out
}

fn line(row: &[String], header: &[(&str, Align)], widths: &[usize]) -> String {
    let last = header.len().saturating_sub(1);
    let cells: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, (_, align))| {
            let cell = row.get(i).map_or("", String::as_str);
            match (align, i == last) {
                (Align::Right, _) => format!("{cell:>w$}", w = widths[i]),
                (Align::Left, false) => format!("{cell:<w$}", w = widths[i]),
                (Align::Left, true) => cell.to_owned(),
            }
        })
        .collect();
    cells.join("  ").trim_end().to_owned()
}

fn one_line(cell: &str) -> String {
    cell.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_the_widest_cell() {
        let header = [
            ("NAME", Align::Left),
            ("N", Align::Right),
            ("NOTE", Align::Left),
        ];
        let rows = vec![
            vec!["a-very-long-name".into(), "7".into(), "x".into()],
            vec!["b".into(), "123".into(), "two\nlines\n".into()],
        ];
        assert_eq!(
            render(&header, &rows),
            "NAME                N  NOTE\n\
             a-very-long-name    7  x\n\
             b                 123  two lines\n"
        );
    }
}
