//! A strict one-pass scanner of a JSON object into its fields, for the common case.
//!
//! It exists for speed: serde_json's `MapAccess` with a `RawValue` per field costs about
//! four times as much per field, and every inbound message goes through here. It is a
//! recognizer only: it never unescapes and never builds a value. It answers `None` both when
//! the text is not valid JSON and when it is valid but outside the common case (a key with
//! an escape, nesting deeper than [`MAX_DEPTH`]); the caller then falls back to serde_json,
//! which either accepts the text with the same fields or produces the error message. So the
//! one property that matters is that whatever this accepts, serde_json accepts too, as the
//! same fields; the tests check that against serde_json.

/// One field of the scanned object, or of the object held by its `inner` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field<'a> {
    pub key: &'a str,
    /// The value's JSON text, without the whitespace around it (what a `RawValue` holds).
    pub raw: &'a str,
    /// The value is a string without any backslash: its text is exactly the bytes between
    /// its quotes.
    pub plain_str: bool,
    /// A field of the inner object, not of the scanned one.
    pub inner: bool,
    /// This is the field holding the inner object: its fields were reported (with
    /// `inner`) just before it.
    pub holds_inner: bool,
}

/// Nesting depth (of arrays and objects inside a field's value) past which the scanner
/// gives up and leaves the text to serde_json. It bounds this scanner's recursion;
/// messages are far shallower.
const MAX_DEPTH: u32 = 32;

