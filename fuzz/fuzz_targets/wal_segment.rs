#![no_main]
//! Arbitrary bytes as the WAL's only segment: recovery must return a log or an error.
use std::sync::Arc;

use keel_storage::wal::{Wal, WalOptions};
use keel_storage::{Disk, SimDisk};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let disk = SimDisk::new();
    let mut file = disk.open("wal/0000000000000001.wal", true).expect("sim disk");
    file.write_all_at(0, data).expect("sim disk");
    file.sync_data().expect("sim disk");
    disk.sync_dir("wal").expect("sim disk");
    let _ = Wal::open(Arc::new(disk), WalOptions { segment_bytes: 1 << 16, ..WalOptions::default() });
});
