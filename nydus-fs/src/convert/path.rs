//! Normalising tar entry paths into components of the merged tree.

use crate::tree::MAX_NAME_LEN;

/// Splits a tar path into the components of a path inside the root: leading `/` and `./`,
/// empty components (`//`) and `.` are dropped, and `..` removes the previous component.
/// Returns an empty list for the root itself.
///
/// # Errors
/// A description of the problem when the path contains NUL, has a `..` that would leave the
/// root, or has a component longer than 255 bytes.
pub fn normalize(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    if path.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err("`..` escapes the root".into());
                }
            }
            _ if part.len() > MAX_NAME_LEN => {
                return Err(format!(
                    "path component of {} bytes is longer than {MAX_NAME_LEN}",
                    part.len()
                ));
            }
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalises_and_rejects() {
        let n = |p: &[u8]| normalize(p).map(|v| v.join(&b'/'));
        assert_eq!(n(b"./a//b/").unwrap(), b"a/b");
        assert_eq!(n(b"/a/./b").unwrap(), b"a/b");
        assert_eq!(n(b"a/../b").unwrap(), b"b");
        assert_eq!(n(b"./").unwrap(), b"");
        assert!(n(b"../../etc/passwd").is_err());
        assert!(n(b"a/../../x").is_err());
        assert!(n(b"a\0b").is_err());
        assert!(n(&[b'x'; 256]).is_err());
        assert!(n(&[b'x'; 255]).is_ok());
    }
}
