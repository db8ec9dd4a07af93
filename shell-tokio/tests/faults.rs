//! Fault injection on the `wormhole` binary (tokio); the bodies are shared
//! with the smol binary's test.

mod common {
    pub(crate) mod faults;
    pub(crate) mod procs;
}

use common::faults;
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_wormhole");

#[test]
fn a_host_side_save_during_a_write_keeps_one_whole_version() {
    faults::a_host_side_save_during_a_write_keeps_one_whole_version(Path::new(BIN));
}

#[test]
fn an_o_trunc_rewrite_survives_kill_9_of_the_host() {
    faults::an_o_trunc_rewrite_survives_kill_9_of_the_host(Path::new(BIN));
}

#[test]
fn a_full_disk_fails_the_writer_and_keeps_the_old_content() {
    faults::a_full_disk_fails_the_writer_and_keeps_the_old_content(Path::new(BIN));
}

#[test]
fn errors_that_belong_to_open_come_at_open() {
    faults::errors_that_belong_to_open_come_at_open(Path::new(BIN));
}

#[test]
fn a_folder_has_one_host_at_a_time() {
    faults::a_folder_has_one_host_at_a_time(Path::new(BIN));
}

#[test]
fn an_open_file_keeps_its_content_when_the_host_saves_a_new_one() {
    faults::an_open_file_keeps_its_content_when_the_host_saves_a_new_one(Path::new(BIN));
}

#[test]
fn a_directory_renamed_on_the_host_keeps_the_shell_in_it() {
    faults::a_directory_renamed_on_the_host_keeps_the_shell_in_it(Path::new(BIN));
}

#[test]
fn one_mountpoint_has_one_mount() {
    faults::one_mountpoint_has_one_mount(Path::new(BIN));
}

#[test]
fn a_partition_is_answered_from_the_cache_and_heals_at_once() {
    faults::a_partition_is_answered_from_the_cache_and_heals_at_once(Path::new(BIN));
}

#[test]
fn an_append_survives_kill_9_of_the_host() {
    faults::an_append_survives_kill_9_of_the_host(Path::new(BIN));
}

#[test]
fn renames_survive_kill_9_of_the_host() {
    faults::renames_survive_kill_9_of_the_host(Path::new(BIN));
}

#[test]
fn a_host_side_delete_during_a_write_is_not_undone() {
    faults::a_host_side_delete_during_a_write_is_not_undone(Path::new(BIN));
}

#[test]
fn what_the_host_may_not_touch_is_refused_at_once() {
    faults::what_the_host_may_not_touch_is_refused_at_once(Path::new(BIN));
}

#[test]
fn a_log_appended_on_the_host_reads_as_a_prefix() {
    faults::a_log_appended_on_the_host_reads_as_a_prefix(Path::new(BIN));
}

#[test]
fn an_ioctl_is_answered_enotty_quietly() {
    faults::an_ioctl_is_answered_enotty_quietly(Path::new(BIN));
}
