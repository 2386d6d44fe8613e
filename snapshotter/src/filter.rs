//! Walk's filters: the subset of containerd's filter syntax that snapshots are filtered by.
//!
//! ```text
//! filter   := selector (',' selector)*            every selector must match
//! selector := fieldpath [('==' | '!=') value]     no operator: the field is present
//! fieldpath:= field ('.' field)*                  name | parent | kind | labels.<key>
//! field    := "quoted" | [A-Za-z0-9_/-]+
//! value    := "quoted" | [^\s,]+
//! ```
//!
//! Several filters match a snapshot if any of them does; none match every snapshot.
//! containerd's `~=` (regular expression) is refused with an error rather than ignored.

use crate::store::{Kind, Record};

/// A filter that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter {filter:?} at byte {offset}: expected {expected}")]
pub struct FilterError {
    /// The whole filter.
    pub filter: String,
    /// Where parsing stopped.
    pub offset: usize,
    /// What was expected there.
    pub expected: &'static str,
}

/// Parsed filters: any one of them (each a conjunction of selectors) must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    any: Vec<Vec<Selector>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    path: Vec<String>,
    test: Test,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Test {
    Present,
    Equal(String),
    NotEqual(String),
}

impl Filters {
    /// Parses every filter. Blank filters are ignored.
    ///
    /// # Errors
    /// The first filter that does not parse, with where and what was expected.
    pub fn parse(filters: &[String]) -> Result<Self, FilterError> {
        let mut any = Vec::new();
        for filter in filters {
            if filter.trim().is_empty() {
                continue;
            }
            any.push(Parser::new(filter).conjunction()?);
        }
        Ok(Self { any })
    }

    /// Whether `record` passes.
    pub fn matches(&self, record: &Record) -> bool {
        self.any.is_empty()
            || self
                .any
                .iter()
                .any(|all| all.iter().all(|selector| selector.matches(record)))
    }
}

impl Selector {
    fn matches(&self, record: &Record) -> bool {
        let value = match self.path.as_slice() {
            [field] if field == "name" => Some(record.key.as_str()),
            // Always there, empty for a root, as containerd's own adaptors have it: its
            // metadata layer finds a remote root layer with `parent==""`.
            [field] if field == "parent" => Some(record.parent.as_deref().unwrap_or("")),
            [field] if field == "kind" => Some(match record.kind {
                Kind::Active => "active",
                Kind::View => "view",
                Kind::Committed => "committed",
            }),
            [field, key @ ..] if field == "labels" && !key.is_empty() => {
                record.labels.get(&key.join(".")).map(String::as_str)
            }
            _ => None,
        };
        match (&self.test, value) {
            (Test::Present, value) => value.is_some_and(|v| !v.is_empty()),
            (Test::Equal(expected), Some(value)) => value == expected,
            (Test::Equal(_), None) => false,
            (Test::NotEqual(expected), value) => value != Some(expected.as_str()),
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, at: 0 }
    }

