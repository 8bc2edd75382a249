//! Text made safe to stand in a message, whatever the channel: the one leaf every
//! renderer, payload builder and log redactor shares.

/// A job value as it may stand in a message: on one line (line breaks and tabs
/// become one space, so a value can never move text into another line, header or
/// block), without control characters, and without the direction overrides and
/// invisible characters that could disguise it (U+202A–U+202E, U+2066–U+2069,
/// U+200E, U+200F, U+200B, U+FEFF). ZWNJ and ZWJ stay: Persian, Indic scripts and
/// emoji sequences need them. Webhook data fields keep the exact value (serde).
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' | '\t' | '\u{0b}' | '\u{0c}' | '\u{85}' | '\u{2028}' | '\u{2029}' => {
                if !out.ends_with(' ') {
                    out.push(' ');
                }
            }
            '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{200b}'
            | '\u{feff}' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}
