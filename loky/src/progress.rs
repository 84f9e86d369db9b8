//! Progress bars on result iterators (feature `progress`): an indicatif bar
//! that counts results, failures and the rate, and ends cleanly however the
//! iteration ends.

use crate::error::Error;
use crate::future::Future;
use crate::map::Map;
use crate::map_unordered::MapUnordered;
use crate::task::Task;
use crate::wait::AsCompleted;
use indicatif::{ProgressBar, ProgressStyle};

/// A result iterator that draws a progress bar: results so far, failures,
/// rate and time left (when the length is known). From `.progress()` or
/// `.progress_with(bar)` on [`Map`], [`MapUnordered`] and [`AsCompleted`].
///
/// When the iteration ends the bar is finished and stays on screen; when
/// the iterator is dropped early the bar is abandoned with a note that it
/// stopped. Like any indicatif bar it draws on standard error, and only
/// when that is a terminal.
///
/// ```
/// # #[loky::task] fn square(x: u64) -> u64 { x * x }
/// # fn main() -> Result<(), loky::Error> {
/// let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
/// let squares: Vec<u64> = executor
///     .map(square, 0..1000)
///     .progress()
///     .collect::<Result<_, _>>()?;
/// assert_eq!(squares[999], 999 * 999);
/// # Ok(())
/// # }
/// ```
pub struct Progress<I: Iterator> {
    inner: I,
    bar: ProgressBar,
    failed: u64,
    is_failure: fn(&I::Item) -> bool,
    ended: bool,
}

/// The bar of `.progress()`.
fn default_bar(len: Option<u64>) -> ProgressBar {
    let (bar, template) = match len {
        Some(len) => (
            ProgressBar::new(len),
            "{wide_bar} {pos}/{len} done, {msg} [{elapsed_precise}, {per_sec}, {eta} left]",
        ),
        None => (
            ProgressBar::no_length(),
            "{spinner} {pos} done, {msg} [{elapsed_precise}, {per_sec}]",
        ),
    };
    bar.with_style(ProgressStyle::with_template(template).expect("a valid template"))
}

impl<I: Iterator> Progress<I> {
    fn new(inner: I, bar: ProgressBar, len: Option<u64>, is_failure: fn(&I::Item) -> bool) -> Self {
        if let (None, Some(len)) = (bar.length(), len) {
            bar.set_length(len);
        }
        bar.set_message("0 failed");
        Progress {
            inner,
            bar,
            failed: 0,
            is_failure,
            ended: false,
        }
    }

    /// The bar, to change its style or read its counts.
    pub fn bar(&self) -> &ProgressBar {
        &self.bar
    }

    /// How many results were failures so far.
    pub fn failed(&self) -> u64 {
        self.failed
    }
}

impl<I: Iterator> Iterator for Progress<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        match self.inner.next() {
            Some(item) => {
                if (self.is_failure)(&item) {
                    self.failed += 1;
                    self.bar.set_message(format!("{} failed", self.failed));
                }
                self.bar.inc(1);
                Some(item)
            }
            None => {
                if !self.ended {
                    self.ended = true;
                    self.bar
                        .finish_with_message(format!("{} failed", self.failed));
                }
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<I: Iterator> Drop for Progress<I> {
    fn drop(&mut self) {
        if !self.ended {
            self.bar
                .abandon_with_message(format!("{} failed, stopped early", self.failed));
        }
    }
}

impl<I: Iterator> std::fmt::Debug for Progress<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("done", &self.bar.position())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// The input's length, if its iterator knows it.
fn known_len(hint: (usize, Option<usize>)) -> Option<u64> {
    match hint {
        (low, Some(high)) if low == high => Some(high as u64),
        _ => None,
    }
}

impl<T: Task, I: Iterator<Item = T::Args>> Map<T, I> {
    /// Draws a progress bar as results are consumed: see [`Progress`].
    pub fn progress(self) -> Progress<Self> {
        let len = known_len(self.feed.input_size_hint());
        self.progress_with(default_bar(len))
    }

    /// Counts results on `bar` (its length set from the input's if it has
    /// none): see [`Progress`].
    pub fn progress_with(self, bar: ProgressBar) -> Progress<Self> {
        let len = known_len(self.feed.input_size_hint());
        Progress::new(self, bar, len, Result::is_err)
    }
}

impl<T: Task, I: Iterator<Item = T::Args>> MapUnordered<T, I> {
    /// Draws a progress bar as results are consumed: see [`Progress`].
    pub fn progress(self) -> Progress<Self> {
        let len = known_len(self.feed().input_size_hint());
        self.progress_with(default_bar(len))
    }

    /// Counts results on `bar` (its length set from the input's if it has
    /// none): see [`Progress`].
    pub fn progress_with(self, bar: ProgressBar) -> Progress<Self> {
        let len = known_len(self.feed().input_size_hint());
        Progress::new(self, bar, len, |(_, result)| result.is_err())
    }
}

impl<R> AsCompleted<R> {
    /// Draws a progress bar as futures complete: see [`Progress`]. A
    /// failed future, or the wait's timeout, counts as a failure.
    pub fn progress(self) -> Progress<Self> {
        let len = Some(self.remaining() as u64);
        self.progress_with(default_bar(len))
    }

    /// Counts completed futures on `bar`: see [`Progress`].
    pub fn progress_with(self, bar: ProgressBar) -> Progress<Self> {
        let len = Some(self.remaining() as u64);
        Progress::new(self, bar, len, completed_with_failure::<R>)
    }
}

fn completed_with_failure<R>(item: &Result<Future<R>, Error>) -> bool {
    item.as_ref().map_or(true, Future::failed_now)
}
