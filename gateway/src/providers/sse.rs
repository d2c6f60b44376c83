//! A small Server-Sent Events reader: bytes in as they arrive, complete `data` payloads out.
//! Handles events split across reads, `\r\n` line ends and multi-line `data:` fields.

#[derive(Default)]
pub struct SseReader {
    buf: Vec<u8>,
}

/// Longest event accepted; a provider sending more without a blank line is broken.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
#[error("malformed event stream: {0}")]
pub struct SseError(pub &'static str);

impl SseReader {
    /// Feed bytes; returns the `data` of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, SseError> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some((end, sep)) = find_blank_line(&self.buf) {
            let raw: Vec<u8> = self.buf.drain(..end + sep).collect();
            let text = std::str::from_utf8(&raw[..end]).map_err(|_| SseError("not UTF-8"))?;
            let mut data: Option<String> = None;
            for line in text.lines() {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if let Some(v) = line.strip_prefix("data:") {
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    match &mut data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(v);
                        }
                        None => data = Some(v.to_string()),
                    }
                }
            }
            if let Some(d) = data {
                events.push(d);
            }
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(SseError("event too large"));
        }
        Ok(events)
    }

    /// True if bytes of an unfinished event are waiting.
    pub fn has_partial(&self) -> bool {
        self.buf.iter().any(|b| !b.is_ascii_whitespace())
    }
}

fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' && buf[i + 1] == b'\n' {
            return Some((i, 2));
        }
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some((i, 4));
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads() {
        let mut r = SseReader::default();
        assert!(r.push(b"data: {\"a\"").unwrap().is_empty());
        assert_eq!(
            r.push(b":1}\n\ndata: [DONE]\n\n").unwrap(),
            vec!["{\"a\":1}", "[DONE]"]
        );
        assert!(!r.has_partial());
    }

    #[test]
    fn crlf_and_multiline_data() {
        let mut r = SseReader::default();
        let ev = r
            .push(b"event: x\r\ndata: a\r\ndata: b\r\n\r\n: comment\n\n")
            .unwrap();
        assert_eq!(ev, vec!["a\nb"]);
    }
}
