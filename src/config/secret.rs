//! Where a secret comes from, as written in the config file: a literal, an
//! environment variable or a file. Resolved after the rules are checked, so a
//! missing variable is reported with the key that names it.
use crate::domain::secret::Secret;
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

/// Where a secret comes from, as written in the config file.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum SecretSource {
    Literal(String),
    Env { env: String },
    File { file: PathBuf },
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Literal(_) => f.write_str("Literal([redacted])"),
            SecretSource::Env { env } => write!(f, "Env({env})"),
            SecretSource::File { file } => write!(f, "File({})", file.display()),
        }
    }
}

impl SecretSource {
    /// Resolves the value. The error names the variable or file, never the value.
    pub fn resolve(&self) -> Result<Secret, String> {
        let v = match self {
            SecretSource::Literal(s) => s.clone(),
            SecretSource::Env { env } => std::env::var(env).map_err(|e| match e {
                std::env::VarError::NotPresent => format!("environment variable {env} is not set"),
                std::env::VarError::NotUnicode(_) => {
                    format!("environment variable {env} is not valid UTF-8")
                }
            })?,
            SecretSource::File { file } => std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read secret file {}: {e}", file.display()))?,
        };
        let v = v.trim().to_string();
        if v.is_empty() {
            return Err("is empty".into());
        }
        Ok(Secret::new(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints() {
        let src: SecretSource = serde_json::from_str("\"hunter2hunter2\"").unwrap();
        assert!(!format!("{src:?}").contains("hunter2"));
    }

    #[test]
    fn env_and_file_sources() {
        let src: SecretSource =
            serde_json::from_str(r#"{"env":"DN_TEST_DEFINITELY_UNSET"}"#).unwrap();
        assert!(
            src.resolve()
                .unwrap_err()
                .contains("DN_TEST_DEFINITELY_UNSET")
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "whsec_abc\n").unwrap();
        let src = SecretSource::File { file: p };
        assert_eq!(src.resolve().unwrap().expose(), "whsec_abc");
    }
}
