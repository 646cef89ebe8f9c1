//! `warmtls-cache`: the cache inspector. A thin shell over the library.
fn main() {}
