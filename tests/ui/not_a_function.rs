#[loky::task]
struct Square;

fn main() {}
