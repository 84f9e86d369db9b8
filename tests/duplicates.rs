//! Two tasks that share an id are a bug of the program: building an
//! executor says so, naming both definitions, and neither task is ever
//! resolved by id; both still run in this process.

use loky::{Error, Task};

mod first {
    /// One of two tasks that claim the same id on purpose.
    #[loky::task(id = "duplicates::shared-id")]
    pub fn clash() -> u8 {
        1
    }
}

mod second {
    /// The other one.
    #[loky::task(id = "duplicates::shared-id")]
    pub fn clash() -> u8 {
        2
    }
}

#[test]
fn building_an_executor_names_both_definitions() {
    let result = loky::Executor::new(loky::Config::new().max_workers(1));
    let Err(error @ Error::DuplicateTask { .. }) = result else {
        panic!("expected DuplicateTask, got {result:?}");
    };
    let Error::DuplicateTask { task, locations } = &error else {
        unreachable!()
    };
    assert_eq!(*task, "duplicates::shared-id");
    assert_eq!(locations.len(), 2);
    assert!(
        locations
            .iter()
            .all(|l| l.starts_with("tests/duplicates.rs:")),
        "{locations:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("task id `duplicates::shared-id` is registered more than once"),
        "{error}"
    );
    // The reusable executor and `spawn` say the same.
    assert!(matches!(
        loky::get_reusable_executor(loky::Config::new()),
        Err(Error::DuplicateTask { .. })
    ));
    assert!(matches!(
        first::clash.spawn(()).result(),
        Err(Error::DuplicateTask { .. })
    ));
    // Both still run in this process, where no lookup is needed.
    assert_eq!(<first::clash as Task>::ID, <second::clash as Task>::ID);
    assert_eq!((first::clash.call(()), second::clash.call(())), (1, 2));
}
