//! Located YAML: parses a YAML document into JSON with the line and column of every node.
//!
//! Configuration is checked after it is parsed (JSON Schema, then semantic rules), so every
//! error must still be able to point back into the file. This module keeps, for each node,
//! where it (and, for mapping entries, its key) starts. A document is bounded in nodes, text
//! and depth, aliases expanded, so that a small file cannot make the loader allocate without
//! bound.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr::Scalar;
use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};
use serde_json::{Map, Number, Value};

/// Most nodes one document may expand to (aliases included), so a few lines of anchors
/// cannot make the loader allocate without bound.
pub const MAX_NODES: usize = 100_000;
/// Most bytes of text (scalars and keys) one document may expand to, aliases included.
pub const MAX_TEXT_BYTES: usize = 8 * 1024 * 1024;
/// Deepest nesting of collections in one document.
pub const MAX_DEPTH: usize = 64;

/// A 1-based position in a text file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Default for Pos {
    fn default() -> Self {
        Pos::START
    }
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

/// Where a node starts, where its key starts (for a mapping entry), and the same for its
/// children, each under its own reference token. A tree rather than a map from whole
/// pointers: each token is kept once, so the positions take memory in proportion to the
/// document, however deep it nests.
#[derive(Debug, Clone, Default)]
struct Place {
    pos: Pos,
    key: Option<Pos>,
    children: Vec<(String, Place)>,
}

impl Place {
    fn child(&self, token: &str) -> Option<&Place> {
        self.children
            .iter()
            .find_map(|(t, p)| (t == token).then_some(p))
    }
}

/// One parsed document: its JSON value and where each node starts.
#[derive(Debug, Clone, Default)]
pub struct Located {
    pub value: Value,
    root: Place,
}

/// The reference tokens of a JSON pointer, unescaped (RFC 6901).
fn tokens(pointer: &str) -> impl Iterator<Item = String> + '_ {
    pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
}

impl Located {
    /// The place of `pointer`'s node, or of its nearest ancestor in the file, and whether it
    /// is the node itself.
    fn find(&self, pointer: &str) -> (&Place, bool) {
        let mut place = &self.root;
        for token in tokens(pointer) {
            match place.child(&token) {
                Some(p) => place = p,
                None => return (place, false),
            }
        }
        (place, true)
    }

    /// Where the node at `pointer` starts, or its nearest ancestor that exists in the file.
    pub fn pos(&self, pointer: &str) -> Pos {
        self.find(pointer).0.pos
    }

    /// Where the key of the mapping entry at `pointer` starts (falls back to [`Self::pos`]).
    pub fn key_pos(&self, pointer: &str) -> Pos {
        match self.find(pointer) {
            (place, true) => place.key.unwrap_or(place.pos),
            (place, false) => place.pos,
        }
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
        place: Place,
        anchor: usize,
        items: Vec<Value>,
    },
    Map {
        place: Place,
        anchor: usize,
        map: Map<String, Value>,
        /// The key whose value comes next, and where it starts.
        key: Option<(String, Pos)>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    root: Option<(Value, Place)>,
    nodes: usize,
    text: usize,
}

fn err(span: &Span, message: impl Into<String>) -> YamlError {
    YamlError {
        pos: Pos::of(span),
        message: message.into(),
    }
}

/// Nodes and bytes of text of a value.
fn size(v: &Value) -> (usize, usize) {
    match v {
        Value::Array(a) => a
            .iter()
            .map(size)
            .fold((1, 0), |x, y| (x.0 + y.0, x.1 + y.1)),
        Value::Object(o) => o.iter().fold((1, 0), |acc, (k, v)| {
            let (n, t) = size(v);
            (acc.0 + n, acc.1 + t + k.len())
        }),
        Value::String(s) => (1, s.len()),
        _ => (1, 0),
    }
}

impl Builder {
    /// The token and key position the next node will have in its parent; `None` when the
    /// next node is a mapping key.
    fn next_token(&self) -> Option<(String, Option<Pos>)> {
        match self.stack.last() {
            None => Some((String::new(), None)),
            Some(Frame::Seq { items, .. }) => Some((items.len().to_string(), None)),
            Some(Frame::Map {
                key: Some((k, at)), ..
            }) => Some((k.clone(), Some(*at))),
            Some(Frame::Map { key: None, .. }) => None,
        }
    }

    fn count(&mut self, nodes: usize, text: usize, span: &Span) -> Result<(), YamlError> {
        self.nodes += nodes;
        self.text += text;
        if self.nodes > MAX_NODES {
            return Err(err(
                span,
                format!(
                    "document is too large: more than {MAX_NODES} nodes once aliases are expanded"
                ),
            ));
        }
        if self.text > MAX_TEXT_BYTES {
            return Err(err(
                span,
                format!(
                    "document is too large: more than {MAX_TEXT_BYTES} bytes of text once aliases are expanded"
                ),
            ));
        }
        Ok(())
    }

