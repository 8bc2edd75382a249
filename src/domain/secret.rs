//! Secrets (tokens, webhook URLs, signing keys): never printed. Where they come
//! from (literal, environment, file) is `config::secret`.
use std::fmt;

/// A value that must not appear in logs, errors or API responses. `Debug` and
/// `Display` print `[redacted]`; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Removes every occurrence of `secrets` from `text`; used on error strings from
/// libraries (reqwest prints URLs) before they reach a log or a dead letter.
pub fn scrub(text: &str, secrets: &[&Secret]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if s.0.len() >= 4 {
            out = out.replace(&s.0, "[redacted]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints() {
        let s = Secret::new("xoxb-very-secret");
        assert!(!format!("{s:?} {s}").contains("very-secret"));
        assert_eq!(
            scrub("GET https://x/hunter2 failed", &[&Secret::new("hunter2")]),
            "GET https://x/[redacted] failed"
        );
    }
}
