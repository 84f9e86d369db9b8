struct Counter;

impl Counter {
    #[loky::task]
    fn count(&self) -> u32 {
        1
    }
}

fn main() {}
