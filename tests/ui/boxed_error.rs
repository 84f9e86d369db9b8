//! A task returning `Box<dyn Error>`: one error that says what to return.
#[loky::task]
fn parse(text: String) -> Result<u64, Box<dyn std::error::Error>> {
    Ok(text.parse()?)
}

fn main() {}
