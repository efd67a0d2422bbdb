//! Directory names: `lo://acme/rooms/lobby` (an object) and `lo://acme/rooms/` (a
//! folder; a zone is a folder owned by a key).

use std::fmt;

/// The scheme every name starts with.
pub const SCHEME: &str = "lo://";
/// Most segments in a name.
pub const MAX_SEGMENTS: usize = 16;
/// Longest segment.
pub const MAX_SEGMENT_LEN: usize = 63;
/// Longest name.
pub const MAX_NAME_LEN: usize = 255;

/// A validated name: an object (`lo://a/b`) or a folder (`lo://a/b/`, root `lo://`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{name}` is not a valid liveobjects name: {reason} (names look like lo://zone/folder/object, segments of a-z 0-9 - _ .)"
)]
pub struct NameError {
    /// The text.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

impl Name {
    /// Parse and validate.
    pub fn parse(text: &str) -> Result<Name, NameError> {
        let err = |reason: &str| NameError {
            name: text.chars().take(300).collect(),
            reason: reason.to_string(),
        };
        if text.len() > MAX_NAME_LEN {
            return Err(err("longer than 255 bytes"));
        }
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| err("it must start with lo://"))?;
        if rest.is_empty() {
            return Ok(Name(SCHEME.to_string()));
        }
        let body = rest.strip_suffix('/').unwrap_or(rest);
        let segments: Vec<&str> = body.split('/').collect();
        if segments.len() > MAX_SEGMENTS {
            return Err(err("more than 16 segments"));
        }
        for segment in &segments {
            if segment.is_empty() {
                return Err(err("empty segment (`//`)"));
            }
            if segment.len() > MAX_SEGMENT_LEN {
                return Err(err("a segment is longer than 63 bytes"));
            }
            if *segment == "." || *segment == ".." {
                return Err(err("`.` and `..` are not segments"));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
            {
                return Err(err("a segment has a character outside a-z 0-9 - _ ."));
            }
        }
        Ok(Name(text.to_string()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a folder (ends with `/`).
    pub fn is_folder(&self) -> bool {
        self.0.ends_with('/')
    }

    /// The segments after `lo://`.
    pub fn segments(&self) -> Vec<&str> {
        self.0[SCHEME.len()..]
            .split('/')
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Whether `self` lies strictly inside the folder `folder`.
    pub fn is_within(&self, folder: &Name) -> bool {
        folder.is_folder() && self.0.len() > folder.0.len() && self.0.starts_with(&folder.0)
    }

    /// Every folder containing this name, from the root `lo://` down to its parent.
    pub fn ancestors(&self) -> Vec<Name> {
        let segments = self.segments();
        let mut out = vec![Name(SCHEME.to_string())];
        let mut prefix = SCHEME.to_string();
        for segment in segments.iter().take(segments.len().saturating_sub(1)) {
            prefix.push_str(segment);
            prefix.push('/');
            out.push(Name(prefix.clone()));
        }
        out
    }

    /// The folder directly containing this name (the root contains itself).
    pub fn parent(&self) -> Name {
        self.ancestors()
            .pop()
            .expect("ancestors always holds the root")
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_parse() {
        for ok in [
            "lo://",
            "lo://acme/",
            "lo://acme/rooms/lobby",
            "lo://a-b/c_d/e.f/",
        ] {
            Name::parse(ok).unwrap();
        }
    }

    #[test]
    fn invalid_names_say_why() {
        for (bad, why) in [
            ("http://acme/x", "lo://"),
            ("lo://Acme/x", "character"),
            ("lo://acme//x", "empty segment"),
            ("lo://acme/../x", "`.`"),
        ] {
            let err = Name::parse(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        assert!(Name::parse(&format!("lo://{}", "a/".repeat(20))).is_err());
    }

    #[test]
    fn ancestors_run_from_the_root_to_the_parent() {
        let n = Name::parse("lo://acme/games/chess").unwrap();
        let a: Vec<String> = n.ancestors().iter().map(|n| n.to_string()).collect();
        assert_eq!(a, ["lo://", "lo://acme/", "lo://acme/games/"]);
        let f = Name::parse("lo://acme/games/").unwrap();
        let a: Vec<String> = f.ancestors().iter().map(|n| n.to_string()).collect();
        assert_eq!(a, ["lo://", "lo://acme/"]);
        assert_eq!(Name::parse("lo://").unwrap().ancestors().len(), 1);
    }

    #[test]
    fn within_means_strictly_inside_a_folder() {
        let acme = Name::parse("lo://acme/").unwrap();
        assert!(Name::parse("lo://acme/x").unwrap().is_within(&acme));
        assert!(Name::parse("lo://acme/x/").unwrap().is_within(&acme));
        assert!(!acme.is_within(&acme));
        assert!(!Name::parse("lo://acmex/y").unwrap().is_within(&acme));
        assert!(acme.is_within(&Name::parse("lo://").unwrap()));
    }
}
