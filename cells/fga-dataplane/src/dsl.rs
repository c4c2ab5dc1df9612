//! The OpenFGA modeling language (DSL, schema 1.1) → [`AuthorizationModel`].
//!
//! ```text
//! model
//!   schema 1.1
//! type user
//! type document
//!   relations
//!     define owner: [user]
//!     define viewer: [user, user:*, group#member] or owner or viewer from parent
//!     define auditor: (viewer and owner) but not blocked
//! ```
//!
//! Operators of one expression must all be the same (`or`, `and`, or a
//! chain of `but not`) unless grouped with parentheses, as in OpenFGA.
//! Conditions (`with`, `condition`) and modules are reported as unsupported.

use crate::model::{
    AuthorizationModel, Difference, Metadata, ObjectRelation, RelationMetadata, RelationReference,
    TupleToUserset, TypeDefinition, Userset, Usersets,
};
use std::collections::BTreeMap;

/// A DSL error with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct DslError {
    pub line: usize,
    pub message: String,
}

fn fail<T>(line: usize, message: impl Into<String>) -> Result<T, DslError> {
    Err(DslError {
        line,
        message: message.into(),
    })
}

/// Drop a trailing `# comment` (a `#` preceded by white space or at the start).
fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'#' && (i == 0 || b[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// Parse a model written in the DSL.
pub fn parse(text: &str) -> Result<AuthorizationModel, DslError> {
    let lines: Vec<(usize, usize, &str)> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = strip_comment(l).trim_end();
            let t = l.trim_start();
            (!t.is_empty()).then(|| (i + 1, l.len() - t.len(), t))
        })
        .collect();
    let mut it = lines.into_iter().peekable();
    match it.next() {
        Some((_, _, "model")) => {}
        Some((n, _, t)) if t.starts_with("module") => return fail(n, "modules are not supported"),
        Some((n, _, _)) => return fail(n, "a model starts with `model`"),
        None => return fail(1, "empty model"),
    }
    let schema = match it.next() {
        Some((n, _, t)) => match t.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["schema", v] => {
                if *v != "1.1" {
                    return fail(n, format!("schema {v} is not supported; use schema 1.1"));
                }
                v.to_string()
            }
            _ => return fail(n, "expected `schema 1.1`"),
        },
        None => return fail(1, "expected `schema 1.1`"),
    };
    let mut types: Vec<TypeDefinition> = Vec::new();
    while let Some((n, _, t)) = it.next() {
        let words: Vec<&str> = t.split_whitespace().collect();
        match words.as_slice() {
            ["type", name] => {
                let mut td = TypeDefinition {
                    type_name: name.to_string(),
                    relations: BTreeMap::new(),
                    metadata: None,
                };
                if let Some((_, _, "relations")) = it.peek().copied() {
                    it.next();
                    let mut meta = Metadata::default();
                    while let Some((dn, _, dt)) = it.peek().copied() {
                        let Some(rest) = dt.strip_prefix("define ") else {
                            break;
                        };
                        it.next();
                        let (rname, expr) = rest.split_once(':').ok_or(DslError {
                            line: dn,
                            message: "expected `define NAME: EXPRESSION`".into(),
                        })?;
                        let rname = rname.trim();
                        if td.relations.contains_key(rname) {
                            return fail(
                                dn,
                                format!("relation {rname:?} is defined twice in type {name}"),
                            );
                        }
                        let mut p = ExprParser {
                            toks: tokenize(expr, dn)?,
                            pos: 0,
                            line: dn,
                            direct: None,
                        };
                        let rw = p.expr()?;
                        if p.pos < p.toks.len() {
                            return fail(dn, format!("unexpected {:?}", p.toks[p.pos]));
                        }
                        if let Some(d) = p.direct {
                            meta.relations.insert(
                                rname.to_string(),
                                RelationMetadata {
                                    directly_related_user_types: d,
                                },
                            );
                        } else {
                            meta.relations
                                .insert(rname.to_string(), RelationMetadata::default());
                        }
                        td.relations.insert(rname.to_string(), rw);
                    }
                    if td.relations.is_empty() {
                        return fail(n, format!("type {name} has `relations` but no `define`"));
                    }
                    td.metadata = Some(meta);
                }
                types.push(td);
            }
            ["condition", ..] => return fail(n, "conditions are not supported yet"),
            ["extend", ..] => return fail(n, "modules (extend type) are not supported"),
            _ => return fail(n, format!("expected `type NAME`, found {t:?}")),
        }
    }
    Ok(AuthorizationModel {
        id: String::new(),
        schema_version: schema,
        type_definitions: types,
        conditions: BTreeMap::new(),
        analysis: Default::default(),
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LBracket,
    RBracket,
    LParen,
    RParen,
    Comma,
    Or,
    And,
    ButNot,
    From,
    With,
    Word(String),
}

fn tokenize(s: &str, line: usize) -> Result<Vec<Tok>, DslError> {
    let mut out = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut cur = String::new();
    let flush = |cur: &mut String, words: &mut Vec<String>| {
        if !cur.is_empty() {
            words.push(std::mem::take(cur));
        }
    };
    // First split into words and punctuation.
    for c in s.chars() {
        match c {
            '[' | ']' | '(' | ')' | ',' => {
                flush(&mut cur, &mut words);
                words.push(c.to_string());
            }
            c if c.is_whitespace() => flush(&mut cur, &mut words),
            c => cur.push(c),
        }
    }
    flush(&mut cur, &mut words);
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        out.push(match w {
            "[" => Tok::LBracket,
            "]" => Tok::RBracket,
            "(" => Tok::LParen,
            ")" => Tok::RParen,
            "," => Tok::Comma,
            "or" => Tok::Or,
            "and" => Tok::And,
            "from" => Tok::From,
            "with" => Tok::With,
            "but" => {
                if words.get(i + 1).map(String::as_str) == Some("not") {
                    i += 1;
                    Tok::ButNot
                } else {
                    return fail(line, "expected `but not`");
                }
            }
            w if w
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-:*#".contains(c)) =>
            {
                Tok::Word(w.to_string())
            }
            w => return fail(line, format!("unexpected {w:?}")),
        });
        i += 1;
    }
    Ok(out)
}

