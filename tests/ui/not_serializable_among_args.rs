//! One argument of several cannot cross processes: one error, at the
//! parameter list.

struct Opaque;

#[loky::task]
fn consume(count: u32, value: Opaque) -> u32 {
    let _ = value;
    count
}

fn main() {}
