//! The `hearth` command-line tool.
mod bench;

fn main() {}