struct ExprParser {
    toks: Vec<Tok>,
    pos: usize,
    line: usize,
    direct: Option<Vec<RelationReference>>,
}

impl ExprParser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expr(&mut self) -> Result<Userset, DslError> {
        let first = self.group()?;
        let op = match self.peek() {
            Some(t @ (Tok::Or | Tok::And | Tok::ButNot)) => t.clone(),
            _ => return Ok(first),
        };
        let mut parts = vec![first];
        while self.peek() == Some(&op) {
            self.next();
            parts.push(self.group()?);
        }
        if let Some(t @ (Tok::Or | Tok::And | Tok::ButNot)) = self.peek() {
            return fail(
                self.line,
                format!("cannot mix {op:?} and {t:?} without parentheses"),
            );
        }
        Ok(match op {
            Tok::Or => Userset::Union(Usersets { child: parts }),
            Tok::And => Userset::Intersection(Usersets { child: parts }),
            _ => {
                let mut it = parts.into_iter();
                let mut acc = it.next().unwrap_or_else(Userset::this);
                for sub in it {
                    acc = Userset::Difference(Difference {
                        base: Box::new(acc),
                        subtract: Box::new(sub),
                    });
                }
                acc
            }
        })
    }

    fn group(&mut self) -> Result<Userset, DslError> {
        match self.next() {
            Some(Tok::LParen) => {
                let e = self.expr()?;
                match self.next() {
                    Some(Tok::RParen) => Ok(e),
                    _ => fail(self.line, "expected `)`"),
                }
            }
            Some(Tok::LBracket) => {
                if self.direct.is_some() {
                    return fail(
                        self.line,
                        "a relation may have only one list of directly assignable types",
                    );
                }
                let mut refs = Vec::new();
                loop {
                    match self.next() {
                        Some(Tok::Word(w)) => refs.push(type_ref(&w, self.line)?),
                        _ => return fail(self.line, "expected a type in `[...]`"),
                    }
                    match self.next() {
                        Some(Tok::Comma) => continue,
                        Some(Tok::RBracket) => break,
                        Some(Tok::With) => {
                            return fail(self.line, "conditions (`with`) are not supported yet")
                        }
                        _ => return fail(self.line, "expected `,` or `]`"),
                    }
                }
                self.direct = Some(refs);
                Ok(Userset::this())
            }
            Some(Tok::Word(w)) => {
                if !crate::model::valid_name(&w) {
                    return fail(self.line, format!("invalid relation name {w:?}"));
                }
                if self.peek() == Some(&Tok::From) {
                    self.next();
                    match self.next() {
                        Some(Tok::Word(ts)) if crate::model::valid_name(&ts) => {
                            Ok(Userset::TupleToUserset(TupleToUserset {
                                tupleset: ObjectRelation {
                                    object: String::new(),
                                    relation: ts,
                                },
                                computed_userset: ObjectRelation {
                                    object: String::new(),
                                    relation: w,
                                },
                            }))
                        }
                        _ => fail(self.line, "expected a relation name after `from`"),
                    }
                } else {
                    Ok(Userset::computed(&w))
                }
            }
            Some(t) => fail(self.line, format!("unexpected {t:?}")),
            None => fail(self.line, "unexpected end of expression"),
        }
    }
}

