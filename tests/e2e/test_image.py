"""The image: `make image-rootfs` lays out what deploy/image/Containerfile builds (Docker is not
available here, so the rootfs run is the proof the image works). `make test` runs this module
and test_spine.py with LOUPE_AGENT_ROOTFS set: the agent then runs from the rootfs (chroot in
the lab's node netns, conftest.agent_argv) through the spine scenario."""
import json
import os
import re
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, ROOTFS, in_pod, loupe, run

pytestmark = pytest.mark.skipif(ROOTFS is None, reason="runs from the image rootfs: LOUPE_AGENT_ROOTFS=.build/image-rootfs (make test)")


def chroot(*argv):
    """`argv` inside the rootfs, with /proc mounted as every container has it (the Swift
    runtime reads its arguments from /proc/self/cmdline)."""
    return run("unshare", "-m", "sh", "-c", 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"', ROOTFS, *argv)


def test_the_rootfs_holds_what_the_containerfile_copies_and_the_daemonset_runs():
    containerfile = (REPO / "deploy/image/Containerfile").read_text()
    copies = [line.split()[1:] for line in containerfile.splitlines() if line.startswith("COPY ")]
    for *sources, target in copies:
        for source in sources:
            if source.startswith("deploy/image/"):
                continue
            path = target + Path(source).name if target.endswith("/") else target
            assert (Path(ROOTFS) / path.lstrip("/")).is_file(), f"{path} (COPY {source}) is not in the rootfs"
    # The DaemonSet's command and BPF object are where the image puts them.
    daemonset = yaml.safe_load((REPO / "deploy/kubernetes/daemonset.yaml").read_text())
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert (Path(ROOTFS) / container["command"][0].lstrip("/")).is_file()
    args = " ".join(container["args"])
    bpf_object = re.search(r"--bpf-object[= ](\S+)", args)
    if bpf_object:
        assert (Path(ROOTFS) / bpf_object.group(1).lstrip("/")).is_file()


def test_the_binary_carries_the_swift_runtime_and_resolves_in_the_rootfs():
    libraries = chroot("/usr/bin/ldd", "/usr/local/bin/loupe").stdout
    assert "not found" not in libraries, libraries
    assert "libswift" not in libraries and "libFoundation" not in libraries, libraries
    assert chroot("/usr/local/bin/loupe", "--version").stdout.strip() == "0.1.0"
    size = sum(f.stat().st_size for f in Path(ROOTFS).rglob("*") if f.is_file() and not f.is_symlink()
               and not str(f).startswith((f"{ROOTFS}/proc/", f"{ROOTFS}/sys/", f"{ROOTFS}/dev/")))
    print(f"\nimage rootfs: {size / (1 << 20):.0f} MiB, loupe {os.path.getsize(f'{ROOTFS}/usr/local/bin/loupe') / (1 << 20):.0f} MiB")


def test_the_agent_is_the_rootfs_binary_and_records_http_and_dns(running_agent):
    assert os.readlink(f"/proc/{running_agent.pid}/root") == ROOTFS
    assert os.readlink(f"/proc/{running_agent.pid}/exe").endswith("/usr/local/bin/loupe")
    for _ in range(50):
        code = in_pod("shop/client", "curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}",
                      "http://198.18.0.11/image/check", check=False).stdout
        if code == "200":
            break
        time.sleep(0.2)
    assert code == "200"
    assert in_pod("shop/client", "kdig", "+short", "+time=2", "+retry=1", "@198.19.0.10", "api.example.test", "A").stdout.strip() == "198.19.0.11"
    assert in_pod("shop/client", "curl", "-s", "-m", "5", "http://198.18.0.11/peer").stdout.strip() == "198.18.0.10"
    recorded = [json.loads(l)["flow"] for l in loupe("observe", "--last", "50", "-o", "json").stdout.splitlines()]
    assert any(f.get("l7", {}).get("http", {}).get("url", "").endswith("/image/check") for f in recorded)
    assert any(f.get("l7", {}).get("dns", {}).get("query") == "api.example.test." for f in recorded)
    status = json.loads(loupe("status", "-o", "json").stdout)
    assert status["version"] == "0.1.0" and status["datapath"]["assigned_listener"] > 0
