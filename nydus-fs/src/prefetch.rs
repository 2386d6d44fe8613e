//! Prefetch lists: the files a container reads at start-up, in first-access order, one
//! absolute image path per line.
//!
//! Paths are arbitrary bytes, so lines are escaped: `\\` for a backslash, `\n` for a newline,
//! and `\xHH` for any byte outside printable ASCII (including every byte of a non-UTF-8 or
//! non-ASCII name). `mount --record-trace` writes this format and `convert --prefetch` reads
//! it; empty lines and lines starting with `#` are ignored.

use std::fmt::Write as _;

/// Why a prefetch list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefetchError {
    /// A line has a bad escape or is not an absolute path.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// One line for `path`.
pub fn escape_path(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// The path a line stands for.
fn unescape_line(line: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(line.len());
    let mut bytes = line.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(b'n') => out.push(b'\n'),
            Some(b'x') => {
                let hi = bytes.next();
                let lo = bytes.next();
                let hex = [hi.unwrap_or(b'?'), lo.unwrap_or(b'?')];
                let s = std::str::from_utf8(&hex).map_err(|_| "bad \\x escape".to_string())?;
                out.push(u8::from_str_radix(s, 16).map_err(|_| format!("bad escape \\x{s}"))?);
            }
            Some(other) => return Err(format!("unknown escape \\{}", char::from(other))),
            None => return Err("line ends in a lone backslash".into()),
        }
    }
    Ok(out)
}

/// Parses a list; paths must be absolute. Duplicates are kept once, at their first place.
///
/// # Errors
/// [`PrefetchError::Line`] names the first bad line.
pub fn parse_list(text: &str) -> Result<Vec<Vec<u8>>, PrefetchError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: String| PrefetchError::Line {
            line: i + 1,
            reason,
        };
        let path = unescape_line(line).map_err(err)?;
        if path.first() != Some(&b'/') {
            return Err(err(format!("{line:?} is not an absolute path")));
        }
        if seen.insert(path.clone()) {
            out.push(path);
        }
    }
    Ok(out)
}

/// The list as text (one escaped path per line).
pub fn format_list<'a>(paths: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut out = String::new();
    for p in paths {
        out.push_str(&escape_path(p));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_bytes_round_trip() {
        let paths: Vec<Vec<u8>> = vec![
            b"/bin/sh".to_vec(),
            b"/odd\nname\\with\x00nul".to_vec(),
            "/caf\u{e9}".as_bytes().to_vec(),
            vec![b'/', 0xff, 0xfe, b' ', b'#'],
        ];
        let text = format_list(paths.iter().map(Vec::as_slice));
        assert_eq!(text.lines().count(), paths.len(), "one line per path");
        assert_eq!(parse_list(&text).expect("parse"), paths);
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            parse_list("/a\nrelative\n"),
            Err(PrefetchError::Line {
                line: 2,
                reason: "\"relative\" is not an absolute path".into()
            })
        );
        assert!(parse_list("/a\\q").is_err());
        assert!(parse_list("/a\\x4").is_err());
        assert!(parse_list("/a\\").is_err());
        assert_eq!(
            parse_list("# comment\n\n/a\n/a\n/b\n").expect("parse"),
            vec![b"/a".to_vec(), b"/b".to_vec()]
        );
    }
}
