//! The chunked transfer coding (RFC 9112 §7.1), checked as its bytes stream through.
//!
//! The proxy passes a chunked body on as it came, byte for byte, so backend and client see the
//! same framing; this decoder only finds where the body ends and refuses what two parsers could
//! read differently: sizes that overflow, bare LF or CR, control bytes in extensions and
//! trailers, lines without end. Nothing is buffered: a call looks at each byte of a size line
//! or trailer once and skips over chunk data in one step.

use super::Refusal;

/// Longest chunk-size line (size and extensions) accepted.
pub const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk.
pub const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    Size,
    /// Whitespace after the size, which only a `;` may follow.
    SizeBws,
    /// Extensions, up to CR.
    Ext,
    /// CR of a size line seen; LF must follow.
    SizeLf,
    /// Inside a chunk's data.
    Data,
    /// After a chunk's data: CR, then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line or of the final blank line.
    LineStart,
    /// A trailer field's name, up to its colon.
    TrailerName,
    /// A trailer field's value, up to CR.
    Trailer,
    TrailerLf,
    /// CR of the final blank line seen; LF ends the body.
    EndLf,
    Done,
}

/// Where a chunked body ends, found incrementally.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    /// The chunk size being read, then what is left of the chunk's data.
    size: u64,
    digits: u32,
    line: usize,
    trailers: usize,
    /// Payload bytes seen so far (chunk data, not framing).
    payload: u64,
}

/// What one call to [`Decoder::advance`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    /// Bytes of the input that belong to this body: all of it, or up to the body's end.
    pub consumed: usize,
    /// Whether the body ended within them.
    pub done: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
            payload: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Payload bytes (chunk data) seen so far.
    pub fn payload(&self) -> u64 {
        self.payload
    }

    /// Walk `input`, the next bytes of the body.
    pub fn advance(&mut self, input: &[u8]) -> Result<Advance, Refusal> {
        self.advance_with(input, |_| {})
    }

    /// As [`Decoder::advance`], and hands each run of chunk data in `input` to `data` (as a
    /// range of `input`), for a recipient that needs the payload without its framing.
    pub fn advance_with(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<Advance, Refusal> {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            if self.state == State::Data {
                let take = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                data(i..i + take);
                i += take;
                self.size -= take as u64;
                self.payload += take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.byte(input[i])?;
            i += 1;
        }
        Ok(Advance {
            consumed: i,
            done: self.state == State::Done,
        })
    }

    fn byte(&mut self, b: u8) -> Result<(), Refusal> {
        const fn bad(why: &'static str) -> Result<(), Refusal> {
            Err(Refusal::bad(why))
        }
        if matches!(self.state, State::Size | State::SizeBws | State::Ext) {
            self.line += 1;
            if self.line > MAX_LINE {
                return bad("chunk size line too long");
            }
        }
        if matches!(
            self.state,
            State::LineStart
                | State::TrailerName
                | State::Trailer
                | State::TrailerLf
                | State::EndLf
        ) {
            self.trailers += 1;
            if self.trailers > MAX_TRAILERS {
                return bad("chunked trailers too large");
            }
        }
        self.state = match (self.state, b) {
            (State::Size, b) if b.is_ascii_hexdigit() => {
                if self.digits == 16 {
                    return bad("chunk size overflows");
                }
                self.digits += 1;
                self.size = self.size << 4 | u64::from(hex(b));
                State::Size
            }
            (State::Size, _) if self.digits == 0 => return bad("chunk size missing"),
            (State::Size | State::SizeBws, b' ' | b'\t') => State::SizeBws,
            (State::Size | State::SizeBws, b';') => State::Ext,
            (State::Size | State::Ext, b'\r') => State::SizeLf,
            (State::Ext, b) if is_text(b) => State::Ext,
            (State::Size | State::SizeBws | State::Ext, _) => {
                return bad("invalid byte in chunk size line");
            }
            (State::SizeLf, b'\n') => {
                self.line = 0;
                self.digits = 0;
                if self.size == 0 {
                    State::LineStart
                } else {
                    State::Data
                }
            }
            (State::SizeLf, _) => return bad("chunk size line not ended by CRLF"),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size,
            (State::DataCr | State::DataLf, _) => return bad("chunk data not followed by CRLF"),
            (State::LineStart, b'\r') => State::EndLf,
            (State::LineStart | State::TrailerName, b) if is_tchar(b) => State::TrailerName,
            (State::TrailerName, b':') => State::Trailer,
            (State::Trailer, b) if is_text(b) => State::Trailer,
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::TrailerLf, b'\n') => State::LineStart,
            (State::EndLf, b'\n') => State::Done,
            (
                State::LineStart
                | State::TrailerName
                | State::Trailer
                | State::TrailerLf
                | State::EndLf,
                _,
            ) => {
                return bad("invalid byte in chunked trailers");
            }
            (State::Data | State::Done, _) => unreachable!("handled by advance"),
        };
        Ok(())
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Token bytes (RFC 9110 §5.6.2), as a field name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Field-value bytes: visible ASCII, space, tab and obs-text; no CR, LF, NUL or other controls.
fn is_text(b: u8) -> bool {
    b == b'\t' || b == b' ' || b.is_ascii_graphic() || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `body` in pieces of `step` bytes; the consumed length and the payload size.
    fn walk(body: &[u8], step: usize) -> Result<(usize, u64), Refusal> {
        let mut d = Decoder::new();
        let mut at = 0;
        while at < body.len() {
            let end = (at + step).min(body.len());
            let a = d.advance(&body[at..end])?;
            at += a.consumed;
            if a.done {
                return Ok((at, d.payload()));
            }
        }
        Err(Refusal::bad("incomplete"))
    }

    #[test]
    fn a_body_ends_after_its_last_chunk_and_trailers_in_any_split() {
        let body = b"5 ;a=b\r\nhello\r\n1a;name=\"v\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            assert_eq!(walk(body, step), Ok((body.len() - 4, 31)), "step {step}");
        }
    }

    #[test]
    fn what_two_parsers_could_read_differently_is_refused() {
        for bad in [
            &b"fffffffffffffffff\r\n"[..],
            b"\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
            b"0\r\nx: a\nb\r\n\r\n",
            b"0\r\n\n",
            b"-1\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5 zz\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"0\r\n folded: x\r\n\r\n",
            b"0\r\n: x\r\n\r\n",
        ] {
            assert_eq!(
                walk(bad, 1).map_err(|r| r.status),
                Err(400),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Sixteen hex digits fit in a u64 (and are then a body nobody sends in full).
        let mut d = Decoder::new();
        assert!(d.advance(b"ffffffffffffffff\r\nabc").is_ok());
        assert_eq!(d.payload(), 3);
    }

    #[test]
    fn endless_lines_are_cut_off() {
        let mut line = b"5;".to_vec();
        line.resize(MAX_LINE + 10, b'x');
        assert!(Decoder::new().advance(&line).is_err());
        let mut trailers = b"0\r\n".to_vec();
        trailers.resize(MAX_TRAILERS + 10, b'y');
        assert!(Decoder::new().advance(&trailers).is_err());
    }
}
