//! The `xlaguard` command line.
fn main() {}
