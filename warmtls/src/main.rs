//! `warmtls`: the endpoint binary (serve, check, keygen). A thin shell over the
//! library's command line ([`warmtls::cli`]).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    warmtls::cli::main_from(std::env::args_os())
}
