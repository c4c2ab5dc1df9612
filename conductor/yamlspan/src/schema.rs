//! The expected shape of a document, to report every mismatch at once.
//!
//! serde stops at the first problem of a file. When decoding fails, the
//! document is walked again against a [`Schema`] that mirrors the serde types
//! (keys, which are required, and the type of every value), and every
//! mismatch is reported at the line and column of the value (or of the key,
//! for an unknown key). Scalars are checked by serde itself ([`leaf`]), so
//! a value is refused here exactly when serde refuses it.

use crate::{Diagnostic, Spans};
use serde::de::DeserializeOwned;
use serde_yaml::Value;

/// Checks one scalar (or any value decoded as a whole): serde's message on failure.
pub type Leaf = fn(&Value) -> Result<(), String>;

/// The shape a value must have.
pub enum Schema {
    /// A mapping with these keys; any other key is an error.
    Struct(&'static [Field]),
    /// A sequence whose items have this shape.
    Seq(&'static Schema),
    /// A mapping from string keys to values of this shape.
    Map(&'static Schema),
    /// Exactly one of these keys, with its value (an enum written as a
    /// one-key mapping, such as `- bake: 10m`).
    OneOf(&'static [(&'static str, Schema)]),
    /// A value serde decodes on its own, and a hint shown when it fails.
    Leaf(Leaf, &'static str),
}

/// A key of a [`Schema::Struct`].
pub struct Field {
    pub name: &'static str,
    pub required: bool,
    pub schema: Schema,
}

impl Field {
    pub const fn required(name: &'static str, schema: Schema) -> Field {
        Field {
            name,
            required: true,
            schema,
        }
    }
    pub const fn optional(name: &'static str, schema: Schema) -> Field {
        Field {
            name,
            required: false,
            schema,
        }
    }
}

/// A leaf decoded as `T` by serde. The value is written back as YAML first, so
/// that quoting is kept (`'1'` is a string, `1` a number), as serde sees it
/// in the file.
pub fn leaf<T: DeserializeOwned>(v: &Value) -> Result<(), String> {
    let text = serde_yaml::to_string(v).map_err(|e| e.to_string())?;
    serde_yaml::from_str::<T>(&text)
        .map(|_| ())
        .map_err(|e| crate::strip_location(&e.to_string()))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn key_text(k: &Value) -> Option<String> {
    match k {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn listing(names: impl Iterator<Item = &'static str>) -> String {
    names
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every place where `value` does not have the shape `schema`, located by `spans`.
pub fn check(schema: &Schema, value: &Value, spans: &Spans) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    walk(schema, value, "", spans, &mut out);
    out
}

fn walk(schema: &Schema, value: &Value, path: &str, spans: &Spans, out: &mut Vec<Diagnostic>) {
    let value = match value {
        Value::Tagged(t) if !matches!(schema, Schema::Leaf(..)) => &t.value,
        v => v,
    };
    match schema {
        Schema::Leaf(check, hint) => {
            if let Err(msg) = check(value) {
                let hint = match value {
                    Value::Sequence(_) | Value::Mapping(_) => {
                        "check the indentation and the kind of value (mapping, list or scalar)"
                    }
                    _ => hint,
                };
                out.push(spans.error_hint(path, msg, hint));
            }
        }
        Schema::Seq(item) => match value {
            Value::Sequence(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(item, v, &format!("{path}[{i}]"), spans, out);
                }
            }
            other => out.push(spans.error_hint(
                path,
                format!("expected a list, found {}", kind(other)),
                "write a list: `[a, b]`, or one `- item` per line",
            )),
        },
        Schema::Map(val) => match value {
            Value::Mapping(m) => {
                for (k, v) in m {
                    match key_text(k) {
                        Some(k) => walk(val, v, &join(path, &k), spans, out),
                        None => out.push(spans.error(path, "keys here must be plain words")),
                    }
                }
            }
            other => out.push(spans.error_hint(
                path,
                format!("expected a mapping, found {}", kind(other)),
                "write `key: value` pairs",
            )),
        },
        Schema::Struct(fields) => match value {
            Value::Mapping(m) => {
                for (k, v) in m {
                    let Some(name) = key_text(k) else {
                        out.push(spans.error(path, "keys here must be plain words"));
                        continue;
                    };
                    let at = join(path, &name);
                    match fields.iter().find(|f| f.name == name) {
                        Some(f) if v.is_null() && !f.required => {}
                        Some(f) => walk(&f.schema, v, &at, spans, out),
                        None => out.push(crate::Diagnostic {
                            pos: spans.key_at(&at),
                            ..spans.error_hint(
                                &at,
                                format!(
                                    "unknown field `{name}`, expected one of {}",
                                    listing(fields.iter().map(|f| f.name))
                                ),
                                "remove the key or fix its spelling",
                            )
                        }),
                    }
                }
                // A block mapping is best pointed at by its first key.
                let pos = m
                    .keys()
                    .next()
                    .and_then(key_text)
                    .map_or_else(|| spans.at(path), |k| spans.key_at(&join(path, &k)));
                for f in fields.iter().filter(|f| f.required) {
                    if !m.contains_key(f.name) {
                        out.push(crate::Diagnostic {
                            pos,
                            ..spans.error_hint(
                                path,
                                format!("missing field `{}`", f.name),
                                format!("add `{}:`", f.name),
                            )
                        });
                    }
                }
            }
            other => out.push(spans.error_hint(
                path,
                format!("expected a mapping, found {}", kind(other)),
                "write `key: value` pairs, for example `{ key: value }`",
            )),
        },
        Schema::OneOf(variants) => {
            let names = || listing(variants.iter().map(|(n, _)| *n));
            let one = match value {
                Value::Mapping(m) if m.len() == 1 => m.iter().next(),
                _ => None,
            };
            let Some((k, v)) = one else {
                out.push(spans.error_hint(
                    path,
                    format!("expected one of {} with its value", names()),
                    "write a mapping with exactly one key, for example `- bake: 10m`",
                ));
                return;
            };
            let name = key_text(k).unwrap_or_default();
            let at = join(path, &name);
            match variants.iter().find(|(n, _)| *n == name) {
                Some((_, s)) => walk(s, v, &at, spans, out),
                None => out.push(crate::Diagnostic {
                    pos: spans.key_at(&at),
                    ..spans.error_hint(
                        &at,
                        format!("unknown variant `{name}`, expected one of {}", names()),
                        "use one of the values listed above",
                    )
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static ITEM: [Field; 2] = [
        Field::required("name", Schema::Leaf(leaf::<String>, "a string")),
        Field::optional("n", Schema::Leaf(leaf::<u32>, "a number")),
    ];
    static DOC: [Field; 3] = [
        Field::required("name", Schema::Leaf(leaf::<String>, "a string")),
        Field::optional("items", Schema::Seq(&Schema::Struct(&ITEM))),
        Field::optional(
            "labels",
            Schema::Map(&Schema::Leaf(leaf::<String>, "a string")),
        ),
    ];

    fn run(text: &str) -> Vec<Diagnostic> {
        let spans = crate::spans("f.yaml", text).expect("yaml");
        let v: Value = serde_yaml::from_str(text).expect("value");
        check(&Schema::Struct(&DOC), &v, &spans)
    }

    #[test]
    fn every_mismatch_is_reported_at_its_value() {
        let d = run("name: x\nitems:\n  - { name: a, n: '1' }\n  - nme: b\n    n: -2\nlabels: { a: [1] }\nextra: 1\n");
        let got: Vec<(usize, usize, &str)> = d
            .iter()
            .map(|d| (d.pos.line, d.pos.col, d.message.as_str()))
            .collect();
        assert_eq!(d.len(), 6, "{got:#?}");
        assert!(got.contains(&(3, 19, "invalid type: string \"1\", expected u32")));
        assert!(got
            .iter()
            .any(|(l, c, m)| (*l, *c) == (4, 5) && m.starts_with("unknown field `nme`")));
        assert!(got
            .iter()
            .any(|(l, c, m)| (*l, *c) == (4, 5) && m == &"missing field `name`"));
        assert!(got
            .iter()
            .any(|(l, c, m)| (*l, *c) == (5, 8) && m.contains("integer `-2`")));
        assert!(got
            .iter()
            .any(|(l, c, m)| (*l, *c) == (6, 14) && m.contains("sequence")));
        assert!(got
            .iter()
            .any(|(l, c, m)| (*l, *c) == (7, 1) && m.starts_with("unknown field `extra`")));
    }

    #[test]
    fn a_valid_document_has_no_mismatch() {
        assert!(run("name: 123\nitems: [ { name: a, n: 0x10 } ]\nlabels: { a: b }\n").is_empty());
        // Null stands for an absent optional key, as with serde's defaults.
        assert!(run("name: x\nitems:\nlabels: ~\n").is_empty());
    }
}
