struct Opaque;

#[loky::task]
fn produce() -> Opaque {
    Opaque
}

fn main() {}
