//! A chunk's results as its taker iterates them: decoded one at a time,
//! from the encoded outcomes the workers sent, as they are taken.
//!
//! A result is a `Result<R, Error>`, and an `Error` is large: decoding a
//! whole chunk into a vector first wrote every result out and read it back,
//! most of the taking thread's time in a `map` of short tasks. So a chunk's
//! future holds the encoded outcomes, with the number of items each piece
//! was announced to hold; each result is read and decoded where the
//! iterator yields it, in the thread that takes it. An item the bytes do
//! not hold, or hold unreadably, is a `DecodeResult` error of its own
//! element, and so is every item after it in that piece.

use crate::error::Error;
use crate::job::{self, Piece};
use crate::message::Message;
use loky_worker::protocol::{self, ChunkItem, Failure, Stage};
use std::marker::PhantomData;

/// A piece of encoded items being read.
struct Reading {
    /// Its worker.
    pid: u32,
    bytes: Vec<u8>,
    /// Where the next item starts.
    at: usize,
    /// Items still to read.
    left: usize,
    /// Why the bytes cannot be read further, once they cannot.
    unreadable: Option<String>,
}

/// The results of a chunk's elements, in element order.
pub(crate) struct ChunkResults<R> {
    task: &'static str,
    /// Outcomes not reached yet, in order.
    pieces: std::vec::IntoIter<Piece>,
    /// The piece being read.
    reading: Option<Reading>,
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

    /// The results in `pieces`, as many as their messages announced; each
    /// is read as it is taken (an item that cannot be read fails its own
    /// element, and those after it in its piece).
    pub(crate) fn encoded(task: &'static str, pieces: Vec<Piece>) -> Self {
        let remaining = pieces
            .iter()
            .map(|piece| match piece {
                Piece::Failed(_) => 1,
                Piece::Items { skip, count, .. } => count.saturating_sub(*skip),
            })
            .sum();
        ChunkResults {
            task,
            pieces: pieces.into_iter(),
            reading: None,
            ready: Vec::new().into_iter(),
            remaining,
            result: PhantomData,
        }
    }

    /// The next item of the piece being read, decoded; `None` past its
    /// last.
    fn next_read(&mut self) -> Option<Result<R, Error>> {
        let reading = self.reading.as_mut()?;
        if reading.left == 0 {
            self.reading = None;
            return None;
        }
        reading.left -= 1;
        let item = match &reading.unreadable {
            Some(why) => Err(why.clone()),
            None => match protocol::next_item(&reading.bytes[reading.at..]) {
                Some(Ok((item, used))) => {
                    reading.at += used;
                    Ok(item)
                }
                Some(Err(why)) => Err(why),
                None => Err("fewer results than announced".to_owned()),
            },
        };
        let pid = reading.pid;
        Some(match item {
            Ok(ChunkItem::Returned(bytes)) => job::decode_bytes(self.task, pid, &bytes),
            Ok(ChunkItem::Failed(failure)) => {
                Err(Error::from_failure(self.task, Some(pid), failure))
            }
            Err(why) => {
                reading.unreadable = Some(why.clone());
                let stage = Stage::DecodeResult;
                let failure = Failure::Serde {
                    stage,
                    message: why,
                };
                Err(Error::from_failure(self.task, Some(pid), failure))
            }
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
                    Piece::Items {
                        pid,
                        skip,
                        count,
                        bytes,
                    } => {
                        self.reading = Some(Reading {
                            pid,
                            bytes,
                            at: 0,
                            left: count,
                            unreadable: None,
                        });
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
                count: 2,
                bytes: items(&[Some(1), None]),
            },
            Piece::Failed(Error::ShutDown),
            // A worker that died after sending these sent the first again.
            Piece::Items {
                pid: 8,
                skip: 1,
                count: 3,
                bytes: items(&[Some(3), Some(4), Some(5)]),
            },
        ];
        let results = ChunkResults::<u64>::encoded("t", pieces);
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

    fn unreadable(result: &Result<u64, Error>) -> bool {
        matches!(
            result,
            Err(Error::Serialization {
                stage: Stage::DecodeResult,
                ..
            })
        )
    }

    #[test]
    fn an_unreadable_item_fails_alone_with_those_after_it_in_its_piece() {
        let mut cut = items(&[Some(1), Some(2), Some(3)]);
        cut.pop();
        let pieces = vec![
            // Cut short in its third item, announced with four.
            Piece::Items {
                pid: 7,
                skip: 0,
                count: 4,
                bytes: cut,
            },
            Piece::Items {
                pid: 8,
                skip: 0,
                count: 1,
                bytes: items(&[Some(9)]),
            },
        ];
        let results = ChunkResults::<u64>::encoded("t", pieces);
        assert_eq!(results.len(), 5);
        let results: Vec<_> = results.collect();
        assert!(matches!(results[..2], [Ok(1), Ok(2)]), "{results:?}");
        assert!(results[2..4].iter().all(unreadable), "{results:?}");
        assert!(matches!(results[4], Ok(9)), "{results:?}");
    }

    #[test]
    fn items_past_the_announced_count_are_not_taken() {
        let pieces = vec![Piece::Items {
            pid: 7,
            skip: 0,
            count: 1,
            bytes: items(&[Some(1), Some(2)]),
        }];
        let results: Vec<_> = ChunkResults::<u64>::encoded("t", pieces).collect();
        assert!(matches!(results[..], [Ok(1)]), "{results:?}");
    }

    #[test]
    fn a_piece_without_an_announced_count_is_counted_up_to_its_unreadable_item() {
        let mut cut = items(&[Some(1), Some(2)]);
        cut.pop();
        let results: Vec<_> =
            ChunkResults::<u64>::encoded("t", vec![Piece::counting(7, 0, cut)]).collect();
        assert_eq!(results.len(), 2, "{results:?}");
        assert!(
            matches!(results[0], Ok(1)) && unreadable(&results[1]),
            "{results:?}"
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
