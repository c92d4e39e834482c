//! Located YAML: parses a YAML document into JSON with the line and column of every node.
//!
//! Configuration is checked after it is parsed (JSON Schema, then semantic rules), so every
//! error must still be able to point back into the file. This module keeps a map from each
//! node's JSON pointer to where the node (and, for mapping entries, its key) starts.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr::Scalar;
use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};
use serde_json::{Map, Number, Value};

/// Most nodes one document may expand to (aliases included), so a few lines of anchors
/// cannot make the loader allocate without bound.
pub const MAX_NODES: usize = 100_000;

/// A 1-based position in a text file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };

    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

/// A YAML syntax or conversion error at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// One parsed document: its JSON value and where each node starts.
#[derive(Debug, Clone, Default)]
pub struct Located {
    pub value: Value,
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

impl Located {
    /// Where the node at `pointer` starts, or its nearest ancestor that exists in the file.
    pub fn pos(&self, pointer: &str) -> Pos {
        let mut p = pointer;
        loop {
            if let Some(pos) = self.values.get(p) {
                return *pos;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return Pos::START,
            }
        }
    }

    /// Where the key of the mapping entry at `pointer` starts (falls back to [`Self::pos`]).
    pub fn key_pos(&self, pointer: &str) -> Pos {
        self.keys
            .get(pointer)
            .copied()
            .unwrap_or_else(|| self.pos(pointer))
    }
}

/// Appends one reference token to a JSON pointer (RFC 6901 escaping).
pub fn push_pointer(pointer: &str, token: &str) -> String {
    let mut out = String::with_capacity(pointer.len() + token.len() + 1);
    out.push_str(pointer);
    out.push('/');
    for c in token.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
    out
}

enum Frame {
    Seq {
        pointer: String,
        anchor: usize,
        items: Vec<Value>,
    },
    Map {
        pointer: String,
        anchor: usize,
        map: Map<String, Value>,
        key: Option<String>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    root: Option<Value>,
    out: Located,
    nodes: usize,
}

fn err(span: &Span, message: impl Into<String>) -> YamlError {
    YamlError {
        pos: Pos::of(span),
        message: message.into(),
    }
}

fn count_nodes(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(count_nodes).sum::<usize>(),
        Value::Object(o) => 1 + o.values().map(count_nodes).sum::<usize>(),
        _ => 1,
    }
}

impl Builder {
    /// The pointer the next node will have, or `None` when it is a mapping key.
    fn next_pointer(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Seq { pointer, items, .. }) => {
                Some(push_pointer(pointer, &items.len().to_string()))
            }
            Some(Frame::Map {
                pointer,
                key: Some(k),
                ..
            }) => Some(push_pointer(pointer, k)),
            Some(Frame::Map { key: None, .. }) => None,
        }
    }

    fn count(&mut self, n: usize, span: &Span) -> Result<(), YamlError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(err(
                span,
                format!(
                    "document is too large: more than {MAX_NODES} nodes once aliases are expanded"
                ),
            ));
        }
        Ok(())
    }

    /// Places a finished value (scalar, alias or closed container) into its parent.
    fn place(&mut self, value: Value, span: &Span, anchor: usize) -> Result<(), YamlError> {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => {
                self.root = Some(value);
            }
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map {
                map, key, pointer, ..
            }) => match key.take() {
                Some(k) => {
                    map.insert(k, value);
                }
                None => {
                    let Value::String(k) = value else {
                        return Err(err(span, "mapping keys must be strings"));
                    };
                    let child = push_pointer(pointer, &k);
                    if map.contains_key(&k) {
                        let first = self.out.keys.get(&child).copied().unwrap_or(Pos::START);
                        return Err(err(
                            span,
                            format!("duplicate key `{k}` (first defined at line {})", first.line),
                        ));
                    }
                    self.out.keys.insert(child, Pos::of(span));
                    *key = Some(k);
                }
            },
        }
        Ok(())
    }

    fn start(&mut self, span: &Span, anchor: usize, seq: bool) -> Result<(), YamlError> {
        self.count(1, span)?;
        let Some(pointer) = self.next_pointer() else {
            return Err(err(span, "mapping keys must be strings"));
        };
        self.out.values.insert(pointer.clone(), Pos::of(span));
        self.stack.push(if seq {
            Frame::Seq {
                pointer,
                anchor,
                items: Vec::new(),
            }
        } else {
            Frame::Map {
                pointer,
                anchor,
                map: Map::new(),
                key: None,
            }
        });
        Ok(())
    }

    fn end(&mut self, span: &Span) -> Result<(), YamlError> {
        let (value, anchor) = match self.stack.pop() {
            Some(Frame::Seq { items, anchor, .. }) => (Value::Array(items), anchor),
            Some(Frame::Map { map, anchor, .. }) => (Value::Object(map), anchor),
            None => return Err(err(span, "unbalanced collection end")),
        };
        self.place(value, span, anchor)
    }

    fn leaf(&mut self, value: Value, span: &Span, anchor: usize) -> Result<(), YamlError> {
        if let Some(pointer) = self.next_pointer() {
            self.out.values.insert(pointer, Pos::of(span));
        }
        self.place(value, span, anchor)
    }
}

