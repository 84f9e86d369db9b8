//! Task ids: stable, and an error at the boundary for an id that is
//! unknown (ids registered twice: `tests/duplicates.rs`).

mod common;

use common::{BOUND, executor, run};
use loky::{Error, Task};

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
    assert_eq!(<custom as Task>::ID, "custom/id");
    let executor = executor(1);
    assert_eq!(run(&executor, custom, 1), 2);
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
    assert_eq!(
        result.unwrap_err().to_string(),
        "task `registry::nowhere` is not registered: only a function with \
         `#[loky::task]` is registered (a hand-written `Task` implementation is not)"
    );
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
