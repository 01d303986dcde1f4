//! Finds the byte span of each element of a top-level JSON array as bytes arrive, so that a listing
//! of any size is decoded one job at a time and never held whole in memory. It only tracks
//! strings, escapes and nesting depth; the elements themselves are checked by serde.

use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Before the opening `[`.
    Start,
    /// After `[`: an element or `]`.
    FirstItemOrEnd,
    /// After `,`: an element.
    Item,
    /// Inside an element that began at `start`.
    InItem {
        start: usize,
        kind: ItemKind,
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
    /// After an element: `,` or `]`.
    CommaOrEnd,
    /// After the closing `]`: only whitespace may follow.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ItemKind {
    Container,
    String,
    Bare,
}

#[derive(Debug)]
pub(crate) struct ArraySplitter {
    buf: Vec<u8>,
    /// Next byte of `buf` to scan.
    pos: usize,
    /// Offset of `buf[0]` in the whole body, for error messages.
    offset: u64,
    state: State,
    items: usize,
}

impl ArraySplitter {
    pub(crate) fn new() -> Self {
        ArraySplitter {
            buf: Vec::new(),
            pos: 0,
            offset: 0,
            state: State::Start,
            items: 0,
        }
    }

    /// Elements found so far.
    pub(crate) fn items(&self) -> usize {
        self.items
    }

