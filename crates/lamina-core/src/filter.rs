//! containerd's filter language for `Walk`/`List`: `fieldpath[op value]` selectors joined
//! by `,` (all must match); several filter strings match if any does.
//!
//! Written by hand because no crate implements containerd's grammar: field paths with
//! `"`-quoted parts (`labels."containerd.io/gc.root"`), operators `==`, `!=`, `~=` (regular
//! expression, unanchored), bare or quoted values (`"…"`, and `/…/` or `|…|` for regexes),
//! and a bare field path to test presence.

use regex::Regex;

use crate::error::{Error, Result};
use crate::model::Info;

/// A parsed set of filters: matches when any of its alternatives matches.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Alternatives (OR); each is a conjunction (AND) of selectors. Empty = match all.
    any: Vec<Vec<Selector>>,
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

impl Filter {
    /// Parses filter strings as containerd's `filters.ParseAll` does: empty list or an
    /// empty string matches everything; several strings are alternatives.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Filter> {
        let mut any = Vec::with_capacity(filters.len());
        for f in filters {
            let f = f.as_ref();
            let selectors = Parser::new(f).parse()?;
            if selectors.is_empty() {
                // An empty filter matches everything, so the whole disjunction does.
                return Ok(Filter::default());
            }
            any.push(selectors);
        }
        Ok(Filter { any })
    }

    /// Whether `info` passes the filter.
    pub fn matches(&self, info: &Info) -> bool {
        self.matches_fields(|path| {
            let (value, present) = field(info, path);
            present.then(|| value.to_owned())
        })
    }

    /// Whether an object passes the filter, its fields looked up by `field` (a field
    /// path → its value, `None` when absent), like containerd's filter adaptors: lets
    /// other objects (leases, cache records) be filtered with the same language.
    pub fn matches_fields(&self, field: impl Fn(&[String]) -> Option<String>) -> bool {
        self.any.is_empty()
            || self.any.iter().any(|all| {
                all.iter().all(|s| {
                    let value = field(&s.path);
                    s.matches(value.as_deref().unwrap_or(""), value.is_some())
                })
            })
    }
}

impl Selector {
    fn matches(&self, value: &str, present: bool) -> bool {
        match &self.op {
            Op::Present => present,
            Op::Equal(v) => present && value == v,
            Op::NotEqual(v) => value != v,
            Op::Matches(re) => re.is_match(value),
        }
    }
}

/// Looks a field path up in a snapshot's info, like containerd's snapshot adaptor.
fn field<'a>(info: &'a Info, path: &[String]) -> (&'a str, bool) {
    match path.first().map(String::as_str) {
        Some("kind") => (info.kind.as_str(), true),
        Some("name") => (&info.name, true),
        Some("parent") => (&info.parent, true),
        Some("labels") => {
            let key = path[1..].join(".");
            match info.labels.get(&key) {
                Some(v) => (v.as_str(), true),
                None => ("", false),
            }
        }
        _ => ("", false),
    }
}

