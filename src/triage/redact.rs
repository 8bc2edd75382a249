//! Log lines on their way to chat. They are hostile (markup, control characters,
//! terminal escapes) and may hold secrets (keys, passwords, tokens), so every line
//! is cleaned here, in one place: escapes and control characters stripped, what
//! looks like a credential redacted, code fences broken, long lines cut. The
//! channel's own escaping then applies on top.
use regex_lite::Regex;
use std::sync::OnceLock;

/// Longest line kept, in characters (a cut line ends with "…").
pub const MAX_LINE: usize = 300;
pub const REDACTED: &str = "[REDACTED]";

struct Rule {
    re: Regex,
    with: &'static str,
}

fn rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        let r = |re: &str, with: &'static str| Rule {
            re: Regex::new(re).expect("a valid redaction pattern"),
            with,
        };
        vec![
            // AWS access key ids (long-term AKIA, temporary ASIA, and the other
            // unique-id prefixes that look alike).
            r(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b", REDACTED),
            // Authorization headers: everything after the colon.
            r(r"(?i)\b((?:proxy-)?authorization)\s*:\s*.*$", "$1: [REDACTED]"),
            // Bearer / Basic credentials wherever they appear.
            r(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]{8,}=*", "$1 [REDACTED]"),
            // key=value / key: value secrets (quoted or not), aws_secret_access_key included.
            r(
                r#"(?i)\b([a-z0-9_\-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credentials?)[a-z0-9_\-]*)(\s*[=:]\s*)("[^"]*"?|'[^']*'?|[^\s,;&"']+)"#,
                "$1$2[REDACTED]",
            ),
            // Command-line flags: --password VALUE, --api-key VALUE.
            r(
                r"(?i)(--[a-z0-9\-]*(?:password|passwd|secret|token|api-?key|access-?key)[a-z0-9\-]*)(\s+)(\S+)",
                "$1$2[REDACTED]",
            ),
            // user:password@ in URLs.
            r(r"([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s:@]+:[^/\s@]+@", "$1[REDACTED]@"),
            // Chat webhook URLs are credentials too.
            r(r"https://hooks\.slack\.com/\S+", "https://hooks.slack.com/[REDACTED]"),
        ]
    })
}

fn ansi() -> &'static Regex {
    static ANSI: OnceLock<Regex> = OnceLock::new();
    ANSI.get_or_init(|| {
        Regex::new(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
            .expect("a valid ANSI pattern")
    })
}

/// Redacts what looks like a credential in one line.
pub fn redact(line: &str) -> String {
    let mut s = line.to_string();
    for rule in rules() {
        if rule.re.is_match(&s) {
            s = rule.re.replace_all(&s, rule.with).into_owned();
        }
    }
    s
}

/// One log line made safe to show: no terminal escapes or control characters (tabs
/// become spaces), no credentials, no code fence that could close the block it is
/// shown in, at most [`MAX_LINE`] characters.
pub fn clean_line(line: &str) -> String {
    let no_escapes = ansi().replace_all(line, "");
    let spaced = no_escapes.replace('\t', "    ");
    let plain = crate::domain::text::sanitize(&spaced);
    let mut s = redact(&plain);
    while s.contains("```") {
        s = s.replace("```", "`\u{2009}`\u{2009}`");
    }
    if s.chars().count() > MAX_LINE {
        s = s.chars().take(MAX_LINE - 1).collect::<String>() + "…";
    }
    s
}

