//! The redaction corpus (`tests/redaction/corpus.txt`): every secret in it comes
//! out exactly as written there, every harmless line as it went in.
use deadline_notifier::triage::redact::{clean_line, clean_tail};

/// `\u{…}` in the corpus stands for that character.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("\\u{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 3..];
        let end = after.find('}').expect("a closing } after \\u{");
        let c = u32::from_str_radix(&after[..end], 16)
            .ok()
            .and_then(char::from_u32)
            .expect("a hex code point");
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_corpus() {
    let text = include_str!("../redaction/corpus.txt");
    let mut pending: Option<String> = None;
    let (mut secrets, mut kept, mut failures) = (0, 0, Vec::new());
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if let Some(v) = line.strip_prefix("in:  ") {
            assert!(pending.is_none(), "line {n}: `in:` without its `out:`");
            pending = Some(unescape(v));
        } else if let Some(want) = line.strip_prefix("out: ") {
            let input = pending
                .take()
                .unwrap_or_else(|| panic!("line {n}: `out:` without `in:`"));
            let got = clean_line(&input);
            secrets += 1;
            if got != unescape(want) {
                failures.push(format!(
                    "line {n}: {input:?}\n   got  {got:?}\n   want {want:?}"
                ));
            }
        } else if let Some(v) = line.strip_prefix("keep: ") {
            let v = unescape(v);
            let got = clean_line(&v);
            kept += 1;
            if got != v {
                failures.push(format!("line {n}: harmless line changed: {v:?} → {got:?}"));
            }
        } else {
            assert!(
                line.is_empty() || line.starts_with('#'),
                "line {n}: expected `in:  `, `out: `, `keep: `, a comment or a blank line"
            );
        }
    }
    assert!(
        pending.is_none(),
        "the corpus ends with an `in:` and no `out:`"
    );
    assert!(
        secrets >= 40 && kept >= 10,
        "{secrets} secrets, {kept} harmless lines"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A key longer than the tail: its BEGIN line was cut off, so the tail starts
/// inside the body. Nothing of the body or its END leaves; what follows the key does.
#[test]
fn a_private_key_longer_than_the_tail_leaks_no_line() {
    let body: Vec<String> = (0..165)
        .map(|i| {
            let s =
                format!("{i:03}MIIEowIBAAKCAQEA7x9Qm2LkP0s/Zy+abcdefghijklmnopqrstuvwxyzABCDEFG");
            s[..64].to_string()
        })
        .collect();
    let mut log = vec!["-----BEGIN RSA PRIVATE KEY-----".to_string()];
    log.extend(body.iter().cloned());
    log.push("MIIEowIBAAKCAQEA7x9Qm2Lk==".into());
    log.push("-----END RSA PRIVATE KEY-----".into());
    log.push("render failed: exit code 1".into());
    for tail_len in [1, 2, 5, 20, 60, 200] {
        let tail = &log[log.len().saturating_sub(tail_len)..];
        let out = clean_tail(tail);
        for l in &out {
            assert!(
                !l.contains("MIIE") && !l.contains("-----"),
                "{tail_len}: {l:?} in {out:?}"
            );
        }
        assert_eq!(out.last().unwrap(), "render failed: exit code 1");
    }
    // The tail ends inside a key: nothing after BEGIN, nor body lines before it.
    let cut = &log[150..167];
    let out = clean_tail(cut);
    assert!(out.iter().all(|l| l == "[REDACTED PRIVATE KEY]"), "{out:?}");
}