/// Scans `text` as one JSON object (whitespace around it allowed), calling `field` for each
/// field in document order. If the object has a field named `inner` whose value is an
/// object, that object's fields are reported too, so that it need not be scanned again
/// (only the first such field, should the name appear twice). `None` means "not handled
/// here", as the module says; `field` may have been called before the point of failure.
pub(crate) fn object<'a>(
    text: &'a str,
    inner: Option<&str>,
    mut field: impl FnMut(Field<'a>),
) -> Option<()> {
    let mut s = Scanner {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    s.skip_whitespace();
    s.expect(b'{')?;
    s.fields(inner, false, &mut field)?;
    s.skip_whitespace();
    (s.pos == s.bytes.len()).then_some(())
}

#[derive(PartialEq, Eq)]
enum Scanned {
    PlainString,
    Other,
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    /// Skips whitespace and reads `close` when it comes next: an empty object or array.
    fn closes_at_once(&mut self, close: u8) -> bool {
        self.skip_whitespace();
        let empty = self.peek() == Some(close);
        if empty {
            self.pos += 1;
        }
        empty
    }

    /// The fields of an object whose `{` was just read, through its `}`. `in_inner` says
    /// which object they belong to, for [`Field::inner`].
    fn fields(
        &mut self,
        mut inner: Option<&str>,
        in_inner: bool,
        field: &mut impl FnMut(Field<'a>),
    ) -> Option<()> {
        if self.closes_at_once(b'}') {
            return Some(());
        }
        loop {
            self.expect(b'"')?;
            let key_start = self.pos;
            if self.string()? {
                // An escaped key needs unescaping (and its escapes a full check), which
                // serde_json does.
                return None;
            }
            let key = self.text.get(key_start..self.pos - 1)?;
            self.skip_whitespace();
            self.expect(b':')?;
            self.skip_whitespace();
            let value_start = self.pos;
            let holds_inner = inner == Some(key) && self.peek() == Some(b'{');
            let plain_str = if holds_inner {
                inner = None;
                self.pos += 1;
                self.fields(None, true, field)?;
                false
            } else {
                self.value(MAX_DEPTH)? == Scanned::PlainString
            };
            let raw = self.text.get(value_start..self.pos)?;
            field(Field {
                key,
                raw,
                plain_str,
                inner: in_inner,
                holds_inner,
            });
            self.skip_whitespace();
            match self.next()? {
                b',' => self.skip_whitespace(),
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn expect(&mut self, wanted: u8) -> Option<()> {
        (self.next()? == wanted).then_some(())
    }

    /// JSON whitespace: exactly space, tab, line feed and carriage return.
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// The rest of a string whose opening quote was just read; true if it had an escape.
    /// Escapes are checked for form only (`\u` takes four hex digits), as serde_json does
    /// when it skips a raw value: what a `\u` escape stands for is checked when the field
    /// is read. Always inlined: most strings are short keys, and a call's register saving
    /// cost about as much as the scan itself.
    #[inline(always)]
    fn string(&mut self) -> Option<bool> {
        let mut escaped = false;
        loop {
            self.skip_string_bytes();
            match self.next()? {
                b'"' => return Some(escaped),
                b'\\' => {
                    escaped = true;
                    match self.next()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.bytes.get(self.pos..self.pos + 4)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.pos += 4;
                        }
                        _ => return None,
                    }
                }
                // A control character, which JSON strings may not hold unescaped.
                _ => return None,
            }
        }
    }

    /// Advances over string bytes that need no attention: anything but `"`, `\` and the
    /// control characters. Eight bytes at a time while it can, as strings are most of a
    /// message.
    fn skip_string_bytes(&mut self) {
        const ONES: u64 = u64::from_le_bytes([0x01; 8]);
        const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
        // The high bit of a byte of the result is set where that byte of `word` is under
        // `n`, exactly for the lowest such byte (a borrow may also flag bytes above it).
        // Bytes >= 0x80 never match: `!word` clears their high bit.
        let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS;
        while let Some(chunk) = self.bytes.get(self.pos..self.pos + 8) {
            let mut word_bytes = [0u8; 8];
            word_bytes.copy_from_slice(chunk);
            // Little-endian, so that the lowest flagged bit is the first byte in the text.
            let word = u64::from_le_bytes(word_bytes);
            let special = below(word, 0x20)
                | below(word ^ (ONES * u64::from(b'"')), 1)
                | below(word ^ (ONES * u64::from(b'\\')), 1);
            if special != 0 {
                self.pos += (special.trailing_zeros() / 8) as usize;
                return;
            }
            self.pos += 8;
        }
        while let Some(b) = self.peek() {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            self.pos += 1;
        }
    }

    /// One value starting at the current byte (no whitespace before it).
    fn value(&mut self, depth: u32) -> Option<Scanned> {
        match self.next()? {
            b'"' => {
                return Some(if self.string()? {
                    Scanned::Other
                } else {
                    Scanned::PlainString
                })
            }
            b'{' => self.nested_object(depth.checked_sub(1)?)?,
            b'[' => self.array(depth.checked_sub(1)?)?,
            b't' => self.literal(b"rue")?,
            b'f' => self.literal(b"alse")?,
            b'n' => self.literal(b"ull")?,
            b'-' => {
                let first = self.next()?;
                self.number(first)?
            }
            first @ b'0'..=b'9' => self.number(first)?,
            _ => return None,
        }
        Some(Scanned::Other)
    }

    fn literal(&mut self, rest: &[u8]) -> Option<()> {
        let end = self.pos + rest.len();
        (self.bytes.get(self.pos..end)? == rest).then(|| self.pos = end)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, its first digit already read.
    fn number(&mut self, first: u8) -> Option<()> {
        match first {
            b'0' => {}
            b'1'..=b'9' => self.skip_digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digits()?;
        }
        // A digit right after a leading zero would make the number invalid ("01").
        (!matches!(self.peek(), Some(b'0'..=b'9'))).then_some(())
    }

    /// At least one digit.
    fn digits(&mut self) -> Option<()> {
        let start = self.pos;
        self.skip_digits();
        (self.pos > start).then_some(())
    }

    fn skip_digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    /// The rest of an object inside a value (not reported), its `{` already read.
    fn nested_object(&mut self, depth: u32) -> Option<()> {
        if self.closes_at_once(b'}') {
            return Some(());
        }
        loop {
            self.expect(b'"')?;
            self.string()?;
            self.skip_whitespace();
            self.expect(b':')?;
            self.skip_whitespace();
            self.value(depth)?;
            self.skip_whitespace();
            match self.next()? {
                b',' => self.skip_whitespace(),
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// The rest of an array, its `[` already read.
    fn array(&mut self, depth: u32) -> Option<()> {
        if self.closes_at_once(b']') {
            return Some(());
        }
        loop {
            self.value(depth)?;
            self.skip_whitespace();
            match self.next()? {
                b',' => self.skip_whitespace(),
                b']' => return Some(()),
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The fields the scanner reports, outer then inner, or `None`.
    type Scan = (Vec<(String, String)>, Vec<(String, String)>);

    fn fast(text: &str, inner: Option<&str>) -> Option<Scan> {
        let mut outer = Vec::new();
        let mut inner_fields = Vec::new();
        object(text, inner, |f| {
            if f.plain_str {
                assert!(f.raw.starts_with('"') && !f.raw.contains('\\'), "{text}");
            }
            let pair = (f.key.to_string(), f.raw.to_string());
            if f.inner {
                inner_fields.push(pair);
            } else {
                outer.push(pair);
            }
        })?;
        Some((outer, inner_fields))
    }

    /// What serde_json makes of the same text, and of the inner object's text.
    fn with_serde(text: &str, inner: Option<&str>) -> Option<Scan> {
        let pairs = |text: &str| {
            super::super::scan_with_serde(text, "").ok().map(|entries| {
                entries
                    .into_iter()
                    .map(|e| (e.key.into_owned(), e.raw.unwrap_or_default().to_string()))
                    .collect::<Vec<_>>()
            })
        };
        let outer = pairs(text)?;
        let inner_fields = outer
            .iter()
            .find(|(k, raw)| Some(k.as_str()) == inner && raw.starts_with('{'))
            .map_or(Some(Vec::new()), |(_, raw)| pairs(raw))?;
        Some((outer, inner_fields))
    }

    /// The one property that matters: what the scanner accepts, serde_json accepts as the
    /// same fields. Returns whether the scanner accepted.
    fn agrees(text: &str) -> bool {
        for inner in [None, Some("p")] {
            if let Some(scanned) = fast(text, inner) {
                assert_eq!(Some(scanned), with_serde(text, inner), "{text:?}");
            }
        }
        fast(text, None).is_some()
    }

    #[test]
    fn common_objects_are_scanned_like_serde_json_does() {
        for text in [
            r#"{}"#,
            " \t\r\n{ } \n",
            r#"{"a":1}"#,
            r#"{"a" : "x" , "b":[1,2,{"c":null}],"d":{"e":true,"f":false}}"#,
            r#"{"p":{"q":"v","r":{"s":[]}},"t":"u"}"#,
            r#"{"p":{},"p2":{"q":1}}"#,
            r#"{"n":[0,-0,1.5,-2e10,3E+2,4e-3,0.0e0,123456789012345678901234567890]}"#,
            r#"{"s":"esc \" \\ \/ \b \f \n \r \t \u00e9 \uD83D\uDE00 \uFFFF"}"#,
            r#"{"s":"lone surrogate \uD800 is checked when read, not here"}"#,
            "{\"s\":\"ünïcödé 😀 \u{7f}\",\"ü\":1}",
            r#"{"a":"exactly8","b":"1234567","c":"123456789abcdefgh"}"#,
            r#"{"":""}"#,
            r#"{"a":1,"a":2}"#,
        ] {
            assert!(agrees(text), "the scanner should take {text:?}");
        }
    }

    #[test]
    fn invalid_json_is_refused() {
        for text in [
            "",
            " ",
            "{",
            "}",
            "[]",
            "\"a\"",
            "null",
            r#"{"a":1,}"#,
            r#"{,"a":1}"#,
            r#"{"a" 1}"#,
            r#"{"a":}"#,
            r#"{a:1}"#,
            r#"{'a':1}"#,
            r#"{"a":1}x"#,
            r#"{"a":1}{}"#,
            r#"{"a":1"b":2}"#,
            r#"{"a":01}"#,
            r#"{"a":-}"#,
            r#"{"a":-a}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":1e+}"#,
            r#"{"a":+1}"#,
            r#"{"a":0x10}"#,
            r#"{"a":NaN}"#,
            r#"{"a":tru}"#,
            r#"{"a":nulll}"#,
            r#"{"a":True}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[,1]}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":{"b"}}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12G4"}"#,
            r#"{"a":"\u123"}"#,
            r#"{"a":"\"}"#,
            r#"{"a":"unterminated}"#,
            "{\"a\":\"tab\tinside\"}",
            "{\"a\":\"nul\u{0}inside\"}",
            "{\"a\":\"line\nbreak\"}",
            "{\"a\":1}\u{a0}",
            "\u{feff}{\"a\":1}",
            "{\"a\"\u{a0}:1}",
            "{\"a\":1}\u{0}",
            r#"{"p":{"q":1,}}"#,
            r#"{"p":{"q"}}"#,
        ] {
            assert!(fast(text, Some("p")).is_none(), "{text:?}");
            assert!(with_serde(text, None).is_none(), "{text:?}");
        }
    }

    #[test]
    fn uncommon_valid_objects_are_left_to_serde_json() {
        let deep = format!(r#"{{"a":{}{}}}"#, "[".repeat(40), "]".repeat(40));
        let escaped_key = r#"{"\u0061":1}"#.to_string();
        let escaped_inner_key = r#"{"p":{"\u0061":1}}"#.to_string();
        for text in [&deep, &escaped_key] {
            assert!(fast(text, None).is_none(), "{text}");
            assert!(with_serde(text, None).is_some(), "{text}");
        }
        assert!(fast(&escaped_inner_key, Some("p")).is_none());
        assert!(fast(&escaped_inner_key, None).is_some());
    }

    /// A JSON value as text, with optional whitespace around its parts; keys are plain.
    fn json_value() -> impl Strategy<Value = String> {
        let ws = || prop::sample::select(vec!["", "", "", " ", "\n", "\t ", "\r\n"]);
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,2})?",
            "\"([a-z0-9 é😀\"\\\\/]|\\\\[\"\\\\/bfnrt]|\\\\u[0-9a-fA-F]{4}){0,12}\""
                .prop_filter("a valid string", |s| {
                    serde_json::from_str::<&serde_json::value::RawValue>(s).is_ok()
                }),
        ];
        leaf.prop_recursive(4, 24, 5, move |item| {
            prop_oneof![
                prop::collection::vec((ws(), item.clone(), ws()), 0..5).prop_map(|items| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(a, v, b)| format!("{a}{v}{b}"))
                        .collect();
                    format!("[{}]", items.join(","))
                }),
                prop::collection::vec(("[a-z]{0,3}", ws(), item, ws()), 0..5).prop_map(|fields| {
                    let fields: Vec<String> = fields
                        .into_iter()
                        .map(|(k, a, v, b)| format!("\"{k}\"{a}:{b}{v}"))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        })
    }

    /// A JSON object as text, sometimes with an object under the key `p`.
    fn json_object() -> impl Strategy<Value = String> {
        (
            json_value().prop_filter("an object", |v| v.starts_with('{')),
            json_value().prop_filter("an object", |v| v.starts_with('{')),
            any::<bool>(),
        )
            .prop_map(|(outer, inner, with_inner)| {
                if with_inner && outer.len() > 2 {
                    format!("{{\"p\":{inner},{}", &outer[1..])
                } else {
                    outer
                }
            })
    }

    /// One small edit: a character removed, or one of JSON's own inserted.
    fn mutated(text: &str, at: prop::sample::Index, insert: Option<char>) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        let i = at.index(chars.len() + 1);
        match insert {
            Some(c) => chars.insert(i, c),
            None if i < chars.len() => {
                chars.remove(i);
            }
            None => {}
        }
        chars.into_iter().collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn valid_objects_are_scanned_like_serde_json_does(text in json_object()) {
            prop_assert!(agrees(&text), "the scanner should take {:?}", text);
        }

        #[test]
        fn edited_objects_are_never_taken_when_serde_json_refuses(
            text in json_object(),
            edits in prop::collection::vec(
                (any::<prop::sample::Index>(), prop::option::of(prop::sample::select(vec![
                    '{', '}', '[', ']', '"', '\\', ',', ':', ' ', '\n', '\u{1}', '0', '-', '.',
                    'e', '+', 'u', 'n', 't', 'f', 'a', 'é',
                ]))),
                1..4,
            ),
        ) {
            let edited = edits
                .into_iter()
                .fold(text, |t, (at, insert)| mutated(&t, at, insert));
            agrees(&edited);
        }
    }
}
