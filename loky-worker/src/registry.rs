//! The registry of tasks: every `#[loky::task]` submits a [`TaskEntry`]
//! through `inventory`, and both sides look tasks up by their stable id.
//!
//! Architecture Invariant: an id that two entries share is never resolved to
//! either of them: [`lookup`] reports it as [`Lookup::Duplicate`].

use crate::protocol::{Failure, Packing, Payload};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Runs one call: decodes the arguments, calls the task, encodes the result.
pub type Invoke = fn(&[u8], Packing) -> Result<Payload, Failure>;

/// Runs one element of a chunk as [`Invoke`] does, appending the encoded
/// result to a buffer the caller reuses.
pub type InvokeInto = fn(&[u8], &mut Vec<u8>) -> Result<(), Failure>;

/// One registered task.
#[derive(Debug)]
pub struct TaskEntry {
    id: &'static str,
    location: &'static str,
    invoke: Invoke,
    invoke_into: InvokeInto,
}

impl TaskEntry {
    /// A new entry, made by the `#[loky::task]` expansion.
    pub const fn new(
        id: &'static str,
        location: &'static str,
        invoke: Invoke,
        invoke_into: InvokeInto,
    ) -> Self {
        TaskEntry {
            id,
            location,
            invoke,
            invoke_into,
        }
    }

    /// Runs one element of a chunk, appending its encoded result to `out`.
    pub fn invoke_into(&self, args: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
        (self.invoke_into)(args, out)
    }

    /// The task's stable id.
    pub fn id(&self) -> &'static str {
        self.id
    }

    /// Where the task is defined, `file:line`.
    pub fn location(&self) -> &'static str {
        self.location
    }

    /// Runs one call of the task on encoded arguments.
    pub fn invoke(&self, args: &[u8], packing: Packing) -> Result<Payload, Failure> {
        (self.invoke)(args, packing)
    }
}

inventory::collect!(TaskEntry);

/// The answer to [`lookup`].
#[derive(Debug)]
pub enum Lookup {
    /// Exactly one task has this id.
    Found(&'static TaskEntry),
    /// No task has this id.
    Unknown,
    /// Several tasks have this id; where each is defined.
    Duplicate(Vec<&'static str>),
}

impl Lookup {
    /// The entry, or the failure to report for this id.
    pub fn entry(self) -> Result<&'static TaskEntry, Failure> {
        match self {
            Lookup::Found(entry) => Ok(entry),
            Lookup::Unknown => Err(Failure::UnknownTask),
            Lookup::Duplicate(locations) => Err(Failure::DuplicateTask {
                locations: locations.into_iter().map(str::to_owned).collect(),
            }),
        }
    }
}

/// Every task by id. Built once, on first use, after every constructor has
/// run (see [`crate::entry`]).
fn table() -> &'static HashMap<&'static str, Vec<&'static TaskEntry>> {
    static TABLE: OnceLock<HashMap<&'static str, Vec<&'static TaskEntry>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table: HashMap<&'static str, Vec<&'static TaskEntry>> = HashMap::new();
        for entry in inventory::iter::<TaskEntry> {
            table.entry(entry.id).or_default().push(entry);
        }
        table
    })
}

/// Looks a task up by id.
pub fn lookup(id: &str) -> Lookup {
    match table().get(id).map(Vec::as_slice) {
        None | Some([]) => Lookup::Unknown,
        Some([entry]) => Lookup::Found(entry),
        Some(entries) => Lookup::Duplicate(locations(entries)),
    }
}

/// Every id that several tasks share, with where each is defined, sorted.
pub fn duplicates() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut duplicates: Vec<_> = table()
        .iter()
        .filter(|(_, entries)| entries.len() > 1)
        .map(|(&id, entries)| (id, locations(entries)))
        .collect();
    duplicates.sort_unstable();
    duplicates
}

fn locations(entries: &[&'static TaskEntry]) -> Vec<&'static str> {
    let mut locations: Vec<_> = entries.iter().map(|e| e.location).collect();
    locations.sort_unstable();
    locations
}
