#!/usr/bin/env python3
"""Prints the result table of bench/sshfs.sh (markdown) from its results file.

The results file has one line per figure, tab-separated:
test, system, value, unit, status, elapsed s, machine CPU s, client CPU s,
server CPU s, rustc processes seen, longest stall s, cores busy before,
CPU s stolen by the hypervisor; and `#meta` lines (key, value).
"""

import sys

# test key, label (format fields from the meta lines), kind, target ratio.
# kind "rate": higher is better, ratio = wormhole / sshfs;
# kind "time": seconds, lower is better, ratio = sshfs / wormhole.
TESTS = [
    ("rawquic", "Raw QUIC, one stream of {size} over loopback (reference)", "rate", None),
    ("seqread_cold", "Sequential read {size}, cold (median of {cold_runs})", "rate", 2.0),
    ("seqread_warm", "Sequential re-read {size}, warm (same mount)", "rate", 5.0),
    ("seqwrite", "Sequential write {size} + fsync", "rate", 1.5),
    ("randread_1", "4 KiB random read, fio, 1 job, {fio_runtime} s", "rate", 1.0),
    ("randread_4", "4 KiB random read, fio, 4 jobs, {fio_runtime} s", "rate", 1.0),
    ("small", "Read {files} files of {file_kb} KiB, cold", "time", 2.0),
    ("findstat", "find + stat over {files} files, cold", "time", None),
    ("untar", "untar {untar_short} + fsync each file", "time", 1.5),
    ("untar_tiny", "untar {tiny} files of 1 KiB", "time", 5.0),
    ("rm_tiny", "rm -rf of those {tiny} files", "time", 5.0),
    ("untar_tiny_sync", "untar {tiny} files of 1 KiB + sync -f", "time", 3.0),
    ("cp", "cp {size} within the mount", "rate", 5.0),
]
SYSTEMS = ["wormhole", "sshfs", "local"]

# A step during which the hypervisor took more than this many of the VM's
# cores on average (steal time) measured the neighbours as much as the
# system under test; it is named in the report.
STEAL_LIMIT = 0.2


