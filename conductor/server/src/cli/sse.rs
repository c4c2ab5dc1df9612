//! A reader of server-sent events (the WHATWG `text/event-stream` format):
//! bytes in, whole events out. Lines end with LF, CRLF or CR; `:` starts a
//! comment; `data` lines are joined with newlines; `id` persists from
//! event to event, as a browser's last event id does.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SseEvent {
    /// The last event id seen so far (this event's, or an earlier one's).
    pub(super) id: Option<String>,
    /// `message` unless the event named its kind.
    pub(super) event: String,
    pub(super) data: String,
}

/// Longest line or event accepted.
pub(super) const MAX_EVENT: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("an event of the stream is over {MAX_EVENT} bytes")]
pub(super) struct TooLarge;

#[derive(Default)]
pub(super) struct SseParser {
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no line end.
    scanned: usize,
    /// The stream's first bytes are checked for a byte order mark.
    started: bool,
    last_id: Option<String>,
    event: String,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feed the next bytes; returns the events they complete.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, TooLarge> {
        self.buf.extend_from_slice(bytes);
        if !self.started {
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            if self.buf.len() < BOM.len() && BOM.starts_with(&self.buf) {
                return Ok(Vec::new());
            }
            if self.buf.starts_with(BOM) {
                self.buf.drain(..BOM.len());
            }
            self.started = true;
        }
        let mut out = Vec::new();
        // `start`: the line being read; `from`: where its end is looked for
        // (what earlier calls scanned holds no line end).
        let (mut start, mut from) = (0, self.scanned);
        let mut scanned = self.buf.len();
        while let Some(i) = self.buf[from..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
        {
            let end = from + i;
            let next = match self.buf[end] {
                b'\r' if end + 1 == self.buf.len() => {
                    scanned = end; // a LF may follow: look at it again
                    break;
                }
                b'\r' if self.buf[end + 1] == b'\n' => end + 2,
                _ => end + 1,
            };
            let line = String::from_utf8_lossy(&self.buf[start..end]).into_owned();
            (start, from) = (next, next);
            if let Some(ev) = self.line(&line)? {
                out.push(ev);
            }
        }
        self.scanned = scanned.max(start) - start;
        self.buf.drain(..start);
        if self.buf.len() > MAX_EVENT {
            return Err(TooLarge);
        }
        Ok(out)
    }

    fn line(&mut self, line: &str) -> Result<Option<SseEvent>, TooLarge> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.data.len() + value.len() > MAX_EVENT {
                    return Err(TooLarge);
                }
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            _ => {} // retry, and fields this reader does not know
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = std::mem::take(&mut self.event);
        let mut data = std::mem::take(&mut self.data);
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        data.pop(); // the newline after the last data line
        Some(SseEvent {
            id: self.last_id.clone(),
            event: if event.is_empty() {
                "message".to_string()
            } else {
                event
            },
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut SseParser, chunks: &[&[u8]]) -> Vec<SseEvent> {
        chunks
            .iter()
            .flat_map(|c| p.feed(c).expect("feed"))
            .collect()
    }

    fn ev(id: Option<&str>, event: &str, data: &str) -> SseEvent {
        SseEvent {
            id: id.map(str::to_string),
            event: event.to_string(),
            data: data.to_string(),
        }
    }

    #[test]
    fn events_comments_and_ids() {
        let mut p = SseParser::default();
        let got = all(
            &mut p,
            &[b": keep-alive\n\nid: 7\nevent: step_finished\ndata: {\"seq\":7}\n\n"],
        );
        assert_eq!(got, vec![ev(Some("7"), "step_finished", "{\"seq\":7}")]);
        // The id persists; no event name is `message`; data lines join.
        let got = all(&mut p, &[b"data:a\ndata: b\n\nevent: end\ndata\n\n"]);
        assert_eq!(
            got,
            vec![ev(Some("7"), "message", "a\nb"), ev(Some("7"), "end", "")]
        );
    }

    #[test]
    fn any_split_and_any_line_ending_give_the_same_events() {
        let text =
            "\u{feff}id: 1\r\nevent: wake\r\ndata: x\r\n\r\nid: 2\rdata: y\r\rid: 3\ndata: z\n\n";
        let want = vec![
            ev(Some("1"), "wake", "x"),
            ev(Some("2"), "message", "y"),
            ev(Some("3"), "message", "z"),
        ];
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            for cut2 in cut..=bytes.len() {
                let mut p = SseParser::default();
                let got = all(&mut p, &[&bytes[..cut], &bytes[cut..cut2], &bytes[cut2..]]);
                assert_eq!(got, want, "cut at {cut} and {cut2}");
            }
        }
    }

    #[test]
    fn an_event_without_data_is_not_dispatched_and_an_unfinished_one_waits() {
        let mut p = SseParser::default();
        assert!(all(&mut p, &[b"event: end\n\nid: 4\n\ndata: half"]).is_empty());
        assert_eq!(
            all(&mut p, &[b"\n\n"]),
            vec![ev(Some("4"), "message", "half")]
        );
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut p = SseParser::default();
        let chunk = vec![b'a'; 1024 * 1024];
        let mut refused = false;
        for _ in 0..=MAX_EVENT / chunk.len() {
            if p.feed(&chunk).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }
}