    fn conjunction(mut self) -> Result<Vec<Selector>, FilterError> {
        let mut selectors = vec![self.selector()?];
        loop {
            self.skip_spaces();
            if self.at == self.text.len() {
                return Ok(selectors);
            }
            if !self.eat(",") {
                return Err(self.error("',' or the end"));
            }
            selectors.push(self.selector()?);
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let mut path = vec![self.field()?];
        while self.eat(".") {
            path.push(self.field()?);
        }
        self.skip_spaces();
        let test = if self.eat("==") {
            Test::Equal(self.value()?)
        } else if self.eat("!=") {
            Test::NotEqual(self.value()?)
        } else if self.rest().starts_with("~=") {
            return Err(self.error("'==' or '!=' (regular expressions are not supported)"));
        } else {
            Test::Present
        };
        Ok(Selector { path, test })
    }

    fn field(&mut self) -> Result<String, FilterError> {
        self.skip_spaces();
        if self.rest().starts_with('"') {
            return self.quoted();
        }
        let word = self.take_while(|c| c.is_ascii_alphanumeric() || "_/-".contains(c));
        if word.is_empty() {
            return Err(self.error("a field name"));
        }
        Ok(word.to_owned())
    }

    fn value(&mut self) -> Result<String, FilterError> {
        self.skip_spaces();
        if self.rest().starts_with('"') {
            return self.quoted();
        }
        let word = self.take_while(|c| !c.is_whitespace() && c != ',');
        if word.is_empty() {
            return Err(self.error("a value"));
        }
        Ok(word.to_owned())
    }

    /// A double-quoted string with `\"` and `\\` escapes.
    fn quoted(&mut self) -> Result<String, FilterError> {
        self.at += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.at += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, escaped @ ('"' | '\\'))) => out.push(escaped),
                    _ => {
                        self.at += i;
                        return Err(self.error("\\\" or \\\\ after a backslash"));
                    }
                },
                c => out.push(c),
            }
        }
        self.at = self.text.len();
        Err(self.error("a closing '\"'"))
    }

    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn eat(&mut self, token: &str) -> bool {
        let found = self.rest().starts_with(token);
        if found {
            self.at += token.len();
        }
        found
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let len = rest.find(|c| !keep(c)).unwrap_or(rest.len());
        self.at += len;
        &rest[..len]
    }

    fn skip_spaces(&mut self) {
        self.take_while(char::is_whitespace);
    }

    fn error(&self, expected: &'static str) -> FilterError {
        FilterError {
            filter: self.text.to_owned(),
            offset: self.at,
            expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::store::{Source, Usage};

    fn record(key: &str, kind: Kind, parent: Option<&str>, labels: &[(&str, &str)]) -> Record {
        Record {
            version: 1,
            id: 1,
            key: key.to_owned(),
            kind,
            parent: parent.map(str::to_owned),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            created: UNIX_EPOCH,
            updated: UNIX_EPOCH,
            usage: Usage::default(),
            source: Source::Local,
        }
    }

    fn matches(filters: &[&str], record: &Record) -> bool {
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        Filters::parse(&filters).unwrap().matches(record)
    }

    #[test]
    fn selects_by_name_parent_kind_and_labels() {
        let layer = record(
            "ns/3/sha256:ab",
            Kind::Committed,
            Some("ns/2/sha256:cd"),
            &[("containerd.io/snapshot.ref", "sha256:ab"), ("x", "")],
        );
        assert!(matches(&[], &layer));
        assert!(matches(&["  "], &layer));
        assert!(matches(&["kind==committed"], &layer));
        assert!(!matches(&["kind==active"], &layer));
        assert!(matches(&["name==\"ns/3/sha256:ab\""], &layer));
        assert!(matches(&["parent==ns/2/sha256:cd, kind!=view"], &layer));
        assert!(matches(
            &["labels.\"containerd.io/snapshot.ref\"==sha256:ab"],
            &layer
        ));
        assert!(matches(&["labels.\"containerd.io/snapshot.ref\""], &layer));
        // Present means non-empty; an absent field is not equal to anything.
        assert!(!matches(&["labels.x"], &layer));
        assert!(!matches(&["labels.missing==a"], &layer));
        assert!(matches(&["labels.missing!=a"], &layer));
        // Any filter of several; every selector of one.
        assert!(matches(&["kind==view", "kind==committed"], &layer));
        assert!(!matches(&["kind==committed,name==other"], &layer));
        let root = record("r", Kind::Active, None, &[]);
        assert!(!matches(&["parent"], &root));
        assert!(matches(&["parent!=x"], &root));
        // How containerd looks up a remote root layer after Prepare answered AlreadyExists.
        let remote_root = record(
            "sha256:ab",
            Kind::Committed,
            None,
            &[("containerd.io/snapshot.ref", "sha256:ab")],
        );
        assert!(matches(
            &["labels.\"containerd.io/snapshot.ref\"==sha256:ab,parent==\"\""],
            &remote_root
        ));
        assert!(!matches(&["parent==\"\""], &layer));
    }

    #[test]
    fn refuses_what_it_cannot_parse_with_where_and_why() {
        let parse = |f: &str| Filters::parse(&[f.to_owned()]);
        let error = parse("name~=^a").unwrap_err();
        assert_eq!(error.offset, 4);
        assert!(error.to_string().contains("regular expressions"), "{error}");
        assert_eq!(parse("==x").unwrap_err().expected, "a field name");
        assert_eq!(parse("name==").unwrap_err().expected, "a value");
        assert_eq!(parse("name==a b").unwrap_err().expected, "',' or the end");
        assert_eq!(
            parse("labels.\"open").unwrap_err().expected,
            "a closing '\"'"
        );
        assert!(parse("labels.\"a\\x\"").is_err());
        assert_eq!(
            parse("labels.\"a\\\"b\"==\"c,d\"").unwrap(),
            Filters {
                any: vec![vec![Selector {
                    path: vec!["labels".into(), "a\"b".into()],
                    test: Test::Equal("c,d".into()),
                }]]
            }
        );
    }
}
