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

/// What a rule puts in place of what it matched.
enum With {
    /// A replacement string (`$1` etc. refer to the pattern's groups).
    Text(&'static str),
    /// Decided from the match (a key whose value may be harmless).
    Fn(fn(&regex_lite::Captures) -> String),
}

struct Rule {
    re: Regex,
    with: With,
}

/// Names whose value is a secret, inside any identifier (`db_password`,
/// `SecretAccessKey`, `client_secret`, `x-api-key`…).
const SECRET_NAME: &str = r"password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credentials?|accountkey|auth[_-]?key|session[_-]?key";

fn rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        let r = |re: &str, with: With| Rule {
            re: Regex::new(re).expect("a valid redaction pattern"),
            with,
        };
        use With::{Fn, Text};
        vec![
            // Private-key lines on their own (a one-line PEM, or the END of one).
            r(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*", Text("[REDACTED PRIVATE KEY]")),
            // Credentials in a URL: everything before the last `@` of the authority
            // (a password may hold `@`; a token may be the user).
            r(r"([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s?#]*@", Text("$1[REDACTED]@")),
            // Token shapes that need no label (gitleaks' rule set for the shapes).
            // AWS access key ids: long-term AKIA, temporary ASIA, and the other
            // unique-id prefixes that look alike.
            r(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b", Text(REDACTED)),
            // JSON Web Tokens: header.payload.signature, the header base64 JSON.
            r(r"\beyJ[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]*", Text(REDACTED)),
            // Slack tokens (bot, user, app, config, refresh).
            r(r"\bxox[abeoprs]-[A-Za-z0-9\-]{8,}", Text(REDACTED)),
            r(r"\bxapp-[0-9]+-[A-Za-z0-9\-]{8,}", Text(REDACTED)),
            // GitHub tokens: classic (ghp/gho/ghu/ghs/ghr) and fine-grained.
            r(r"\bgh[pousr]_[A-Za-z0-9]{20,}", Text(REDACTED)),
            r(r"\bgithub_pat_[A-Za-z0-9_]{20,}", Text(REDACTED)),
            // Chat webhook URLs are credentials too.
            r(r"https://hooks\.slack\.com/\S+", Text("https://hooks.slack.com/[REDACTED]")),
            // Signed URLs (Teams Workflows, Azure SAS) and storage connection strings.
            r(r"(?i)\b(sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token)=[^&\s;,'\x22]+", Text("$1=[REDACTED]")),
            r(r"(?i)\b(AccountKey|SharedAccessKey|SharedAccessSignature)=[^;\s'\x22]+", Text("$1=[REDACTED]")),
            // Headers whose whole value is a credential.
            r(r"(?i)\b((?:proxy-)?authorization|set-cookie|cookie|x-api-key|x-auth-token)\s*:\s*.*$", Text("$1: [REDACTED]")),
            // Bearer / Basic credentials wherever they appear.
            r(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]{8,}=*", Text("$1 [REDACTED]")),
            // key=value, key: value, "key": "value", 'key': 'value', YAML and env
            // forms; the key may be quoted.
            r(
                &format!(
                    r#"(?i)(["']?)\b([a-z0-9_.\-]*(?:{SECRET_NAME})[a-z0-9_.\-]*|pwd|pass)(["']?)(\s*[=:]\s*)("[^"]*"?|'[^']*'?|[^\s,;&"'}}\]]+)"#
                ),
                Fn(key_value),
            ),
            // Command-line flags: --password VALUE, --api-key=VALUE.
            r(
                r"(?i)(--[a-z0-9\-]*(?:password|passwd|secret|token|api-?key|access-?key)[a-z0-9\-]*)(\s+)(\S+)",
                Text("$1$2[REDACTED]"),
            ),
            // A compound name and its value separated by spaces only
            // (`AWS_SECRET_ACCESS_KEY wJalr…`, `db_password hunter22`).
            r(
                &format!(
                    r"(?i)\b([a-z0-9]*[_\-][a-z0-9_\-]*(?:{SECRET_NAME})[a-z0-9_\-]*|[a-z0-9_\-]*(?:{SECRET_NAME})[_\-][a-z0-9_\-]*)(\s+)([^\s=:]{{6,}})"
                ),
                Fn(spaced_value),
            ),
            // MySQL-family clients take the password glued to -p.
            r(r"\b(mysql|mysqldump|mysqladmin|mariadb|mariadb-dump|mysqlimport|mysqlcheck)\b(.*?\s)-p(\S+)", Text("$1$2-p[REDACTED]")),
        ]
    })
}

/// A key's value replaced, its quotes kept; names that only count tokens
/// (`max_tokens: 4096`, `tokens_processed=10`) keep their value.
fn key_value(c: &regex_lite::Captures) -> String {
    let whole = c.get(0).map_or("", |m| m.as_str());
    let key = c.get(2).map_or("", |m| m.as_str()).to_ascii_lowercase();
    let value = c.get(5).map_or("", |m| m.as_str());
    // Names that name or describe a secret rather than hold it.
    let about = [
        "name", "id", "type", "count", "file", "path", "url", "length", "expiry",
    ]
    .iter()
    .any(|s| key.ends_with(s));
    if key.contains("tokens")
        || key.contains("tokeniz")
        || about
        || value.is_empty()
        || value.starts_with("[REDACTED")
    {
        return whole.to_string();
    }
    let quote = match value.chars().next() {
        Some(q @ ('"' | '\'')) => q.to_string(),
        _ => String::new(),
    };
    let closed = if !quote.is_empty() && value.len() > 1 && value.ends_with(quote.as_str()) {
        quote.as_str()
    } else {
        ""
    };
    format!(
        "{}{}{}{}{quote}{REDACTED}{closed}",
        &c[1], &c[2], &c[3], &c[4]
    )
}

