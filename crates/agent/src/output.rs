//! Command output on stdout. `println!` panics when the reader went away
//! (`mobius-agent facts | head`); writing by hand turns that into an
//! error that `main` treats as success.

use std::io::{self, Write};

pub fn print(text: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()
}
