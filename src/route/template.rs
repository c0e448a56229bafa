//! Templates for Kafka topic and key: `iot.{tenant_id}.{project_id}`.
//!
//! Field values are substituted verbatim into keys. For topic names, every
//! character of a substituted value outside `[A-Za-z0-9_-]` becomes `_`:
//! Kafka's legal set without `.`, so that a value cannot add a level to the
//! name (tenant `a.b` of project `c` and tenant `a` of project `b.c` would
//! otherwise share `iot.a.b.c`), and the template's own literals (`iot.`)
//! are the only dots. A rendered name that is empty, `.`, `..` or longer
//! than 249 characters is rejected and the message is dead-lettered.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(usize),
}

#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
    /// Whether the template has no fields (renders to a constant).
    constant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{` in template")]
    Unclosed,
    #[error("stray `}}` in template")]
    Stray,
    #[error("unknown field `{{{0}}}`; known fields: {1}")]
    UnknownField(String, String),
}

/// Longest legal Kafka topic name.
pub const MAX_TOPIC_LEN: usize = 249;

impl Template {
    /// Parse against the list of known field names; fields are referred to by index.
    pub fn parse(text: &str, fields: &[&str]) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Literal(rest.to_string()));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => return Err(TemplateError::Stray),
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Literal(rest[..i].to_string()));
                    }
                    let close = rest[i..].find('}').ok_or(TemplateError::Unclosed)? + i;
                    let name = &rest[i + 1..close];
                    let idx = fields
                        .iter()
                        .position(|f| *f == name)
                        .ok_or_else(|| TemplateError::UnknownField(name.to_string(), fields.join(", ")))?;
                    parts.push(Part::Field(idx));
                    rest = &rest[close + 1..];
                }
            }
        }
        let constant = match parts.as_slice() {
            [] => Some(String::new()),
            [Part::Literal(s)] => Some(s.clone()),
            _ => None,
        };
        Ok(Self { parts, constant })
    }

    /// Render with values indexed like the field list given to `parse`.
    pub fn render(&self, values: &[&str]) -> String {
        self.render_with(values, |out, v| out.push_str(v))
    }

    /// Render as a Kafka topic name, sanitising substituted values.
    pub fn render_topic(&self, values: &[&str]) -> Result<String, String> {
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-');
        let name = self.render_with(values, |out, v| {
            // Most values need no change: copied at once.
            if v.bytes().all(|b| legal(char::from(b))) {
                out.push_str(v);
            } else {
                out.extend(v.chars().map(|c| if legal(c) { c } else { '_' }));
            }
        });
        check_topic_name(&name).map(|()| name)
    }

    fn render_with(&self, values: &[&str], mut push: impl FnMut(&mut String, &str)) -> String {
        if let Some(c) = &self.constant {
            return c.clone();
        }
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Field(i) => push(&mut out, values.get(*i).copied().unwrap_or("")),
            }
        }
        out
    }
}

/// Kafka's rules for topic names.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("`{name}` is not a legal Kafka topic name"));
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(format!("topic name is {} characters; Kafka allows {MAX_TOPIC_LEN}", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("`{name}` contains `{c}`; Kafka topic names allow A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIELDS: [&str; 3] = ["tenant_id", "project_id", "device_id"];

    #[test]
    fn renders_fields_and_literals() {
        let t = Template::parse("iot.{tenant_id}.{project_id}", &FIELDS).unwrap();
        assert_eq!(t.render(&["t1", "p1", "d1"]), "iot.t1.p1");
        let k = Template::parse("{tenant_id}/{project_id}/{device_id}", &FIELDS).unwrap();
        assert_eq!(k.render(&["t1", "p1", "d1"]), "t1/p1/d1");
        let c = Template::parse("iot-messages", &FIELDS).unwrap();
        assert_eq!(c.render(&["t1", "p1", "d1"]), "iot-messages");
    }

    #[test]
    fn topic_values_are_sanitised() {
        let t = Template::parse("iot.{tenant_id}.{project_id}", &FIELDS).unwrap();
        assert_eq!(t.render_topic(&["acme corp", "p/1", ""]).unwrap(), "iot.acme_corp.p_1");
        assert_eq!(t.render_topic(&["租户", "p", ""]).unwrap(), "iot.__.p");
        let long = "x".repeat(300);
        assert!(t.render_topic(&[&long, "p", ""]).is_err());
    }

    #[test]
    fn a_value_cannot_steer_the_topic_name() {
        let t = Template::parse("iot.{tenant_id}.{project_id}", &FIELDS).unwrap();
        // A dot in a value would make tenant `a.b` / project `c` and tenant
        // `a` / project `b.c` share a topic (and a per-tenant prefix ACL).
        assert_eq!(t.render_topic(&["a.b", "c", ""]).unwrap(), "iot.a_b.c");
        assert_eq!(t.render_topic(&["a", "b.c", ""]).unwrap(), "iot.a.b_c");
        for hostile in
            ["..", "../../etc", ".", "$SYS", "#", "+", "iot-dead-letters", "\0x", "a\u{0}b", "__consumer_offsets"]
        {
            let name = t.render_topic(&[hostile, "p", ""]).unwrap();
            assert!(name.starts_with("iot.") && name.ends_with(".p"), "{hostile:?} -> {name}");
            assert_eq!(name.matches('.').count(), 2, "{hostile:?} -> {name}");
        }
        // A template that is only a field cannot be turned into `.`/`..`.
        let bare = Template::parse("{tenant_id}", &FIELDS).unwrap();
        assert_eq!(bare.render_topic(&["..", "", ""]).unwrap(), "__");
        assert!(bare.render_topic(&["", "", ""]).is_err());
    }

    #[test]
    fn template_errors_are_reported() {
        assert_eq!(Template::parse("iot.{tenant", &FIELDS).unwrap_err(), TemplateError::Unclosed);
        assert_eq!(Template::parse("iot.}x", &FIELDS).unwrap_err(), TemplateError::Stray);
        assert!(matches!(Template::parse("{nope}", &FIELDS), Err(TemplateError::UnknownField(..))));
    }

    #[test]
    fn illegal_literal_topic_names_are_caught() {
        assert!(check_topic_name("iot messages").is_err());
        assert!(check_topic_name("..").is_err());
        assert!(check_topic_name("iot-dead-letters").is_ok());
    }

    proptest! {
        #[test]
        fn rendered_topics_are_always_legal_or_rejected(a in "\\PC{0,40}", b in "\\PC{0,40}") {
            let t = Template::parse("iot.{tenant_id}.{project_id}", &FIELDS).unwrap();
            if let Ok(name) = t.render_topic(&[&a, &b, ""]) {
                prop_assert!(check_topic_name(&name).is_ok());
                // The prefix stays, and each value is exactly one level.
                prop_assert!(name.starts_with("iot."));
                prop_assert_eq!(name.split('.').count(), 3);
            }
        }
    }
}
