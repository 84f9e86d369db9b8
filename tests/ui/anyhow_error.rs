//! A task returning `anyhow::Result`-style errors: one error, not six.
#[loky::task]
fn parse(text: String) -> Result<u64, anyhow::Error> {
    Ok(text.len() as u64)
}

fn main() {}