/// A value after a name and spaces is redacted only when it looks like a secret
/// (a digit, a capital or a symbol in it): `api_token refresh succeeded` stays.
fn spaced_value(c: &regex_lite::Captures) -> String {
    let value = &c[3];
    let key = c[1].to_ascii_lowercase();
    let secretish = value
        .chars()
        .any(|ch| ch.is_ascii_digit() || ch.is_ascii_uppercase() || "/+=_-.!@#$%^&*".contains(ch));
    if key.contains("tokens") || value.starts_with("[REDACTED") || !secretish {
        return c[0].to_string();
    }
    format!("{}{}{REDACTED}", &c[1], &c[2])
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
            s = match &rule.with {
                With::Text(t) => rule.re.replace_all(&s, *t).into_owned(),
                With::Fn(f) => rule
                    .re
                    .replace_all(&s, |c: &regex_lite::Captures| f(c))
                    .into_owned(),
            };
        }
    }
    s
}

/// ZWJ and ZWNJ stay in text (scripts and emoji need them) but not between ASCII
/// letters and digits, where they only serve to hide a key name (`pass‍word=`).
fn join_ascii(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        if matches!(c, '\u{200c}' | '\u{200d}') {
            let prev = chars[..i]
                .iter()
                .rev()
                .find(|x| !matches!(x, '\u{200c}' | '\u{200d}'));
            let next = chars[i + 1..]
                .iter()
                .find(|x| !matches!(x, '\u{200c}' | '\u{200d}'));
            if prev.is_some_and(|p| p.is_ascii()) || next.is_some_and(|n| n.is_ascii()) {
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// One log line made safe to show: no terminal escapes, control or format
/// characters (tabs become spaces), no credentials, no code fence that could close
/// the block it is shown in, at most [`MAX_LINE`] characters.
pub fn clean_line(line: &str) -> String {
    let no_escapes = ansi().replace_all(line, "");
    let spaced = no_escapes.replace('\t', "    ");
    let plain = join_ascii(&crate::domain::text::sanitize(&spaced));
    let mut s = redact(&plain);
    while s.contains("```") {
        s = s.replace("```", "`\u{2009}`\u{2009}`");
    }
    if s.chars().count() > MAX_LINE {
        s = s.chars().take(MAX_LINE - 1).collect::<String>() + "…";
    }
    s
}

const KEY_MARKER: &str = "[REDACTED PRIVATE KEY]";

/// A line of a PEM body: 64 columns of base64 (what every PEM writer emits).
fn pem_body(line: &str) -> bool {
    let t = line.trim();
    t.len() == 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// A line of base64 only (a PEM body's last, shorter line).
fn base64_line(line: &str) -> bool {
    let t = line.trim();
    let b = t.trim_end_matches('=');
    let mixed = b.bytes().any(|c| c.is_ascii_uppercase())
        && b.bytes().any(|c| c.is_ascii_lowercase())
        && b.bytes().any(|c| c.is_ascii_digit());
    (4..=64).contains(&b.len())
        && (mixed || t.ends_with('='))
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

/// A log tail made safe: each line cleaned, and private-key blocks (which span
/// lines) replaced by one marker line. A tail may start inside a key: everything
/// up to an `-----END … PRIVATE KEY` whose BEGIN is not in the tail goes, and so
/// does any line that looks like a PEM body.
pub fn clean_tail(lines: &[String]) -> Vec<String> {
    let upper: Vec<String> = lines.iter().map(|l| l.to_ascii_uppercase()).collect();
    let is_begin = |u: &str| u.contains("-----BEGIN") && u.contains("PRIVATE KEY");
    let is_end = |u: &str| u.contains("-----END") && u.contains("PRIVATE KEY");
    let mut skip_to = 0;
    if let Some(end) = upper.iter().position(|u| is_end(u))
        && !upper[..end].iter().any(|u| is_begin(u))
    {
        skip_to = end + 1;
    }
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    if skip_to > 0 {
        out.push(KEY_MARKER.to_string());
    }
    let mut in_key = false;
    let mut prev_body = false;
    for (l, u) in lines.iter().zip(&upper).skip(skip_to) {
        let marker = if is_begin(u) {
            in_key = !is_end(u);
            true
        } else if in_key {
            in_key = !is_end(u);
            false
        } else {
            // The last body line is shorter (and may end in `=`): it goes with the
            // full ones before it.
            let body = pem_body(l) || (prev_body && base64_line(l));
            prev_body = pem_body(l);
            body
        };
        if marker || in_key || is_end(u) {
            if out.last().map(String::as_str) != Some(KEY_MARKER) {
                out.push(KEY_MARKER.to_string());
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
            let hidden = |c: char| crate::domain::text::is_format(c) && !matches!(c, '\u{200c}' | '\u{200d}');
            prop_assert!(!out.chars().any(hidden));
            prop_assert!(!out.contains("```"));
            prop_assert!(out.chars().count() <= MAX_LINE);
        }
    }
}
