//! The `orchestrator` executable: everything lives in the library (`lib.rs`), so that
//! fuzz targets can reach the parsers; this only hands over the exit code.

fn main() {
    std::process::exit(orchestrator::main());
}
