struct Opaque;

#[loky::task]
fn consume(value: Opaque) -> u32 {
    let _ = value;
    1
}

fn main() {}
