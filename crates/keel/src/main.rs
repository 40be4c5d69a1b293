//! `keel` — the command-line entry point.
//!
//! Today: `keel bench wal` (this disk and the WAL) and `keel bench mvcc` (the state machine's
//! footprint and restart time). `keel server` and
//! `keel playground` arrive with the server.

mod bench_mvcc;
mod bench_wal;

use std::process::ExitCode;

const USAGE: &str = "usage: keel bench wal [--dir DIR] [--seconds S] [--writers N] [--value-bytes B]\n       keel bench mvcc [--dir DIR] [--keys N] [--value-bytes B] [--batch N]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") if args.get(1).map(String::as_str) == Some("wal") => bench_wal::run(&args[2..]),
        Some("bench") if args.get(1).map(String::as_str) == Some("mvcc") => bench_mvcc::run(&args[2..]),
        _ => Err(anyhow::anyhow!("{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("keel: {error:#}");
            ExitCode::from(2)
        }
    }
}
