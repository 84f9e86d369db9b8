//! Task ids: stable, unique, and errors at the boundary for an id that is
//! unknown or registered twice.

mod common;

use common::{BOUND, executor, run};
use loky::{Error, Task};

mod first {
    /// One of two tasks that claim the same id on purpose.
    #[loky::task(id = "registry::shared-id")]
    pub fn clash() -> u8 {
        1
    }
}

mod second {
    /// The other one.
    #[loky::task(id = "registry::shared-id")]
    pub fn clash() -> u8 {
        2
    }
}

#[loky::task]
fn plain(x: u8) -> u8 {
    x
}

#[loky::task(id = "custom/id")]
fn custom(x: u8) -> u8 {
    x + 1
}

/// A `Task` made by hand, without `#[loky::task]`: nothing registers it.
#[derive(Clone, Copy, Default)]
struct Unregistered;

impl Task for Unregistered {
    type Args = ();
    type Output = u8;
    const ID: &'static str = "registry::nowhere";

    fn call(self, (): ()) -> u8 {
        0
    }
}

#[test]
fn ids_are_module_path_and_name_unless_given() {
    assert_eq!(<plain as Task>::ID, "registry::plain");
    assert_eq!(<first::clash as Task>::ID, "registry::shared-id");
    assert_eq!(<custom as Task>::ID, "custom/id");
    let executor = executor(1);
    assert_eq!(run(&executor, custom, 1), 2);
}

#[test]
fn a_duplicate_id_is_never_resolved_to_either_task() {
    let executor = executor(1);
    let result = executor
        .submit(first::clash, ())
        .unwrap()
        .result_timeout(BOUND);
    let Err(Error::DuplicateTask { task, locations }) = result else {
        panic!("expected DuplicateTask, got {result:?}");
    };
    assert_eq!(task, "registry::shared-id");
    assert_eq!(locations.len(), 2);
    assert!(
        locations
            .iter()
            .all(|l| l.starts_with("tests/registry.rs:")),
        "{locations:?}"
    );
    let message = executor
        .submit(second::clash, ())
        .unwrap()
        .result_timeout(BOUND)
        .unwrap_err();
    assert!(
        message
            .to_string()
            .starts_with("task id `registry::shared-id` is registered more than once")
    );
    // Both still run in this process, where no lookup is needed.
    assert_eq!((first::clash.call(()), second::clash.call(())), (1, 2));
    // Other tasks are unaffected.
    assert_eq!(run(&executor, plain, 9), 9);
}

#[test]
fn an_unknown_id_is_a_clear_error() {
    let executor = executor(1);
    let result = executor
        .submit(Unregistered, ())
        .unwrap()
        .result_timeout(BOUND);
    assert!(matches!(
        result,
        Err(Error::UnknownTask {
            task: "registry::nowhere",
            pid: None
        })
    ));
}

#[test]
fn an_id_the_worker_does_not_know_is_a_clear_error_naming_the_worker() {
    // A worker built from other sources: it lacks `registry::plain`.
    let config = loky::Config::new()
        .max_workers(1)
        .env("LOKY_WORKER_FAULT", "forget:registry::plain");
    let executor = loky::Executor::new(config).unwrap();
    let result = executor.submit(plain, 1).unwrap().result_timeout(BOUND);
    let Err(Error::UnknownTask {
        task,
        pid: Some(pid),
    }) = result
    else {
        panic!("expected UnknownTask from the worker, got {result:?}");
    };
    assert_eq!(task, "registry::plain");
    assert_eq!(
        Error::UnknownTask {
            task,
            pid: Some(pid)
        }
        .to_string(),
        format!("task `registry::plain` is not registered in worker {pid}")
    );
    // The worker is fine: other tasks run.
    let custom_result = executor.submit(custom, 2).unwrap().result_timeout(BOUND);
    assert!(custom_result.is_ok());
}
