//! YAML documents with `FILE:LINE:COL` diagnostics.
//!
//! Typed decoding goes through serde (`serde_yaml`), so unknown keys and type
//! mismatches are reported with the position serde_yaml gives. A second pass
//! over the YAML event stream (`yaml-rust2`) records the position of every node
//! by its path (`waves[2].cells`), so that semantic checks done after decoding
//! can still point at the right line and column, and report all problems at once.

use serde::de::DeserializeOwned;
use std::collections::HashMap;

pub mod schema;
pub use schema::Schema;
use std::fmt;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Largest YAML document accepted, in bytes. Pipelines and inventories are small;
/// anything larger is almost certainly a mistake (or an attack on the parser).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// A position in a source file, 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// One problem found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.pos.line, self.pos.col, self.message
        )?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// All problems found in a file, in source order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Positions of the nodes of a document, by path.
///
/// Paths use `.` between mapping keys and `[i]` for sequence items:
/// `waves[2].approval.group`. The root is the empty path.
#[derive(Debug, Clone, Default)]
pub struct Spans {
    file: String,
    nodes: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

impl Spans {
    /// The position of the value at `path`, or of its nearest ancestor that exists.
    pub fn at(&self, path: &str) -> Pos {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.nodes.get(&p) {
                return *pos;
            }
            match parent(&p) {
                Some(up) => p = up,
                None => {
                    return self
                        .nodes
                        .get("")
                        .copied()
                        .unwrap_or(Pos { line: 1, col: 1 })
                }
            }
        }
    }

    /// The position of the key that introduces `path` (falls back to the value).
    pub fn key_at(&self, path: &str) -> Pos {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.at(path))
    }

    /// A diagnostic pointing at the value at `path`.
    pub fn error(&self, path: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            pos: self.at(path),
            message: message.into(),
            hint: None,
        }
    }

    /// A diagnostic with a hint on how to fix it.
    pub fn error_hint(
        &self,
        path: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            hint: Some(hint.into()),
            ..self.error(path, message)
        }
    }

    pub fn file(&self) -> &str {
        &self.file
    }
}

fn parent(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(path[..cut].to_string())
}

fn too_big(file: &str, len: usize) -> Diagnostics {
    Diagnostics(vec![Diagnostic {
        file: file.to_string(),
        pos: Pos { line: 1, col: 1 },
        message: format!("document is {len} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes"),
        hint: Some("split it into smaller files".into()),
    }])
}

fn serde_diagnostic(file: &str, e: &serde_yaml::Error) -> Diagnostic {
    let pos = e
        .location()
        .map(|l| Pos {
            line: l.line(),
            col: l.column(),
        })
        .unwrap_or(Pos { line: 1, col: 1 });
    let (message, hint) = explain_serde_error(&e.to_string());
    Diagnostic {
        file: file.to_string(),
        pos,
        message,
        hint,
    }
}

/// Decode `text` (named `file` in diagnostics) into `T`, and record node positions.
/// serde stops at the first problem: this reports only that one (see [`from_str_checked`]).
pub fn from_str<T: DeserializeOwned>(file: &str, text: &str) -> Result<(T, Spans), Diagnostics> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(too_big(file, text.len()));
    }
    let spans = spans(file, text)?;
    match serde_yaml::from_str::<T>(text) {
        Ok(v) => Ok((v, spans)),
        Err(e) => Err(Diagnostics(vec![serde_diagnostic(file, &e)])),
    }
}

/// Like [`from_str`], but when decoding fails, every mismatch with `schema`
/// (which mirrors `T`) is reported at once, each at its own line and column.
/// A document serde accepts is never refused here; serde's own error is
/// always among those reported (unless another one is already on its line).
pub fn from_str_checked<T: DeserializeOwned>(
    file: &str,
    text: &str,
    schema: &Schema,
) -> Result<(T, Spans), Diagnostics> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(too_big(file, text.len()));
    }
    let spans = spans(file, text)?;
    let e = match serde_yaml::from_str::<T>(text) {
        Ok(v) => return Ok((v, spans)),
        Err(e) => e,
    };
    let first = serde_diagnostic(file, &e);
    let mut all = match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(v) => schema::check(schema, &v, &spans),
        Err(_) => Vec::new(),
    };
    if !all.iter().any(|d| d.pos.line == first.pos.line) {
        all.push(first);
    }
    all.sort_by_key(|d| (d.pos.line, d.pos.col));
    Err(Diagnostics(all))
}

/// Most invalid UTF-8 sequences reported for one file.
const MAX_UTF8_ERRORS: usize = 20;