struct Parser<'a> {
    input: &'a str,
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser {
            input,
            chars: input.char_indices().peekable(),
        }
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Filter {
            input: self.input.to_owned(),
            reason: reason.into(),
        }
    }

    fn skip_space(&mut self) {
        while self.chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    }

    fn parse(mut self) -> Result<Vec<Selector>> {
        let mut out = Vec::new();
        self.skip_space();
        if self.chars.peek().is_none() {
            return Ok(out);
        }
        loop {
            out.push(self.selector()?);
            self.skip_space();
            match self.chars.next() {
                None => return Ok(out),
                Some((_, ',')) => {}
                Some((i, c)) => {
                    return Err(self.err(format!("unexpected {c:?} at offset {i}, expected ','")))
                }
            }
        }
    }

    fn selector(&mut self) -> Result<Selector> {
        let path = self.fieldpath()?;
        self.skip_space();
        let op = match self.chars.peek() {
            Some((_, '=' | '!' | '~')) => self.operator()?,
            _ => {
                return Ok(Selector {
                    path,
                    op: Op::Present,
                })
            }
        };
        self.skip_space();
        let value = self.value()?;
        let op = match op {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            _ => Op::Matches(
                Regex::new(&value).map_err(|e| self.err(format!("bad regular expression: {e}")))?,
            ),
        };
        Ok(Selector { path, op })
    }

    fn fieldpath(&mut self) -> Result<Vec<String>> {
        let mut path = vec![self.field()?];
        while self.chars.next_if(|(_, c)| *c == '.').is_some() {
            path.push(self.field()?);
        }
        Ok(path)
    }

    fn field(&mut self) -> Result<String> {
        self.skip_space();
        match self.chars.peek().copied() {
            Some((_, '"')) => {
                self.chars.next();
                self.quoted('"')
            }
            Some((_, c)) if is_field_char(c) => {
                let mut s = String::new();
                while let Some((_, c)) = self.chars.next_if(|(_, c)| is_field_char(*c)) {
                    s.push(c);
                }
                Ok(s)
            }
            Some((i, c)) => {
                Err(self.err(format!("expected a field name at offset {i}, found {c:?}")))
            }
            None => Err(self.err("expected a field name, found end of input")),
        }
    }

    fn operator(&mut self) -> Result<&'static str> {
        let mut op = String::new();
        while let Some((_, c)) = self.chars.next_if(|(_, c)| matches!(c, '=' | '!' | '~')) {
            op.push(c);
        }
        match op.as_str() {
            "==" => Ok("=="),
            "!=" => Ok("!="),
            "~=" => Ok("~="),
            _ => Err(self.err(format!("unknown operator {op:?} (expected ==, != or ~=)"))),
        }
    }

    fn value(&mut self) -> Result<String> {
        match self.chars.peek().copied() {
            Some((_, q @ ('"' | '/' | '|'))) => {
                self.chars.next();
                self.quoted(q)
            }
            Some((_, c)) if c != ',' && !c.is_whitespace() => {
                let mut s = String::new();
                while let Some((_, c)) =
                    self.chars.next_if(|(_, c)| *c != ',' && !c.is_whitespace())
                {
                    s.push(c);
                }
                Ok(s)
            }
            _ => Err(self.err("expected a value after the operator")),
        }
    }

    /// Reads a quoted string whose opening `quote` was consumed. In `"` strings the usual
    /// escapes apply; in the regex quotes `/` and `|` only `\<quote>` is an escape and other
    /// backslashes are kept for the regex engine.
    fn quoted(&mut self, quote: char) -> Result<String> {
        let mut s = String::new();
        loop {
            let Some((_, c)) = self.chars.next() else {
                return Err(self.err("quoted literal not terminated"));
            };
            match c {
                c if c == quote => return Ok(s),
                '\n' => return Err(self.err("quoted literal not terminated")),
                '\\' => {
                    let Some((_, e)) = self.chars.next() else {
                        return Err(self.err("quoted literal not terminated"));
                    };
                    if e == quote {
                        s.push(e);
                    } else if quote != '"' {
                        s.push('\\');
                        s.push(e);
                    } else {
                        s.push(self.escape(e)?);
                    }
                }
                c => s.push(c),
            }
        }
    }

    fn escape(&mut self, e: char) -> Result<char> {
        Ok(match e {
            'a' => '\x07',
            'b' => '\x08',
            'f' => '\x0c',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\x0b',
            '\\' => '\\',
            '0'..='7' => {
                let mut v = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    let (_, d) = self
                        .chars
                        .next()
                        .filter(|(_, d)| d.is_digit(8))
                        .ok_or_else(|| self.err("bad octal escape"))?;
                    v = v * 8 + d.to_digit(8).unwrap_or(0);
                }
                char::from_u32(v).ok_or_else(|| self.err("bad octal escape"))?
            }
            'x' | 'u' | 'U' => {
                let n = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let mut v = 0u32;
                for _ in 0..n {
                    let (_, d) = self
                        .chars
                        .next()
                        .filter(|(_, d)| d.is_ascii_hexdigit())
                        .ok_or_else(|| self.err("bad hex escape"))?;
                    v = v * 16 + d.to_digit(16).unwrap_or(0);
                }
                char::from_u32(v).ok_or_else(|| self.err("escape is not a valid character"))?
            }
            other => return Err(self.err(format!("unknown escape \\{other}"))),
        })
    }
}

fn is_field_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, Labels};
    use std::time::SystemTime;

    fn info(name: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: parent.into(),
            kind,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Labels>(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        }
    }

    fn m(filters: &[&str], i: &Info) -> bool {
        Filter::parse_all(filters).unwrap().matches(i)
    }

    #[test]
    fn containerd_walk_cases() {
        let a = info(
            "a-wl",
            "p-wl",
            Kind::Active,
            &[("l", "2"), ("containerd.io/gc.root", "check-walk")],
        );
        let p = info("p", "", Kind::Committed, &[]);
        assert!(m(&[r#"labels."containerd.io/gc.root"==check-walk"#], &a));
        assert!(m(
            &[r#"kind==active,labels."containerd.io/gc.root"==check-walk"#],
            &a
        ));
        assert!(!m(
            &[r#"kind==view,labels."containerd.io/gc.root"==check-walk"#],
            &a
        ));
        assert!(m(&["name==p", "name==a-wl"], &a));
        assert!(m(&["name==a-wl,labels.l"], &a));
        assert!(!m(&["labels.l"], &p));
        assert!(m(&[r#"parent!="""#], &a));
        assert!(!m(&[r#"parent!="""#], &p));
        assert!(m(&["labels.l==2"], &a));
        assert!(m(&["name~=^a-"], &a));
        assert!(m(&["name~=/w.$/"], &a));
        assert!(m(&[], &p));
        assert!(m(&[""], &p));
    }

    #[test]
    fn remote_snapshotter_lookup() {
        let i = info(
            "ns/1/sha256:abc",
            "ns/0/sha256:def",
            Kind::Committed,
            &[("containerd.io/snapshot.ref", "sha256:abc")],
        );
        assert!(m(
            &[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent==ns/0/sha256:def"#],
            &i
        ));
        assert!(m(&[r#"  name == "ns/1/sha256:abc" "#], &i));
    }

    #[test]
    fn errors_are_reported() {
        for bad in [
            "name=",
            "name==",
            "name===x",
            "\"unterminated",
            "name==x,",
            ".x",
            "name==x y",
            "name~=(",
        ] {
            assert!(Filter::parse_all(&[bad]).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn escapes_in_quoted_fields() {
        let i = info("x", "", Kind::View, &[("a\"b", "\t")]);
        assert!(m(&[r#"labels."a\"b"=="\t""#], &i));
        assert!(m(&[r#"labels."a\x22b"=="\011""#], &i));
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,64}") {
            let _ = Filter::parse_all(&[s]);
        }
    }
}
