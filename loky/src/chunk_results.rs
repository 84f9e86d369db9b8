//! A chunk's results as its taker iterates them: decoded one at a time,
//! from the encoded outcomes the workers sent, as they are taken.
//!
//! A result is a `Result<R, Error>`, and an `Error` is large: decoding a
//! whole chunk into a vector first wrote every result out and read it back,
//! most of the taking thread's time in a `map` of short tasks. So a chunk's
//! future holds the encoded outcomes, checked and counted when the future
//! completes; each result is decoded where the iterator yields it, in the
//! thread that takes it.

use crate::error::Error;
use crate::job::{self, Piece};
use crate::message::Message;
use loky_worker::protocol::{self, ChunkItem, Failure, Stage};
use std::marker::PhantomData;

/// The results of a chunk's elements, in element order.
pub(crate) struct ChunkResults<R> {
    task: &'static str,
    /// Outcomes not reached yet, in order.
    pieces: std::vec::IntoIter<Piece>,
    /// The piece being read: its worker, its bytes, and where the next
    /// item starts.
    reading: Option<(u32, Vec<u8>, usize)>,
    /// Results known already (a chunk of one, or results gathered).
    ready: std::vec::IntoIter<Result<R, Error>>,
    remaining: usize,
    result: PhantomData<fn() -> R>,
}

impl<R: Message> ChunkResults<R> {
    /// Results known already.
    pub(crate) fn ready(results: Vec<Result<R, Error>>) -> Self {
        ChunkResults {
            task: "",
            pieces: Vec::new().into_iter(),
            reading: None,
            remaining: results.len(),
            ready: results.into_iter(),
            result: PhantomData,
        }
    }

    /// The results in `pieces`, counted and checked here: an item that
    /// cannot be read fails the whole chunk, as a `Deserialize` error.
    pub(crate) fn encoded(task: &'static str, pieces: Vec<Piece>) -> Result<Self, Error> {
        let mut remaining = 0;
        for piece in &pieces {
            match piece {
                Piece::Failed(_) => remaining += 1,
                Piece::Items { pid, skip, bytes } => {
                    let mut count = 0usize;
                    let mut rest = &bytes[..];
                    while let Some(item) = protocol::next_item(rest) {
                        let used = item
                            .map_err(|message| {
                                let stage = Stage::DecodeResult;
                                Error::from_failure(
                                    task,
                                    Some(*pid),
                                    Failure::Serde { stage, message },
                                )
                            })?
                            .1;
                        rest = &rest[used..];
                        count += 1;
                    }
                    remaining += count.saturating_sub(*skip);
                }
            }
        }
        Ok(ChunkResults {
            task,
            pieces: pieces.into_iter(),
            reading: None,
            ready: Vec::new().into_iter(),
            remaining,
            result: PhantomData,
        })
    }

    /// The next item of the piece being read, if any is left there.
    fn next_read(&mut self) -> Option<Result<R, Error>> {
        let (pid, bytes, at) = self.reading.as_mut()?;
        // Checked when the chunk completed: every item reads.
        let Some(Ok((item, used))) = protocol::next_item(&bytes[*at..]) else {
            self.reading = None;
            return None;
        };
        *at += used;
        Some(match item {
            ChunkItem::Returned(bytes) => job::decode_bytes(self.task, *pid, &bytes),
            ChunkItem::Failed(failure) => Err(Error::from_failure(self.task, Some(*pid), failure)),
        })
    }
}

impl<R: Message> Iterator for ChunkResults<R> {
    type Item = Result<R, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.ready.next().or_else(|| {
            loop {
                if let Some(result) = self.next_read() {
                    break Some(result);
                }
                match self.pieces.next()? {
                    Piece::Failed(error) => break Some(Err(error)),
                    Piece::Items { pid, skip, bytes } => {
                        self.reading = Some((pid, bytes, 0));
                        // Duplicates of outcomes already taken.
                        for _ in 0..skip {
                            if self.next_read().is_none() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        if next.is_some() {
            self.remaining -= 1;
        }
        next
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<R: Message> ExactSizeIterator for ChunkResults<R> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// `values` as a worker lays them out: one returned item each, then a
    /// failed one for `None`.
    fn items(values: &[Option<u64>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for value in values {
            bytes = match value {
                Some(value) => {
                    let mut result = Vec::new();
                    value.encode_into(&mut result).unwrap();
                    let mut item = Vec::new();
                    protocol::encode_returned_item(&result, &mut item);
                    bytes.extend(item);
                    bytes
                }
                None => {
                    protocol::encode_item(&ChunkItem::Failed(Failure::UnknownTask), bytes).unwrap()
                }
            };
        }
        bytes
    }

    #[test]
    fn results_come_in_element_order_past_duplicates_and_failures() {
        let pieces = vec![
            Piece::Items {
                pid: 7,
                skip: 0,
                bytes: items(&[Some(1), None]),
            },
            Piece::Failed(Error::ShutDown),
            // A worker that died after sending these sent the first again.
            Piece::Items {
                pid: 8,
                skip: 1,
                bytes: items(&[Some(3), Some(4), Some(5)]),
            },
        ];
        let results = ChunkResults::<u64>::encoded("t", pieces).unwrap();
        assert_eq!(results.len(), 5);
        let results: Vec<_> = results.collect();
        assert!(
            matches!(
                &results[..],
                [
                    Ok(1),
                    Err(Error::UnknownTask { pid: Some(7), .. }),
                    Err(Error::ShutDown),
                    Ok(4),
                    Ok(5),
                ]
            ),
            "{results:?}"
        );
    }

    #[test]
    fn an_unreadable_item_fails_the_chunk_when_it_completes() {
        let mut bytes = items(&[Some(1), Some(2)]);
        bytes.pop();
        let pieces = vec![Piece::Items {
            pid: 7,
            skip: 0,
            bytes,
        }];
        let error = ChunkResults::<u64>::encoded("t", pieces).err().unwrap();
        assert!(
            matches!(
                error,
                Error::Serialization {
                    stage: Stage::DecodeResult,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn results_known_already_are_yielded_as_they_are() {
        let mut results = ChunkResults::<u64>::ready(vec![Ok(1), Err(Error::ShutDown)]);
        assert_eq!(results.len(), 2);
        assert!(matches!(results.next(), Some(Ok(1))));
        assert!(matches!(results.next(), Some(Err(Error::ShutDown))));
        assert!(results.next().is_none() && results.len() == 0);
    }
}
