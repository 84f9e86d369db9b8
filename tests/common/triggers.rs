//! Ways for a task to go wrong, at every stage of a call: in the task, or
//! in the serde code of its arguments or result.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) enum Trigger {
    SerdeError,
    Panic,
    Exit,
    Abort,
    Segfault,
    SigKill,
    StackOverflow,
}

pub(crate) const EXIT_CODE: i32 = 42;

impl Trigger {
    pub(crate) const ALL: [Trigger; 7] = [
        Trigger::SerdeError,
        Trigger::Panic,
        Trigger::Exit,
        Trigger::Abort,
        Trigger::Segfault,
        Trigger::SigKill,
        Trigger::StackOverflow,
    ];

    pub(crate) fn kills_the_process(self) -> bool {
        !matches!(self, Trigger::SerdeError | Trigger::Panic)
    }

    /// Goes wrong. Returns the serde error message for `SerdeError`.
    pub(crate) fn fire(self) -> String {
        match self {
            Trigger::SerdeError => "the matrix refuses".to_owned(),
            Trigger::Panic => panic!("the matrix panics"),
            Trigger::Exit => std::process::exit(EXIT_CODE),
            Trigger::Abort => std::process::abort(),
            Trigger::Segfault => {
                // SAFETY: not safe at all: this is the crash under test.
                unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
                unreachable!("wrote through a null pointer")
            }
            Trigger::SigKill => {
                // SAFETY: sends a signal to this process.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                std::thread::sleep(Duration::from_secs(10));
                unreachable!("survived SIGKILL")
            }
            Trigger::StackOverflow => {
                std::hint::black_box(recurse(0));
                unreachable!("the stack is endless")
            }
        }
    }
}

fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 512]);
    if depth == u64::MAX {
        return frame[0];
    }
    recurse(depth + 1) + frame[1]
}

/// Fires its trigger when encoded.
#[derive(Debug)]
pub(crate) struct OnEncode(pub(crate) Option<Trigger>);

impl Serialize for OnEncode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(trigger) = self.0 {
            return Err(serde::ser::Error::custom(trigger.fire()));
        }
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for OnEncode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d)?;
        Ok(OnEncode(None))
    }
}

/// Fires its trigger when decoded.
#[derive(Debug)]
pub(crate) struct OnDecode(pub(crate) Option<Trigger>);

impl Serialize for OnDecode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for OnDecode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if let Some(trigger) = Option::<Trigger>::deserialize(d)? {
            return Err(serde::de::Error::custom(trigger.fire()));
        }
        Ok(OnDecode(None))
    }
}
