//! Text made safe to stand in a message, whatever the channel: the one leaf every
//! renderer, payload builder and log redactor shares.

/// A job value as it may stand in a message: on one line (line breaks and tabs
/// become one space, so a value can never move text into another line, header or
/// block), without control characters, and without any Unicode format character
/// (category Cf: direction overrides and isolates, invisible separators, the soft
/// hyphen, tag characters…) that could disguise it. ZWNJ and ZWJ stay: Persian,
/// Indic scripts and emoji sequences need them. Webhook data fields keep the exact
/// value (serde).
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' | '\t' | '\u{0b}' | '\u{0c}' | '\u{85}' | '\u{2028}' | '\u{2029}' => {
                if !out.ends_with(' ') {
                    out.push(' ');
                }
            }
            '\u{200c}' | '\u{200d}' => out.push(c),
            c if c.is_control() || is_format(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Unicode general category Cf (format characters), Unicode 16.
const FORMAT: &[(char, char)] = &[
    ('\u{00ad}', '\u{00ad}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061c}', '\u{061c}'),
    ('\u{06dd}', '\u{06dd}'),
    ('\u{070f}', '\u{070f}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08e2}', '\u{08e2}'),
    ('\u{180e}', '\u{180e}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{202a}', '\u{202e}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206f}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{fff9}', '\u{fffb}'),
    ('\u{110bd}', '\u{110bd}'),
    ('\u{110cd}', '\u{110cd}'),
    ('\u{13430}', '\u{1343f}'),
    ('\u{1bca0}', '\u{1bca3}'),
    ('\u{1d173}', '\u{1d17a}'),
    ('\u{e0001}', '\u{e0001}'),
    ('\u{e0020}', '\u{e007f}'),
];

/// Whether `c` is a Unicode format character (category Cf).
pub fn is_format(c: char) -> bool {
    FORMAT.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_character_goes_but_zwj_and_zwnj() {
        let hostile =
            "a\u{061c}b\u{2060}c\u{00ad}d\u{180e}e\u{e0041}\u{e007f}f\u{202e}g\u{2066}h\u{fff9}i";
        assert_eq!(sanitize(hostile), "abcdefghi");
        assert_eq!(
            sanitize("👩\u{200d}💻 می\u{200c}خواهم"),
            "👩\u{200d}💻 می\u{200c}خواهم"
        );
        assert_eq!(sanitize("step\n\u{2028}name"), "step name");
        for (lo, hi) in FORMAT {
            assert!(lo <= hi);
            for c in [*lo, *hi] {
                if c != '\u{200c}' && c != '\u{200d}' {
                    assert_eq!(sanitize(&format!("x{c}y")), "xy", "{:04x}", c as u32);
                }
            }
        }
    }
}
