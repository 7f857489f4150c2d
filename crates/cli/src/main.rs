//! `mobius`: the admin CLI (in progress).

fn main() {}
