//! Who may use a mount: other local users with `--allow-other`, checked
//! by the kernel as on a local disk (the body is shared with the smol
//! binary's test).

mod common {
    pub(crate) mod permissions;
    pub(crate) mod procs;
}

#[test]
fn other_users_are_let_in_only_when_asked_and_as_the_modes_say() {
    common::permissions::other_users(std::path::Path::new(env!("CARGO_BIN_EXE_wormhole")));
}

#[test]
fn fifos_and_sockets_work_and_device_nodes_are_refused() {
    common::permissions::special_files(std::path::Path::new(env!("CARGO_BIN_EXE_wormhole")));
}

#[test]
fn hard_links_are_one_file_under_every_name() {
    common::permissions::hard_links(std::path::Path::new(env!("CARGO_BIN_EXE_wormhole")));
}

#[test]
fn user_extended_attributes_reach_the_hosts_file() {
    common::permissions::extended_attributes(std::path::Path::new(env!("CARGO_BIN_EXE_wormhole")));
}

#[test]
fn an_ordinary_user_mounts_where_the_system_lets_users_use_fuse() {
    common::permissions::ordinary_user_mounts(std::path::Path::new(env!("CARGO_BIN_EXE_wormhole")));
}