/// `user`, `user:*`, `group#member`.
fn type_ref(w: &str, line: usize) -> Result<RelationReference, DslError> {
    let mut r = RelationReference {
        type_name: w.to_string(),
        relation: None,
        wildcard: None,
        condition: String::new(),
    };
    if let Some(t) = w.strip_suffix(":*") {
        r.type_name = t.to_string();
        r.wildcard = Some(serde_json::Map::new());
    } else if let Some((t, rel)) = w.split_once('#') {
        r.type_name = t.to_string();
        r.relation = Some(rel.to_string());
    }
    if !crate::model::valid_name(&r.type_name)
        || r.relation
            .as_deref()
            .is_some_and(|x| !crate::model::valid_name(x))
    {
        return fail(line, format!("invalid type restriction {w:?}"));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_operator() {
        let m = parse(
            "model\n  schema 1.1\ntype user\ntype group\n  relations\n    define member: [user, group#member]\ntype folder\n  relations\n    define viewer: [user]\ntype doc\n  relations\n    define parent: [folder] # a comment\n    define owner: [user]\n    define blocked: [user:*]\n    define viewer: [user, user:*] or owner or viewer from parent\n    define both: (viewer and owner) but not blocked\n",
        )
        .expect("parses");
        m.validate().expect("valid");
        let doc = m.type_def("doc").expect("doc");
        assert!(matches!(doc.relations["viewer"], Userset::Union(ref u) if u.child.len() == 3));
        assert!(matches!(doc.relations["both"], Userset::Difference(_)));
        assert_eq!(doc.direct_types("viewer").len(), 2);
        assert!(doc.direct_types("blocked")[0].is_wildcard());
        let json = serde_json::to_value(&m).expect("json");
        assert!(
            json["type_definitions"][3]["relations"]["viewer"]["union"]["child"][2]
                ["tupleToUserset"]
                .is_object(),
            "{json}"
        );
    }

    #[test]
    fn rejects_what_it_does_not_support() {
        let base = "model\n  schema 1.1\ntype user\ntype doc\n  relations\n";
        assert!(parse(&format!("{base}    define v: [user] or a and b\n")).is_err());
        assert!(parse(&format!("{base}    define v: [user with cond]\n"))
            .expect_err("with")
            .message
            .contains("not supported"));
        assert!(parse("model\n  schema 1.0\ntype user\n").is_err());
        assert!(parse("condition x(a: int) {\n a < 1\n}\n").is_err());
        let e = parse(&format!(
            "{base}    define v: [user]\ncondition c(x: int) {{\n  x < 3\n}}\n"
        ))
        .expect_err("cond");
        assert!(e.message.contains("conditions are not supported"), "{e}");
    }
}