    /// Places a finished value (scalar, alias or closed container) and its place into the
    /// parent; a scalar in a mapping's key position becomes the key of the next entry.
    fn place(
        &mut self,
        value: Value,
        place: Place,
        span: &Span,
        anchor: usize,
    ) -> Result<(), YamlError> {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some((value, place)),
            Some(Frame::Seq {
                items, place: p, ..
            }) => {
                p.children.push((items.len().to_string(), place));
                items.push(value);
            }
            Some(Frame::Map {
                map, key, place: p, ..
            }) => match key.take() {
                Some((k, _)) => {
                    p.children.push((k.clone(), place));
                    map.insert(k, value);
                }
                None => {
                    let Value::String(k) = value else {
                        return Err(err(span, "mapping keys must be strings"));
                    };
                    if map.contains_key(&k) {
                        let first = p.child(&k).and_then(|c| c.key).unwrap_or(Pos::START);
                        return Err(err(
                            span,
                            format!("duplicate key `{k}` (first defined at line {})", first.line),
                        ));
                    }
                    *key = Some((k, Pos::of(span)));
                }
            },
        }
        Ok(())
    }

    fn start(&mut self, span: &Span, anchor: usize, seq: bool) -> Result<(), YamlError> {
        self.count(1, 0, span)?;
        if self.stack.len() >= MAX_DEPTH {
            return Err(err(
                span,
                format!("collections are nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let Some((_, key)) = self.next_token() else {
            return Err(err(span, "mapping keys must be strings"));
        };
        let place = Place {
            pos: Pos::of(span),
            key,
            children: Vec::new(),
        };
        self.stack.push(if seq {
            Frame::Seq {
                place,
                anchor,
                items: Vec::new(),
            }
        } else {
            Frame::Map {
                place,
                anchor,
                map: Map::new(),
                key: None,
            }
        });
        Ok(())
    }

    fn end(&mut self, span: &Span) -> Result<(), YamlError> {
        let (value, place, anchor) = match self.stack.pop() {
            Some(Frame::Seq {
                items,
                place,
                anchor,
            }) => (Value::Array(items), place, anchor),
            Some(Frame::Map {
                map, place, anchor, ..
            }) => (Value::Object(map), place, anchor),
            None => return Err(err(span, "unbalanced collection end")),
        };
        self.place(value, place, span, anchor)
    }

    fn leaf(&mut self, value: Value, span: &Span, anchor: usize) -> Result<(), YamlError> {
        let key = self.next_token().and_then(|(_, key)| key);
        let place = Place {
            pos: Pos::of(span),
            key,
            children: Vec::new(),
        };
        self.place(value, place, span, anchor)
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
                let (nodes, text) = size(&value);
                b.count(nodes, text, &span)?;
                b.leaf(value, &span, 0)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                b.count(1, text.len(), &span)?;
                let value = scalar(text, style, tag.as_ref(), &span)?;
                b.leaf(value, &span, anchor)?;
            }
            Event::SequenceStart(anchor, _) => b.start(&span, anchor, true)?,
            Event::MappingStart(anchor, _) => b.start(&span, anchor, false)?,
            Event::SequenceEnd | Event::MappingEnd => b.end(&span)?,
        }
    }
    let (value, root) = b.root.unwrap_or_default();
    Ok(Located { value, root })
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
    fn deep_nesting_is_an_error_where_it_goes_too_deep() {
        // 80 KB of `- - - ...`: 40,000 levels.
        let text = format!("{}x\n", "- ".repeat(40_000));
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("deeper than 64 levels"), "{e:?}");
        assert_eq!(
            e.pos,
            Pos {
                line: 1,
                column: 129
            }
        );
        // 64 levels are fine, and each keeps its place.
        let text = format!("{}x\n", "- ".repeat(64));
        let doc = parse(&text).unwrap();
        let pointer = "/0".repeat(63);
        assert_eq!(
            doc.pos(&pointer),
            Pos {
                line: 1,
                column: 127
            }
        );
    }

    #[test]
    fn aliased_text_is_bounded() {
        let big = "y".repeat(100_000);
        let mut text = format!("a: &big {big}\nb:\n");
        for _ in 0..100 {
            text.push_str("  - *big\n");
        }
        assert!(
            parse(&text).unwrap_err().message.contains("bytes of text"),
            "100 aliases of 100 KB exceed the text budget"
        );
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
