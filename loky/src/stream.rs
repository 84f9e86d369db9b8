//! `map`, `map_unordered` and `as_completed` as async streams (feature
//! `stream`): [`futures_core::Stream`], usable from tokio, async-std, smol or
//! any executor, with no thread blocked per item.
//!
//! A [`Map`], [`MapUnordered`] or
//! [`AsCompleted`] is both an `Iterator` and a `Stream`:
//! poll it from async code and the task sleeps until a result is ready.
//! Backpressure is the same as for the iterator: inputs are pulled, and
//! chunks submitted, only as results are consumed, within the window. The
//! input iterator itself runs in the polling task, so it should not block.
//!
//! ```
//! # #[loky::task] fn square(x: u64) -> u64 { x * x }
//! # fn main() -> Result<(), loky::Error> {
//! use loky::stream::Stream;
//! use std::pin::Pin;
//! use std::task::{Context, Poll, Waker};
//!
//! let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
//! let mut squares = executor.map_unordered(square, 0..10);
//! // Any async runtime drives it; here, a bare poll loop.
//! let mut cx = Context::from_waker(Waker::noop());
//! let mut total = 0;
//! loop {
//!     match Pin::new(&mut squares).poll_next(&mut cx) {
//!         Poll::Ready(Some((_, result))) => total += result?,
//!         Poll::Ready(None) => break,
//!         Poll::Pending => std::thread::yield_now(),
//!     }
//! }
//! assert_eq!(total, 285);
//! # Ok(())
//! # }
//! ```

use crate::error::Error;
use crate::future::Future;
use crate::map::Map;
use crate::map_unordered::MapUnordered;
use crate::task::Task;
use crate::wait::AsCompleted;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// The stream trait, re-exported from `futures-core` (the same trait as
/// `futures::Stream`).
pub use futures_core::Stream;

// Neither map is ever pinned structurally: what they hold moves freely.
impl<T: Task, I> Unpin for Map<T, I> {}
impl<T: Task, I> Unpin for MapUnordered<T, I> {}

impl<T: Task, I: Iterator<Item = T::Args>> Stream for Map<T, I> {
    type Item = Result<T::Output, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_step(cx)
    }
}

impl<T: Task, I: Iterator<Item = T::Args>> Stream for MapUnordered<T, I> {
    type Item = (usize, Result<T::Output, Error>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let wake = std::sync::Arc::clone(&this.wake);
        this.step(|finished| {
            if let Ok(slot) = finished.try_recv() {
                return Some(slot);
            }
            // Registered before the second look: a chunk that finishes in
            // between is either seen now or wakes us.
            wake.register(cx.waker());
            finished.try_recv().ok()
        })
    }
}

impl<R: Send + 'static> Stream for AsCompleted<R> {
    type Item = Result<Future<R>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut registered = false;
        while this.remaining() > 0 {
            if let Ok(index) = this.notifications().try_recv() {
                if let Some(future) = this.take(index) {
                    return Poll::Ready(Some(Ok(future)));
                }
                continue;
            }
            let deadline = this.deadline();
            if let Some((timeout, at)) = deadline
                && Instant::now() >= at
            {
                return Poll::Ready(Some(Err(this.expire(timeout))));
            }
            if registered {
                // One thread per stream, not per item, sleeps until the
                // timeout to wake it: there is no runtime-neutral timer.
                if let Some((_, at)) = deadline
                    && !this.timer
                {
                    this.timer = true;
                    let wake = std::sync::Arc::downgrade(&this.wake);
                    std::thread::spawn(move || {
                        std::thread::sleep(at.saturating_duration_since(Instant::now()));
                        if let Some(wake) = wake.upgrade() {
                            wake.wake();
                        }
                    });
                }
                return Poll::Pending;
            }
            this.wake.register(cx.waker());
            registered = true;
        }
        Poll::Ready(None)
    }
}
