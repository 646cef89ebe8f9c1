//! `warmtls-bench`: the store benchmark and the fleet simulator. A thin shell over the library.
fn main() {}
