//! Whether the shared folder's file system writes a file's data before a
//! rename that puts it over another file reaches the disk.
//!
//! A commit renames its staging file over the target without waiting for
//! the disk (docs/filesystem.md, "Durability"): the host's group commit
//! makes it durable later. A crash in between must still leave the old
//! content or the whole new one, never a name pointing at blocks that
//! were never written. ext4 promises exactly that for a rename over an
//! existing file in its default `data=ordered` mode: `auto_da_alloc`
//! allocates the renamed file's delayed blocks, and ordered mode writes
//! them before the journal commits the rename (ext4(5), `auto_da_alloc`).
//! tmpfs keeps nothing across a crash, so there is nothing to tear.
//! Elsewhere (XFS, btrfs, ext4 with `data=writeback` or
//! `noauto_da_alloc`, anything unknown) the commit flushes the staged data
//! itself before the rename, which costs a disk flush per commit.

use rustix::fs as rfs;
use std::os::fd::AsFd;

const EXT4_SUPER_MAGIC: i64 = 0xEF53;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// True if the file system holding `dir` writes a file's data before a
/// rename over another file is durable (see the module docs).
pub(super) fn orders_data_before_rename(dir: impl AsFd) -> bool {
    let Ok(fs) = rfs::fstatfs(&dir) else {
        return false;
    };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    match fs.f_type as i64 {
        TMPFS_MAGIC => true,
        EXT4_SUPER_MAGIC => {
            let Ok(st) = rfs::fstat(&dir) else {
                return false;
            };
            let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
                return false;
            };
            #[allow(clippy::unnecessary_cast)] // st_dev's width differs between targets
            let dev = st.st_dev as u64;
            super_options(&info, rfs::major(dev), rfs::minor(dev)).is_some_and(ext4_ordered)
        }
        _ => false,
    }
}

/// The super-block options of the device `major:minor` in a
/// `/proc/self/mountinfo` text (proc(5): the field after the separator
/// ` - `, the file-system type and the source).
fn super_options(info: &str, major: u32, minor: u32) -> Option<&str> {
    let want = format!("{major}:{minor}");
    info.lines().find_map(|line| {
        let mut fields = line.split(' ');
        if fields.nth(2)? != want {
            return None;
        }
        let (_, after) = line.split_once(" - ")?;
        after.split(' ').nth(2)
    })
}

/// Whether ext4 mounted with `options` orders data before a replacing
/// rename: ordered or journalled data, `auto_da_alloc` not turned off.
fn ext4_ordered(options: &str) -> bool {
    !options
        .split(',')
        .any(|o| o == "data=writeback" || o == "noauto_da_alloc")
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard,resv_strict
23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw
40 22 254:16 / /srv rw,relatime shared:20 - ext4 /dev/vdb rw,data=writeback
41 22 254:32 / /data rw - ext4 /dev/vdc rw,noauto_da_alloc,data=ordered
";

    #[test]
    fn the_options_of_the_right_device_are_found() {
        assert_eq!(super_options(INFO, 254, 0), Some("rw,discard,resv_strict"));
        assert_eq!(super_options(INFO, 0, 21), Some("rw"));
        assert_eq!(super_options(INFO, 9, 9), None);
    }

    #[test]
    fn ext4_orders_data_unless_told_not_to() {
        assert!(ext4_ordered("rw,discard,resv_strict"));
        assert!(!ext4_ordered("rw,data=writeback"));
        assert!(!ext4_ordered("rw,noauto_da_alloc,data=ordered"));
    }
}