/// A log tail made safe: each line cleaned, and private-key blocks (which span
/// lines) replaced by one marker line.
pub fn clean_tail(lines: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(lines.len());
    let mut in_key = false;
    for l in lines {
        let upper = l.to_ascii_uppercase();
        if upper.contains("-----BEGIN") && upper.contains("PRIVATE KEY") {
            in_key = !upper.contains("-----END");
            out.push("[REDACTED PRIVATE KEY]".to_string());
            continue;
        }
        if in_key {
            if upper.contains("-----END") {
                in_key = false;
            }
            continue;
        }
        out.push(clean_line(l));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_secrets_are_redacted() {
        let cases = [
            ("using AKIAIOSFODNN7EXAMPLE for s3", "AKIAIOSFODNN7EXAMPLE"),
            ("creds ASIAY34FZKBOKMUTVV7A expire", "ASIAY34FZKBOKMUTVV7A"),
            (
                "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "wJalrXUtnFEMI",
            ),
            (
                "AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMI/K7MDENG",
                "wJalrXUtnFEMI",
            ),
            ("login password=hunter2 ok", "hunter2"),
            ("db_password = 's3cr3t pass'", "s3cr3t"),
            ("--token ghp_abcdefghijklmnop1234", "ghp_abcdef"),
            (
                "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.x",
                "eyJhbGci",
            ),
            (
                "curl -H 'authorization: Basic dXNlcjpwYXNz'",
                "dXNlcjpwYXNz",
            ),
            (
                "fetching https://bob:pa55word@repo.example.com/x",
                "pa55word",
            ),
            ("api_key: \"abc123def456\"", "abc123def456"),
            (
                "post to https://hooks.slack.com/services/T0/B0/XXXX",
                "T0/B0/XXXX",
            ),
        ];
        for (line, secret) in cases {
            let out = clean_line(line);
            assert!(!out.contains(secret), "{line:?} → {out:?}");
            assert!(out.contains("[REDACTED"), "{line:?} → {out:?}");
        }
    }

    #[test]
    fn ordinary_lines_are_kept() {
        for line in [
            "Rendering frame 1042 of shot_010",
            "ERROR: out of memory (exit code 137)",
            "tokens per second: 12",
        ] {
            assert_eq!(clean_line(line), line);
        }
    }

    #[test]
    fn private_key_blocks_are_dropped_whole() {
        let lines: Vec<String> = [
            "before",
            "-----BEGIN RSA PRIVATE KEY-----",
            "MIIEowIBAAKCAQEA7",
            "abcdefabcdef",
            "-----END RSA PRIVATE KEY-----",
            "after",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            clean_tail(&lines),
            ["before", "[REDACTED PRIVATE KEY]", "after"]
        );
    }

    #[test]
    fn escapes_controls_fences_and_length() {
        let out = clean_line("\x1b[31mred\x1b[0m\tx\u{7}\u{202e}evil ``` fence");
        assert_eq!(out, "red    xevil `\u{2009}`\u{2009}` fence");
        let long = "x".repeat(1000);
        assert_eq!(clean_line(&long).chars().count(), MAX_LINE);
    }

    proptest! {
        #[test]
        fn an_access_key_never_survives(
            before in "[ -~]{0,40}",
            after in "[ -~]{0,40}",
            prefix in prop::sample::select(vec!["AKIA", "ASIA"]),
            body in "[A-Z0-9]{16}",
        ) {
            let key = format!("{prefix}{body}");
            let line = format!("{before} {key} {after}");
            prop_assert!(!clean_line(&line).contains(&key));
        }

        #[test]
        fn a_password_value_never_survives(
            before in "[ -~]{0,30}",
            name in prop::sample::select(vec!["password", "PASSWORD", "db_password", "token", "api_key", "aws_secret_access_key", "client_secret"]),
            sep in prop::sample::select(vec!["=", ": ", " = ", ":"]),
            value in "[A-Za-z0-9/+_.\\-]{6,30}",
            after in "( [ -~]{0,30})?",
        ) {
            let line = format!("{before} {name}{sep}{value}{after}");
            let out = clean_line(&line);
            prop_assert!(!out.contains(&format!("{name}{sep}{value}")), "{line:?} → {out:?}");
            prop_assert!(out.contains(REDACTED), "{line:?} → {out:?}");
        }

        #[test]
        fn any_line_comes_out_one_safe_line(line in "\\PC{0,500}|[\\x00-\\x1f\\x7f ``]{0,50}") {
            let out = clean_line(&line);
            prop_assert!(!out.chars().any(|c| c.is_control()));
            prop_assert!(!out.contains("```"));
            prop_assert!(out.chars().count() <= MAX_LINE);
        }
    }
}