def load(path):
    rows, meta = {}, {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts[0] == "#meta":
                meta[parts[1]] = parts[2] if len(parts) > 2 else ""
                continue
            if len(parts) < 5:
                continue
            parts += [""] * (13 - len(parts))
            test, system, value, unit, status = parts[:5]
            rows[(test, system)] = {
                "value": float(value) if status == "ok" and value else None,
                "unit": unit,
                "status": status,
                "elapsed": parts[5],
                "cpu": parts[6:9],
                "rustc": parts[9],
                "stall": float(parts[10]) if parts[10] else 0.0,
                "bg": float(parts[11]) if parts[11] else 0.0,
                "steal": float(parts[12]) if parts[12] else None,
            }
    return rows, meta


def fmt(row, stall_limit):
    if row is None:
        return "—"
    if row["value"] is None:
        return "**" + row["status"] + "**"
    v, unit = row["value"], row["unit"]
    if unit == "s":
        s = f"{v:.2f} s"
    elif unit == "IOPS":
        s = f"{v:,.0f} IOPS"
    else:
        s = f"{v:,.0f} {unit}"
    if row["stall"] >= stall_limit:
        s += f" (stalled {row['stall']:.0f} s)"
    return s


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: sshfs_report.py RESULTS.tsv")
    rows, meta = load(sys.argv[1])
    size_mb = int(meta.get("size_mb", "0") or 0)
    size = f"{size_mb // 1024} GiB" if size_mb and size_mb % 1024 == 0 else f"{size_mb} MiB"
    fields = {
        "size": size,
        "files": f"{int(meta.get('files', '0')):,}",
        "file_kb": meta.get("file_kb", "?"),
        "fio_runtime": meta.get("fio_runtime", "?"),
        "untar_short": meta.get("untar", "?").split(":")[0],
        "tiny": f"{int(meta.get('tiny_files', '0') or 0):,}",
        "cold_runs": meta.get("cold_runs", "1"),
    }
    stall_limit = float(meta.get("stall_limit", "5") or 5)
    quiet_limit = float(meta.get("quiet_limit", "0.15") or 0.15)
    have_local = any(s == "local" for (_, s) in rows)
    systems = SYSTEMS if have_local else SYSTEMS[:2]

    head = ["test", "wormhole", "sshfs"] + (["local disk"] if have_local else [])
    head += ["wormhole/sshfs", "target", "met"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    disturbed, stalls, stolen = [], [], []
    for key, label, kind, target in TESTS:
        got = {s: rows.get((key, s)) for s in systems}
        if all(r is None for r in got.values()):
            continue
        w, s = got["wormhole"], got["sshfs"]
        ratio = None
        if w and s and w["value"] and s["value"]:
            ratio = w["value"] / s["value"] if kind == "rate" else s["value"] / w["value"]
        ratio_s = f"**{ratio:.2f}×**" if ratio is not None else "—"
        target_s = f"≥ {target:g}×" if target else "—"
        if target is None:
            met = "—"
        elif ratio is None:
            met = "no (failed)" if (w and w["value"] is None) else "—"
        else:
            met = "yes" if ratio >= target else "no"
        cells = [label.format(**fields)] + [fmt(got[x], stall_limit) for x in systems]
        out.append("| " + " | ".join(cells + [ratio_s, target_s, met]) + " |")
        for x in ("wormhole", "sshfs"):
            r = got[x]
            if r and (r["rustc"] not in ("", "0") or r["bg"] > quiet_limit):
                disturbed.append(f"{key}/{x} (rustc {r['rustc'] or 0}, {r['bg']:.2f} cores busy before)")
            if r and r["steal"] is not None and r["elapsed"]:
                cores = r["steal"] / max(float(r["elapsed"]), 1e-3)
                if cores > STEAL_LIMIT:
                    stolen.append(f"{key}/{x} ({r['steal']:.2f} CPU-s in {float(r['elapsed']):.1f} s,"
                                  f" {cores:.2f} cores)")
            if r and r["value"] is not None and r["stall"] >= stall_limit:
                stalls.append(f"{key}/{x} ({r['stall']:.1f} s of {float(r['elapsed']):.1f} s)")

    print("## Wormhole vs sshfs")
    print()
    for k in ("date", "machine", "sshfs", "wormhole", "untar", "load", "damon", "vm_reclaim", "duration_s"):
        if k in meta:
            print(f"* {k}: {meta[k]}")
    print()
    print("\n".join(out))
    raw, cold = rows.get(("rawquic", "wormhole")), rows.get(("seqread_cold", "wormhole"))
    if raw and cold and raw["value"] and cold["value"]:
        share = cold["value"] / raw["value"]
        print()
        print(f"Cold sequential read = {share:.0%} of raw QUIC in the same run"
              f" (target ≥ 70 %: {'met' if share >= 0.7 else 'not met'}).")
    warm, page = rows.get(("seqread_warm", "wormhole")), rows.get(("seqread_warm", "local"))
    if warm and page and warm["value"] and page["value"]:
        share = warm["value"] / page["value"]
        print()
        print(f"Warm re-read = {share:.0%} of the local page cache's"
              f" (target ≥ 70 %: {'met' if share >= 0.7 else 'not met'}).")
    print()
    print("Ratio: wormhole/sshfs for rates, sshfs time / wormhole time for times:")
    print("higher is better for wormhole. MB/s = 10^6 bytes/s.")
    print()
    print("CPU seconds used during each step (client = wormhole mount / sshfs + ssh;")
    print("server = wormhole host / sshd + sftp-server; machine = all processes;")
    print("stolen = taken by the hypervisor for other guests, not counted in machine):")
    print()
    print("| test | wormhole client | wormhole server | wormhole machine | wormhole stolen |"
          " sshfs client | sshfs server | sshfs machine | sshfs stolen |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, label, _, _ in TESTS:
        w, s = rows.get((key, "wormhole")), rows.get((key, "sshfs"))
        if not w and not s:
            continue
        cells = [label.format(**fields)]
        for r in (w, s):
            if r and r["value"] is not None:
                machine, client, server = r["cpu"]
                steal = f"{r['steal']:.2f}" if r["steal"] is not None else ""
                cells += [client, server, machine, steal]
            else:
                cells += ["—"] * 4
        print("| " + " | ".join(c or "—" for c in cells) + " |")
    print()
    if stalls:
        print("STALLS (client and server processes used no CPU for that long in a row,")
        print("i.e. waited instead of working): " + ", ".join(stalls) + ".")
        print()
    if stolen:
        print(f"The hypervisor took more than {STEAL_LIMIT:g} cores on average (steal time) during: "
              + "; ".join(stolen) + ". Those figures may be low.")
        print()
    if disturbed:
        print("Other work was running on the machine (rustc seen during the step, or more than"
              f" {quiet_limit:g} cores busy in the 2 s before it) for: " + "; ".join(disturbed)
              + ". Those figures may be low.")
    else:
        print("No other work seen on the machine during the measurements (no rustc,"
              f" at most {quiet_limit:g} cores busy before each step).")


if __name__ == "__main__":
    main()