/// The text of a file that must be UTF-8; every invalid byte sequence is
/// reported at its line and column (in characters, 1-based).
pub fn decode_utf8<'a>(file: &str, bytes: &'a [u8]) -> Result<&'a str, Diagnostics> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(too_big(file, bytes.len()));
    }
    let first_err = match std::str::from_utf8(bytes) {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    let mut out = Vec::new();
    let (mut line, mut col) = (1usize, 1usize);
    let mut at = 0usize;
    let mut err = Some(first_err);
    while let Some(e) = err.take() {
        // Everything before the error is valid: count lines and characters.
        let good = &bytes[at..at + e.valid_up_to()];
        for ch in String::from_utf8_lossy(good).chars() {
            if ch == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        let bad_start = at + e.valid_up_to();
        let bad_len = e.error_len().unwrap_or(bytes.len() - bad_start);
        let shown: Vec<String> = bytes[bad_start..bad_start + bad_len]
            .iter()
            .map(|b| format!("0x{b:02X}"))
            .collect();
        if out.len() == MAX_UTF8_ERRORS {
            out.push(Diagnostic {
                file: file.to_string(),
                pos: Pos { line, col },
                message: "more invalid UTF-8 follows; not reported".into(),
                hint: None,
            });
            break;
        }
        out.push(Diagnostic {
            file: file.to_string(),
            pos: Pos { line, col },
            message: format!("invalid UTF-8: byte(s) {}", shown.join(" ")),
            hint: Some("save the file as UTF-8 (from Latin-1: `iconv -f latin1 -t utf-8`)".into()),
        });
        // The invalid sequence counts as one character.
        col += 1;
        at = bad_start + bad_len;
        err = std::str::from_utf8(&bytes[at..]).err();
    }
    Err(Diagnostics(out))
}

/// Drop serde_yaml's trailing " at line L column C" (we print the position in front).
pub(crate) fn strip_location(raw: &str) -> String {
    match raw.find(" at line ") {
        Some(i) => raw[..i].to_string(),
        None => raw.to_string(),
    }
}

/// serde_yaml messages end with " at line L column C"; drop that (we print it
/// in front) and add a hint for the common cases.
fn explain_serde_error(raw: &str) -> (String, Option<String>) {
    let msg = strip_location(raw);
    let hint = if msg.contains("unknown field") {
        Some("remove the key or fix its spelling; the keys allowed here are listed above".into())
    } else if msg.contains("unknown variant") {
        Some("use one of the values listed above".into())
    } else if msg.contains("missing field") {
        Some("add the missing key".into())
    } else if msg.contains("invalid type") {
        Some("check the indentation and the kind of value (mapping, list or scalar)".into())
    } else {
        None
    };
    (msg, hint)
}

/// Record the position of every node of the first document in `text`.
pub fn spans(file: &str, text: &str) -> Result<Spans, Diagnostics> {
    let mut rec = Recorder {
        spans: Spans {
            file: file.to_string(),
            ..Spans::default()
        },
        stack: Vec::new(),
        docs: 0,
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut rec, false) {
        let m = e.marker();
        return Err(Diagnostics(vec![Diagnostic {
            file: file.to_string(),
            pos: Pos {
                line: m.line(),
                col: m.col() + 1,
            },
            message: format!("invalid YAML: {}", e.info()),
            hint: Some(
                "check indentation, quoting and that every `key:` has a space after the colon"
                    .into(),
            ),
        }]));
    }
    Ok(rec.spans)
}

enum Frame {
    Seq { path: String, next: usize },
    Map { path: String, key: Option<String> },
}

struct Recorder {
    spans: Spans,
    stack: Vec<Frame>,
    docs: usize,
}

impl Recorder {
    /// The path of the node that starts now, and whether it is a mapping key.
    fn place(&mut self) -> (String, bool) {
        match self.stack.last_mut() {
            None => (String::new(), false),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                (p, false)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                None => (path.clone(), true),
                Some(k) => (join(path, &k), false),
            },
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.docs > 1 {
            return;
        }
        let pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match ev {
            Event::DocumentStart => self.docs += 1,
            Event::Scalar(value, ..) => {
                let (p, is_key) = self.place();
                if is_key {
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        self.spans.keys.insert(join(path, &value), pos);
                        *key = Some(value);
                    }
                } else {
                    self.spans.nodes.insert(p, pos);
                }
            }
            Event::SequenceStart(..) => {
                let (p, _) = self.place();
                self.spans.nodes.insert(p.clone(), pos);
                self.stack.push(Frame::Seq { path: p, next: 0 });
            }
            Event::MappingStart(..) => {
                let (p, is_key) = self.place();
                // A complex (non-scalar) key: record under a placeholder name.
                let p = if is_key { format!("{p}.?") } else { p };
                self.spans.nodes.insert(p.clone(), pos);
                self.stack.push(Frame::Map { path: p, key: None });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                let (p, _) = self.place();
                self.spans.nodes.insert(p, pos);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        waves: Vec<Wave>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Wave {
        name: String,
        cells: Option<u32>,
    }

    const DOC: &str = "name: x\nwaves:\n  - name: a\n    cells: 1\n  - name: b\n    cells: 2\n";

    #[test]
    fn paths_have_positions() {
        let (_d, s) = from_str::<Doc>("p.yaml", DOC).expect("parses");
        assert_eq!(s.at("name"), Pos { line: 1, col: 7 });
        assert_eq!(s.at("waves[1].cells"), Pos { line: 6, col: 12 });
        assert_eq!(s.key_at("waves[1].cells"), Pos { line: 6, col: 5 });
        // Missing paths fall back to the nearest ancestor.
        assert_eq!(s.at("waves[1].approval.group"), s.at("waves[1]"));
    }

    #[test]
    fn unknown_key_is_located() {
        let bad = "name: x\nwaves:\n  - name: a\n    cels: 1\n";
        let e = from_str::<Doc>("p.yaml", bad).expect_err("unknown key");
        let d = &e.0[0];
        assert_eq!(d.pos.line, 4, "{d}");
        assert!(d.message.contains("unknown field `cels`"), "{d}");
        assert!(d.to_string().starts_with("p.yaml:4:"), "{d}");
        assert!(d.hint.is_some());
    }

    #[test]
    fn syntax_error_is_located() {
        let bad = "name: x\nwaves: [\n";
        let e = from_str::<Doc>("p.yaml", bad).expect_err("syntax");
        assert!(e.0[0].message.starts_with("invalid YAML"), "{e}");
    }

    #[test]
    fn invalid_utf8_is_located() {
        // "é" in Latin-1 (0xE9) on line 2, after `name: caf` (col 10), and a
        // stray 0xFF on line 3 after a valid two-byte character.
        let bytes = b"waves: []\nname: caf\xE9 x\n\xC3\xA9\xFF: 1\n";
        let e = decode_utf8("p.yaml", bytes).expect_err("invalid");
        assert_eq!(e.0.len(), 2, "{e}");
        assert_eq!(e.0[0].pos, Pos { line: 2, col: 10 }, "{e}");
        assert!(e.0[0].message.contains("0xE9"), "{e}");
        assert!(
            e.0[0].to_string().starts_with("p.yaml:2:10: invalid UTF-8"),
            "{e}"
        );
        assert_eq!(e.0[1].pos, Pos { line: 3, col: 2 }, "{e}");
        // Truncated sequence at the very end.
        let e = decode_utf8("p.yaml", b"a: b\n\xE2\x82").expect_err("truncated");
        assert_eq!(e.0[0].pos, Pos { line: 2, col: 1 }, "{e}");
        assert_eq!(decode_utf8("p.yaml", "a: é".as_bytes()), Ok("a: é"));
    }

    static ITEM_SCHEMA: [schema::Field; 2] = [
        schema::Field::required("name", Schema::Leaf(schema::leaf::<String>, "a string")),
        schema::Field::optional("cells", Schema::Leaf(schema::leaf::<u32>, "a number")),
    ];
    static DOC_SCHEMA: [schema::Field; 2] = [
        schema::Field::required("name", Schema::Leaf(schema::leaf::<String>, "a string")),
        schema::Field::required("waves", Schema::Seq(&Schema::Struct(&ITEM_SCHEMA))),
    ];

    #[test]
    fn checked_decoding_reports_every_error() {
        let bad = "name: x\nwaves:\n  - name: a\n    cels: 1\n  - name: b\n    cells: many\n";
        let e =
            from_str_checked::<Doc>("p.yaml", bad, &Schema::Struct(&DOC_SCHEMA)).expect_err("bad");
        assert_eq!(e.0.len(), 2, "{e}");
        assert_eq!(e.0[0].pos, Pos { line: 4, col: 5 }, "{e}");
        assert!(e.0[0].message.contains("unknown field `cels`"), "{e}");
        assert_eq!(e.0[1].pos, Pos { line: 6, col: 12 }, "{e}");
        assert!(e.0[1].message.contains("expected u32"), "{e}");
        // What serde accepts is accepted.
        let (d, _) =
            from_str_checked::<Doc>("p.yaml", DOC, &Schema::Struct(&DOC_SCHEMA)).expect("valid");
        assert_eq!(d.waves.len(), 2);
    }

    #[test]
    fn oversized_document_is_refused() {
        let big = "a".repeat(MAX_DOCUMENT_BYTES + 1);
        let e = from_str::<Doc>("p.yaml", &big).expect_err("too big");
        assert!(e.0[0].message.contains("limit"));
    }
}
