//! Where a message body stands as its bytes pass through: how many of the next bytes belong to
//! it, and whether it has ended. Framing is checked on the way (chunk sizes, line endings); the
//! bytes themselves are passed on as they came.

use crate::http1::chunked::Decoder;
use crate::http1::{Framing, Refusal};

#[derive(Debug, Clone)]
pub(crate) enum Progress {
    /// This many bytes still to come.
    Length(u64),
    Chunked(Decoder),
    /// Everything until the sender closes (a response without framing).
    UntilClose,
    Done,
}

impl Progress {
    pub(crate) fn new(framing: Framing) -> Progress {
        match framing {
            Framing::Empty | Framing::Length(0) => Progress::Done,
            Framing::Length(n) => Progress::Length(n),
            Framing::Chunked => Progress::Chunked(Decoder::new()),
            Framing::UntilClose => Progress::UntilClose,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Progress::Done)
    }

    /// How many bytes the next read may take without reading past the body (chunked bodies
    /// cannot say; what they over-read is handed back by [`Progress::take`]).
    pub(crate) fn want(&self, room: usize) -> usize {
        match self {
            Progress::Length(n) => room.min(usize::try_from(*n).unwrap_or(usize::MAX)),
            Progress::Done => 0,
            _ => room,
        }
    }

    /// Of `input`, the next bytes, how many belong to the body. `data` gets the ranges of
    /// payload among them (chunk data without its framing), for a recipient that cannot take
    /// chunked framing.
    pub(crate) fn take_with(
        &mut self,
        input: &[u8],
        data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<usize, Refusal> {
        let mut data = data;
        let taken = match self {
            Progress::Length(n) => {
                let take = input.len().min(usize::try_from(*n).unwrap_or(usize::MAX));
                *n -= take as u64;
                if take > 0 {
                    data(0..take);
                }
                if *n == 0 {
                    *self = Progress::Done;
                }
                take
            }
            Progress::Chunked(decoder) => {
                let step = decoder.advance_with(input, data)?;
                if step.done {
                    *self = Progress::Done;
                }
                step.consumed
            }
            Progress::UntilClose => {
                if !input.is_empty() {
                    data(0..input.len());
                }
                input.len()
            }
            Progress::Done => 0,
        };
        Ok(taken)
    }

    pub(crate) fn take(&mut self, input: &[u8]) -> Result<usize, Refusal> {
        self.take_with(input, |_| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_body_takes_exactly_its_bytes() {
        let mut p = Progress::new(Framing::Length(5));
        assert_eq!(p.want(100), 5);
        assert_eq!(p.take(b"abc").unwrap(), 3);
        assert!(!p.is_done());
        assert_eq!(p.take(b"deGET /").unwrap(), 2);
        assert!(p.is_done());
        assert_eq!(p.take(b"more").unwrap(), 0);
    }

    #[test]
    fn a_chunked_body_ends_at_its_last_chunk_and_yields_its_payload() {
        let mut p = Progress::new(Framing::Chunked);
        let input = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nGET / HTTP/1.1";
        let mut payload = Vec::new();
        let n = p
            .take_with(input, |r| payload.extend_from_slice(&input[r]))
            .unwrap();
        assert_eq!(&input[n..], b"GET / HTTP/1.1");
        assert_eq!(payload, b"abcde");
        assert!(p.is_done());
        assert!(Progress::new(Framing::Chunked).take(b"zz\r\n").is_err());
    }
}
