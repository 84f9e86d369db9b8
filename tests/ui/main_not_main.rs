#[loky::main]
fn start() {}

fn main() {}
