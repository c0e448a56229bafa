//! Topic patterns with named segments:
//! `mtic/msg/client/realtime/{tenant_id}/{project_id}/#`.
//!
//! A segment is a literal, `{name}` (captures exactly one non-empty level),
//! `+` (any one level, not captured) or, last only, `#` (zero or more levels).
//! As in MQTT, a topic starting with `$` never matches a pattern whose first
//! segment is a wildcard.

use smallvec::SmallVec;

/// A match's captured values, indexed like [`TopicPattern::names`]: on the
/// stack for up to eight names (routing runs once per message).
pub type Captures<'t> = SmallVec<[&'t str; 8]>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Named(usize),
    AnyOne,
    Rest,
}

#[derive(Debug, Clone)]
pub struct TopicPattern {
    segments: Vec<Segment>,
    names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the pattern is empty")]
    Empty,
    #[error("`#` may only be the last segment")]
    HashNotLast,
    #[error("segment `{0}` mixes a wildcard or braces with other characters")]
    BadSegment(String),
    #[error("segment name `{0}` is not an identifier (letters, digits, `_`)")]
    BadName(String),
    #[error("segment name `{0}` is used twice")]
    DuplicateName(String),
}

impl TopicPattern {
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut names: Vec<String> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let seg = match *part {
                "#" if i + 1 == parts.len() => Segment::Rest,
                "#" => return Err(PatternError::HashNotLast),
                "+" => Segment::AnyOne,
                p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                    let name = &p[1..p.len() - 1];
                    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        || name.starts_with(|c: char| c.is_ascii_digit())
                    {
                        return Err(PatternError::BadName(name.to_string()));
                    }
                    if names.iter().any(|n| n == name) {
                        return Err(PatternError::DuplicateName(name.to_string()));
                    }
                    names.push(name.to_string());
                    Segment::Named(names.len() - 1)
                }
                p if p.contains(['{', '}', '+', '#']) => return Err(PatternError::BadSegment(p.to_string())),
                p => Segment::Literal(p.to_string()),
            };
            segments.push(seg);
        }
        Ok(Self { segments, names })
    }

    /// Names of the captured segments, in pattern order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Match a topic; on success the captured values, indexed like `names()`.
    pub fn captures<'t>(&self, topic: &'t str) -> Option<Captures<'t>> {
        let mut out: Captures<'t> = smallvec::smallvec![""; self.names.len()];
        let starts_with_wildcard =
            matches!(self.segments.first(), Some(Segment::Named(_) | Segment::AnyOne | Segment::Rest));
        if topic.starts_with('$') && starts_with_wildcard {
            return None;
        }
        let mut levels = topic.split('/');
        for seg in &self.segments {
            match seg {
                Segment::Rest => return Some(out),
                Segment::Literal(lit) => {
                    if levels.next()? != lit {
                        return None;
                    }
                }
                Segment::AnyOne => {
                    levels.next()?;
                }
                Segment::Named(idx) => {
                    let level = levels.next()?;
                    if level.is_empty() {
                        return None;
                    }
                    out[*idx] = level;
                }
            }
        }
        if levels.next().is_some() {
            return None;
        }
        Some(out)
    }
}

/// Checks an MQTT subscription filter (MQTT 4.7.1).
pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("a topic filter cannot be empty".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("`{filter}`: `#` must be a whole level and the last one"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("`{filter}`: `+` must be a whole level"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> TopicPattern {
        TopicPattern::parse(s).unwrap()
    }

    #[test]
    fn default_pattern_captures_tenant_and_project() {
        let pat = p("mtic/msg/client/realtime/{tenant_id}/{project_id}/#");
        assert_eq!(pat.names(), ["tenant_id", "project_id"]);
        assert_eq!(pat.captures("mtic/msg/client/realtime/t1/p1"), Some(smallvec::smallvec!["t1", "p1"]));
        assert_eq!(pat.captures("mtic/msg/client/realtime/t1/p1/dev/42"), Some(smallvec::smallvec!["t1", "p1"]));
    }

    #[test]
    fn too_few_or_empty_segments_do_not_match() {
        let pat = p("mtic/msg/client/realtime/{tenant_id}/{project_id}/#");
        assert_eq!(pat.captures("mtic/msg/client/realtime/t1"), None);
        assert_eq!(pat.captures("mtic/msg/client/realtime//p1"), None);
        assert_eq!(pat.captures("mtic/msg/client/realtime/t1/"), None);
        assert_eq!(pat.captures("mtic/msg/other/realtime/t1/p1"), None);
        assert_eq!(pat.captures(""), None);
    }

    #[test]
    fn without_hash_extra_levels_do_not_match() {
        let pat = p("a/{x}");
        assert_eq!(pat.captures("a/1"), Some(smallvec::smallvec!["1"]));
        assert_eq!(pat.captures("a/1/2"), None);
    }

    #[test]
    fn plus_matches_one_level_without_capturing() {
        let pat = p("+/{x}/+");
        assert_eq!(pat.captures("a/b/c"), Some(smallvec::smallvec!["b"]));
        assert_eq!(pat.captures("a/b"), None);
    }

    #[test]
    fn dollar_topics_never_match_a_leading_wildcard() {
        assert_eq!(p("{x}/#").captures("$SYS/broker/load"), None);
        assert_eq!(p("#").captures("$SYS/x"), None);
        assert_eq!(p("$SYS/{x}/#").captures("$SYS/broker/load"), Some(smallvec::smallvec!["broker"]));
    }

    #[test]
    fn unicode_levels_are_captured_verbatim() {
        let pat = p("rt/{tenant_id}/{project_id}");
        assert_eq!(pat.captures("rt/租户/プロジェクト"), Some(smallvec::smallvec!["租户", "プロジェクト"]));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(matches!(TopicPattern::parse(""), Err(PatternError::Empty)));
        assert!(matches!(TopicPattern::parse("a/#/b"), Err(PatternError::HashNotLast)));
        assert!(matches!(TopicPattern::parse("a/b+"), Err(PatternError::BadSegment(_))));
        assert!(matches!(TopicPattern::parse("a/{x y}"), Err(PatternError::BadName(_))));
        assert!(matches!(TopicPattern::parse("{x}/{x}"), Err(PatternError::DuplicateName(_))));
        assert!(matches!(TopicPattern::parse("a/pre{x}"), Err(PatternError::BadSegment(_))));
    }

    #[test]
    fn filters_follow_mqtt_rules() {
        assert!(validate_filter("a/+/#").is_ok());
        assert!(validate_filter("#").is_ok());
        assert!(validate_filter("a/#/b").is_err());
        assert!(validate_filter("a/b#").is_err());
        assert!(validate_filter("a+/b").is_err());
        assert!(validate_filter("").is_err());
    }

    proptest! {
        #[test]
        fn captured_values_are_the_topic_levels(
            tenant in "[^/$#+]{1,12}",
            project in "[^/#+]{1,12}",
            rest in proptest::collection::vec("[^/]{0,6}", 0..4),
        ) {
            let pat = p("mtic/msg/client/realtime/{tenant_id}/{project_id}/#");
            let mut topic = format!("mtic/msg/client/realtime/{tenant}/{project}");
            for r in &rest { topic.push('/'); topic.push_str(r); }
            prop_assert_eq!(pat.captures(&topic), Some(smallvec::smallvec![tenant.as_str(), project.as_str()]));
        }

        #[test]
        fn matching_never_panics(topic in "\\PC{0,64}", pattern in "[a-z{}/+#_]{0,24}") {
            if let Ok(pat) = TopicPattern::parse(&pattern) {
                let _ = pat.captures(&topic);
            }
        }
    }
}
