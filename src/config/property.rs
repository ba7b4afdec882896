//! One configuration property: its name, type, default and how a text value is checked.

use std::borrow::Cow;
use std::fmt;

use super::ConfigError;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Bool(bool),
    /// Text: one of a property's fixed choices, or free text.
    Str(Cow<'static, str>),
}

impl Value {
    pub fn as_str(&self) -> &str {
        match self {
            Value::Str(v) => v,
            other => panic!("property is not text: {other:?}"),
        }
    }

    pub fn as_int(&self) -> i64 {
        match self {
            Value::Int(v) => *v,
            other => panic!("property is not an integer: {other:?}"),
        }
    }

    pub fn as_bool(&self) -> bool {
        match self {
            Value::Bool(v) => *v,
            other => panic!("property is not a boolean: {other:?}"),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Str(v) => f.write_str(v),
        }
    }
}

#[derive(Debug)]
pub enum Kind {
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    Choice(&'static [&'static str]),
    /// A comma-separated list of the choices, each at most once, at least one.
    List(&'static [&'static str]),
    Text,
}

#[derive(Debug)]
pub struct Property {
    pub name: &'static str,
    pub kind: Kind,
    pub default: Value,
    /// Settable per listener too, as `listener.name.<listener>.<name>` (Kafka's prefix).
    pub per_listener: bool,
}

impl Property {
    pub const fn int(name: &'static str, default: i64, min: i64, max: i64) -> Self {
        Self {
            name,
            kind: Kind::Int { min, max },
            default: Value::Int(default),
            per_listener: false,
        }
    }

    pub const fn boolean(name: &'static str, default: bool) -> Self {
        Self {
            name,
            kind: Kind::Bool,
            default: Value::Bool(default),
            per_listener: false,
        }
    }

    pub const fn choice(
        name: &'static str,
        default: &'static str,
        options: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            kind: Kind::Choice(options),
            default: Value::Str(Cow::Borrowed(default)),
            per_listener: false,
        }
    }

    pub const fn list(
        name: &'static str,
        default: &'static str,
        options: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            kind: Kind::List(options),
            default: Value::Str(Cow::Borrowed(default)),
            per_listener: false,
        }
    }

    pub const fn text(name: &'static str, default: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Text,
            default: Value::Str(Cow::Borrowed(default)),
            per_listener: false,
        }
    }

    /// Allows the `listener.name.<listener>.` prefix for this property.
    pub const fn per_listener(mut self) -> Self {
        self.per_listener = true;
        self
    }

    /// Checks a text value against the property's type and range.
    pub fn parse(&self, raw: &str) -> Result<Value, ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidValue {
            key: self.name.to_string(),
            value: raw.to_string(),
            reason,
        };
        match &self.kind {
            Kind::Int { min, max } => {
                let v: i64 = raw
                    .trim()
                    .parse()
                    .map_err(|_| invalid("not an integer".to_string()))?;
                if v < *min || v > *max {
                    return Err(invalid(format!("must be between {min} and {max}")));
                }
                Ok(Value::Int(v))
            }
            Kind::Bool => match raw.trim() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(invalid("expected true or false".to_string())),
            },
            Kind::Choice(options) => options
                .iter()
                .find(|o| **o == raw.trim())
                .map(|o| Value::Str(Cow::Borrowed(*o)))
                .ok_or_else(|| invalid(format!("expected one of {}", options.join(", ")))),
            Kind::List(options) => {
                let items: Vec<&str> = raw.split(',').map(str::trim).collect();
                for (i, item) in items.iter().enumerate() {
                    if !options.contains(item) {
                        return Err(invalid(format!("expected some of {}", options.join(", "))));
                    }
                    if items[..i].contains(item) {
                        return Err(invalid(format!("{item} is listed twice")));
                    }
                }
                Ok(Value::Str(Cow::Owned(items.join(","))))
            }
            Kind::Text => Ok(Value::Str(Cow::Owned(raw.trim().to_string()))),
        }
    }
}

/// Kafka's properties format: `key=value` (or `key: value`) lines, `#`/`!` comments.
pub fn parse_properties(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .map(|l| match l.split_once(['=', ':']) {
            Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// TOML, where `num.partitions = 3` is a dotted key: nested tables flatten back to
/// Kafka's dotted names.
pub fn parse_toml(text: &str) -> Result<Vec<(String, String)>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut out = Vec::new();
    flatten("", &table, &mut out)?;
    Ok(out)
}

fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut Vec<(String, String)>,
) -> Result<(), String> {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(t) => flatten(&name, t, out)?,
            toml::Value::String(s) => out.push((name, s.clone())),
            toml::Value::Integer(i) => out.push((name, i.to_string())),
            toml::Value::Boolean(b) => out.push((name, b.to_string())),
            other => return Err(format!("'{name}': unsupported value {other}")),
        }
    }
    Ok(())
}
