//! The `shardgate` binary: parse the arguments, hand over to the library.

use clap::Parser;

fn main() {
    let code = shardgate::cli::main(shardgate::cli::Cli::parse());
    std::process::exit(code);
}
