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
//! `noauto_da_alloc`, **ext4 without a journal**, anything unknown) the
//! commit flushes the staged data itself before the rename, which costs a
//! disk flush per commit.
//!
//! The mode is read from `/proc/fs/ext4/<device>/options`, which lists
//! the data mode only when there is a journal to order by. The mount
//! options in `/proc/self/mountinfo` do not tell: an ext4 made without a
//! journal (as some cloud images are) shows the same options as a
//! journalled one in the default mode, and there no ordering exists at
//! all, so a crash can leave a renamed name on blocks never written.
//! (The first version read mountinfo and took such a disk for ordered.)

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
            #[allow(clippy::unnecessary_cast)] // st_dev's width differs between targets
            let dev = st.st_dev as u64;
            ext4_options(rfs::major(dev), rfs::minor(dev)).is_some_and(|o| ext4_ordered(&o))
        }
        _ => false,
    }
}

/// The options ext4 reports for the device `major:minor`
/// (`/proc/fs/ext4/<name>/options`, one per line), the name found in
/// sysfs. `None` if either cannot be read.
fn ext4_options(major: u32, minor: u32) -> Option<String> {
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
    let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
    // A block device's kernel name (`vda1`, `dm-0`, `loop0`): one plain
    // path component, nothing to climb out of /proc/fs/ext4 with.
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    std::fs::read_to_string(format!("/proc/fs/ext4/{name}/options")).ok()
}

/// Whether ext4 reporting `options` orders data before a replacing
/// rename: journalled data, or ordered data with `auto_da_alloc`. Without
/// a journal ext4 reports no `data=` mode at all.
fn ext4_ordered(options: &str) -> bool {
    let has = |want: &str| options.lines().any(|o| o.trim() == want);
    has("data=journal") || (has("data=ordered") && has("auto_da_alloc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/fs/ext4/<dev>/options` of a journalled ext4 in the
    /// default mode (abridged, as a 6.18 kernel writes it).
    const JOURNALLED: &str = "rw\nbsddf\nnogrpid\nblock_validity\ndelalloc\njournal_checksum\nbarrier\nauto_da_alloc\nuser_xattr\nacl\ndata=ordered\ninode_readahead_blks=32\n";
    /// The same of an ext4 made without a journal (the benchmark VM's
    /// root): no `data=` line.
    const NO_JOURNAL: &str = "rw\nbsddf\nnogrpid\nblock_validity\ndiscard\ndelalloc\nnojournal_checksum\nbarrier\nauto_da_alloc\nuser_xattr\nacl\ninode_readahead_blks=32\n";

    #[test]
    fn only_a_journal_in_ordered_or_journalled_mode_orders_data() {
        assert!(ext4_ordered(JOURNALLED));
        assert!(!ext4_ordered(NO_JOURNAL));
        assert!(!ext4_ordered(
            &JOURNALLED.replace("data=ordered", "data=writeback")
        ));
        assert!(!ext4_ordered(
            &JOURNALLED.replace("auto_da_alloc", "noauto_da_alloc")
        ));
        assert!(ext4_ordered(
            &JOURNALLED.replace("data=ordered", "data=journal")
        ));
    }

    #[test]
    fn a_device_ext4_does_not_report_on_has_no_options() {
        // 0:0 is no block device: nothing to read, so no order claimed.
        assert_eq!(ext4_options(0, 0), None);
    }
}
