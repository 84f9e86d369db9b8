//! The [`Task`] trait that `#[loky::task]` implements.

use crate::error::Error;
use crate::message::Message;
use loky_worker::registry;

/// A function registered with `#[loky::task]`, runnable in a worker process.
///
/// The attribute turns `fn square(x: u64) -> u64` into a unit struct
/// `square` that implements this trait: `square.call(3)` runs it here,
/// `square.spawn(3)` (an inherent method the attribute adds) on the default
/// reusable executor, and
/// `executor.submit(square, 3)` and `executor.map(square, 0..10)` on an
/// executor. One argument is passed as is, several as a tuple, none as `()`.
///
/// Implement it only through the attribute: the attribute also registers
/// the function under [`ID`](Self::ID), which is how a worker finds it. A
/// hand-written implementation registers nothing, and submitting it fails
/// with [`Error::UnknownTask`](crate::Error::UnknownTask), which says so.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a loky task",
    label = "not a `#[loky::task]` function",
    note = "put `#[loky::task]` on a free function (`fn name(args) -> T`) and pass that function",
    note = "closures and other callables cannot cross processes: a worker finds a task by its registered id"
)]
pub trait Task: Copy + Default + Send + Sync + 'static {
    /// The arguments: the one argument's type, a tuple of several, or `()`.
    type Args: Message;
    /// The return type.
    type Output: Message;
    /// The stable id under which workers find the task: by default the
    /// module path and the function's name, such as `my_crate::square`.
    const ID: &'static str;

    /// Runs the task in this process.
    fn call(self, args: Self::Args) -> Self::Output;
}

/// Refuses a program where two tasks share an id: a bug of the program,
/// said when the executor is built rather than at the first submission.
pub(crate) fn no_duplicates() -> Result<(), Error> {
    match registry::duplicates().into_iter().next() {
        None => Ok(()),
        Some((task, locations)) => Err(Error::DuplicateTask {
            task,
            locations: locations.into_iter().map(str::to_owned).collect(),
        }),
    }
}

/// Checks that exactly one task is registered under `id`.
pub(crate) fn registered(id: &'static str) -> Result<(), Error> {
    registry::lookup(id)
        .entry()
        .map(|_| ())
        .map_err(|failure| Error::from_failure(id, None, failure))
}