fn scalar(
    text: Cow<'_, str>,
    style: ScalarStyle,
    tag: Option<&Cow<'_, Tag>>,
    span: &Span,
) -> Result<Value, YamlError> {
    match Scalar::parse_from_cow_and_metadata(text, style, tag) {
        None => Err(err(span, "value does not match its tag")),
        Some(Scalar::Null) => Ok(Value::Null),
        Some(Scalar::Boolean(b)) => Ok(Value::Bool(b)),
        Some(Scalar::Integer(i)) => Ok(Value::from(i)),
        Some(Scalar::FloatingPoint(f)) => Number::from_f64(f.into_inner())
            .map(Value::Number)
            .ok_or_else(|| err(span, "infinite and NaN numbers are not supported")),
        Some(Scalar::String(s)) => Ok(Value::String(s.into_owned())),
    }
}

/// Parses exactly one YAML document. An empty text is the document `null`.
pub fn parse(text: &str) -> Result<Located, YamlError> {
    let mut b = Builder::default();
    let mut documents = 0;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| YamlError {
            pos: Pos {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            message: e.info().to_string(),
        })?;
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(err(&span, "expected one YAML document, found a second one"));
                }
            }
            Event::Alias(id) => {
                let value = b
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| err(&span, "alias refers to an unknown anchor"))?;
                b.count(count_nodes(&value), &span)?;
                b.leaf(value, &span, 0)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                b.count(1, &span)?;
                let value = scalar(text, style, tag.as_ref(), &span)?;
                b.leaf(value, &span, anchor)?;
            }
            Event::SequenceStart(anchor, _) => b.start(&span, anchor, true)?,
            Event::MappingStart(anchor, _) => b.start(&span, anchor, false)?,
            Event::SequenceEnd | Event::MappingEnd => b.end(&span)?,
        }
    }
    b.out.value = b.root.unwrap_or(Value::Null);
    Ok(b.out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_and_positions() {
        let doc = parse("a: 1\nb:\n  - x\n  - {c: true}\nd: 2.5\ne: ~\n").unwrap();
        assert_eq!(
            doc.value,
            json!({"a": 1, "b": ["x", {"c": true}], "d": 2.5, "e": null})
        );
        assert_eq!(doc.pos("/a"), Pos { line: 1, column: 4 });
        assert_eq!(doc.key_pos("/a"), Pos { line: 1, column: 1 });
        assert_eq!(doc.pos("/b/0"), Pos { line: 3, column: 5 });
        assert_eq!(doc.pos("/b/1/c"), Pos { line: 4, column: 9 });
        assert_eq!(doc.pos("/d"), Pos { line: 5, column: 4 });
        // A missing node falls back to its nearest ancestor.
        assert_eq!(doc.pos("/b/1/zzz"), doc.pos("/b/1"));
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let doc = parse("a: '1'\nb: \"true\"\nc: 0x10\n").unwrap();
        assert_eq!(doc.value, json!({"a": "1", "b": "true", "c": 16}));
    }

    #[test]
    fn pointer_escaping() {
        let doc = parse("\"a/b\": {\"~c\": 1}\n").unwrap();
        assert_eq!(doc.value, json!({"a/b": {"~c": 1}}));
        assert_eq!(
            doc.pos("/a~1b/~0c"),
            Pos {
                line: 1,
                column: 15
            }
        );
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 3, column: 1 });
        assert_eq!(e.message, "duplicate key `a` (first defined at line 1)");
    }

    #[test]
    fn non_string_keys_are_errors() {
        assert_eq!(
            parse("? [a]\n: 1\n").unwrap_err().message,
            "mapping keys must be strings"
        );
        assert_eq!(
            parse("1: x\n").unwrap_err().message,
            "mapping keys must be strings"
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(e.pos.line >= 2, "{e:?}");
        assert!(!e.message.is_empty());
    }

    #[test]
    fn aliases_expand_and_are_bounded() {
        let doc = parse("a: &x [1, 2]\nb: *x\n").unwrap();
        assert_eq!(doc.value, json!({"a": [1, 2], "b": [1, 2]}));
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse(&bomb).unwrap_err().message.contains("too large"));
    }

    #[test]
    fn one_document_only() {
        assert!(
            parse("a: 1\n---\nb: 2\n")
                .unwrap_err()
                .message
                .contains("second")
        );
        assert_eq!(parse("").unwrap().value, Value::Null);
    }
}