    /// Bytes held: the element being read, and what arrived after it.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends the next chunk of the body, first dropping the bytes already handed out.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        let keep_from = match self.state {
            State::InItem { start, .. } => start,
            _ => self.pos,
        };
        if keep_from > 0 {
            self.buf.drain(..keep_from);
            self.offset += keep_from as u64;
            self.pos -= keep_from;
            if let State::InItem { start, .. } = &mut self.state {
                *start -= keep_from;
            }
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete element, if the bytes pushed so far hold one.
    pub(crate) fn next_item(&mut self) -> Result<Option<&[u8]>, String> {
        match self.scan()? {
            Some(span) => Ok(Some(&self.buf[span])),
            None => Ok(None),
        }
    }

    /// Checks, once the body has ended, that the array was complete.
    pub(crate) fn finish(&self) -> Result<(), String> {
        match self.state {
            State::Done => Ok(()),
            State::Start => Err("the answer was empty instead of a JSON array of jobs".into()),
            _ => Err(format!(
                "the answer ended before the JSON array was closed, after {} complete item(s): \
                 the listing is truncated (connection cut or server aborted)",
                self.items
            )),
        }
    }

    fn scan(&mut self) -> Result<Option<Range<usize>>, String> {
        while self.pos < self.buf.len() {
            let byte = self.buf[self.pos];
            match self.state {
                State::InItem { .. } => {
                    if let Some(span) = self.scan_item() {
                        return Ok(Some(span));
                    }
                    continue;
                }
                _ if byte.is_ascii_whitespace() => {}
                State::Start => match byte {
                    b'[' => self.state = State::FirstItemOrEnd,
                    b'<' => {
                        return Err("got an HTML page instead of a JSON array of jobs (is \
                                    `api.base_url` the Jobs API, not a proxy or login page?)"
                            .into());
                    }
                    _ => return Err(self.unexpected("a JSON array of jobs")),
                },
                State::FirstItemOrEnd if byte == b']' => self.state = State::Done,
                State::FirstItemOrEnd | State::Item => {
                    if matches!(byte, b',' | b']' | b'}' | b':') {
                        return Err(self.unexpected("an array item"));
                    }
                    let kind = match byte {
                        b'{' | b'[' => ItemKind::Container,
                        b'"' => ItemKind::String,
                        _ => ItemKind::Bare,
                    };
                    self.state = State::InItem {
                        start: self.pos,
                        kind,
                        depth: u32::from(kind == ItemKind::Container),
                        in_string: kind == ItemKind::String,
                        escaped: false,
                    };
                    // The opening byte is consumed here; a bare scalar re-reads it.
                    if kind == ItemKind::Bare {
                        continue;
                    }
                }
                State::CommaOrEnd => match byte {
                    b',' => self.state = State::Item,
                    b']' => self.state = State::Done,
                    _ => return Err(self.unexpected("`,` or `]` after an array item")),
                },
                State::Done => return Err(self.unexpected("nothing after the closing `]`")),
            }
            self.pos += 1;
        }
        Ok(None)
    }

    /// Advances through the current element; returns its span once it is complete.
    fn scan_item(&mut self) -> Option<Range<usize>> {
        let State::InItem {
            start,
            kind,
            mut depth,
            mut in_string,
            mut escaped,
        } = self.state
        else {
            return None;
        };
        let mut end = None;
        while self.pos < self.buf.len() {
            let byte = self.buf[self.pos];
            if in_string {
                if escaped {
                    escaped = false;
                } else if byte == b'\\' {
                    escaped = true;
                } else if byte == b'"' {
                    in_string = false;
                    if kind == ItemKind::String {
                        end = Some(self.pos + 1);
                    }
                }
            } else if kind == ItemKind::Bare {
                if byte.is_ascii_whitespace() || matches!(byte, b',' | b']') {
                    // The delimiter belongs to the array; leave it for `scan`.
                    self.state = State::CommaOrEnd;
                    self.items += 1;
                    return Some(start..self.pos);
                }
            } else {
                match byte {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(self.pos + 1);
                        }
                    }
                    _ => {}
                }
            }
            self.pos += 1;
            if let Some(end) = end {
                self.state = State::CommaOrEnd;
                self.items += 1;
                return Some(start..end);
            }
        }
        self.state = State::InItem {
            start,
            kind,
            depth,
            in_string,
            escaped,
        };
        None
    }

    fn unexpected(&self, expected: &str) -> String {
        let at = self.offset + self.pos as u64;
        let snippet: String = String::from_utf8_lossy(&self.buf[self.pos..])
            .chars()
            .take(40)
            .collect();
        format!(
            "malformed JSON at byte {at} (after {} item(s)): expected {expected}, found `{snippet}`",
            self.items
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in chunks of `size` bytes and collects every element and the final verdict.
    fn split(body: &str, size: usize) -> Result<Vec<String>, String> {
        let mut splitter = ArraySplitter::new();
        let mut items = Vec::new();
        for chunk in body.as_bytes().chunks(size.max(1)) {
            splitter.push(chunk);
            while let Some(item) = splitter.next_item()? {
                items.push(String::from_utf8(item.to_vec()).unwrap());
            }
        }
        splitter.finish()?;
        Ok(items)
    }

    const BODY: &str = r#" [ {"id": 1, "name": "a \"quoted\" ] } , name", "data": {"k": [1, {"x": "}"}]}},
        {"id":2,"s":"back\\slash\\"} ,3, "str,]", true , null,[1,[2]],-1.5e3 ]  "#;

    #[test]
    fn finds_every_element_whatever_the_chunking() {
        let expected = vec![
            r#"{"id": 1, "name": "a \"quoted\" ] } , name", "data": {"k": [1, {"x": "}"}]}}"#,
            r#"{"id":2,"s":"back\\slash\\"}"#,
            "3",
            r#""str,]""#,
            "true",
            "null",
            "[1,[2]]",
            "-1.5e3",
        ];
        for size in [1, 2, 3, 5, 7, 16, 64, 10_000] {
            assert_eq!(split(BODY, size).unwrap(), expected, "chunk size {size}");
        }
    }

    #[test]
    fn accepts_an_empty_array() {
        assert_eq!(split(" [ ] \n", 1).unwrap(), Vec::<String>::new());
        assert_eq!(split("[]", 10).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn reports_a_truncated_array() {
        for body in [r#"[{"id":1},{"id":2"#, r#"[{"id":1},"#, "[", r#"[{"id":1}"#] {
            for size in [1, 4, 100] {
                let err = split(body, size).unwrap_err();
                assert!(err.contains("truncated"), "{body} / {size}: {err}");
            }
        }
        let err = split(r#"[{"id":1},{"id":2"#, 3).unwrap_err();
        assert!(err.contains("after 1 complete item"), "{err}");
    }

    #[test]
    fn reports_an_html_page_an_object_and_an_empty_body() {
        let err = split("<!DOCTYPE html><html><body>502</body></html>", 4).unwrap_err();
        assert!(err.contains("HTML page"), "{err}");
        let err = split(r#"{"message": "campaign is required"}"#, 4).unwrap_err();
        assert!(err.contains("expected a JSON array"), "{err}");
        assert!(split("  ", 4).unwrap_err().contains("empty"));
    }

    #[test]
    fn reports_malformed_separators() {
        for body in ["[1 2]", "[1,,2]", "[,1]", "[1,]", r#"[{"a":1}}]"#, "[1] x"] {
            let err = split(body, 1).unwrap_err();
            assert!(err.contains("malformed JSON at byte"), "{body}: {err}");
        }
    }

    #[test]
    fn keeps_memory_bounded_by_the_largest_element() {
        let mut splitter = ArraySplitter::new();
        splitter.push(b"[");
        for _ in 0..10_000 {
            splitter.push(br#"{"id": 1, "name": "somebody"},"#);
            while splitter.next_item().unwrap().is_some() {}
        }
        assert!(splitter.buf.len() < 100, "{}", splitter.buf.len());
        assert_eq!(splitter.items(), 10_000);
    }
}
