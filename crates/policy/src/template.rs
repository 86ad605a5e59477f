//! Certificate field templates with `{serial}` and `{uid}` placeholders.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use crate::PolicyError;

/// Longest template accepted, in characters.
pub const MAX_TEMPLATE_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Serial,
    Uid,
}

/// A validated text template for a certificate field.
///
/// Placeholders are `{serial}` (the device serial number) and `{uid}` (the
/// device's unique ID as lowercase hex). Any other use of `{` or `}` is
/// rejected when the policy is parsed, so rendering cannot fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// The template as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the template contains `{serial}`.
    pub fn uses_serial(&self) -> bool {
        self.parts.contains(&Part::Serial)
    }

    /// Whether the template contains `{uid}`.
    pub fn uses_uid(&self) -> bool {
        self.parts.contains(&Part::Uid)
    }

    /// Substitutes the placeholders.
    pub fn render(&self, serial: &str, uid: &[u8]) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Serial => out.push_str(serial),
                Part::Uid => {
                    for b in uid {
                        // Writing to a String cannot fail.
                        let _ = write!(out, "{b:02x}");
                    }
                }
            }
        }
        out
    }

    /// Literal text of the template, excluding placeholders.
    pub(crate) fn literal_text(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Literal(text) => Some(text.as_str()),
            _ => None,
        })
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for Template {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_template(s).map_err(|problem| PolicyError::Invalid {
            field: "template".to_owned(),
            problem,
        })
    }
}

/// Parses a template, returning the problem (without field name) on error.
pub(crate) fn parse_template(s: &str) -> Result<Template, String> {
    if s.chars().count() > MAX_TEMPLATE_LEN {
        return Err(format!("must be at most {MAX_TEMPLATE_LEN} characters"));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(brace) = rest.find(['{', '}']) {
        let (literal, tail) = rest.split_at(brace);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal.to_owned()));
        }
        let Some(inner) = tail.strip_prefix('{') else {
            return Err("has a '}' without a matching '{'".to_owned());
        };
        let Some((name, after)) = inner.split_once('}') else {
            return Err("has a '{' without a closing '}'".to_owned());
        };
        parts.push(match name {
            "serial" => Part::Serial,
            "uid" => Part::Uid,
            _ => {
                return Err(format!(
                    "uses unknown placeholder {{{name}}}; only {{serial}} and {{uid}} are allowed"
                ))
            }
        });
        rest = after;
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_owned()));
    }
    Ok(Template {
        source: s.to_owned(),
        parts,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders() {
        let t: Template = "urn:acme:device:{uid}/{serial}{serial}".parse().unwrap();
        assert_eq!(
            t.render("SN-1", &[0x00, 0xAB, 0x0F]),
            "urn:acme:device:00ab0f/SN-1SN-1"
        );
        assert!(t.uses_uid() && t.uses_serial());
        assert_eq!(t.to_string(), "urn:acme:device:{uid}/{serial}{serial}");
    }

    #[test]
    fn literal_only() {
        let t: Template = "Acme Corp".parse().unwrap();
        assert_eq!(t.render("x", &[1]), "Acme Corp");
        assert!(!t.uses_uid() && !t.uses_serial());
        let empty: Template = "".parse().unwrap();
        assert_eq!(empty.render("x", &[1]), "");
    }

    #[test]
    fn rejects_bad_templates() {
        for (bad, needle) in [
            ("{serial", "closing"),
            ("serial}", "matching"),
            ("{SERIAL}", "{SERIAL}"),
            ("{}", "{}"),
            ("{ serial}", "{ serial}"),
            ("{{serial}}", "{{serial}"),
            ("{date}", "{date}"),
            ("a\nb", "control"),
        ] {
            let err = bad.parse::<Template>().unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        let long = "x".repeat(MAX_TEMPLATE_LEN + 1);
        assert!(long.parse::<Template>().is_err());
    }
}
