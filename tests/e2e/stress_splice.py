"""Splice under CPU contention (not part of `make test`: `make splice-stress`).

Kernel 6.18 now and then hands a busy spliced socket's verdict an skb that starts with bytes it
already forwarded; the verdict cuts them off (`kernel_trimmed_skbs`). Without that, ~2-5 % of
these 200 MiB echo transfers came back with one skb's bytes twice. This runs N transfers with
HOGS CPU-burning processes beside them and asserts every one exact; it prints how many skbs the
verdict trimmed or dropped. Env: N (default 60), HOGS (2), MIB (200).
"""
import os
import subprocess

from test_splice import bulk_transfer, splice_counters


def test_echo_transfers_under_cpu_contention_are_exact(running_agent):
    n, hogs, mib = int(os.environ.get("N", "60")), int(os.environ.get("HOGS", "2")), int(os.environ.get("MIB", "200"))
    before = splice_counters()
    burners = [subprocess.Popen(["python3", "-c", "while True: pass"]) for _ in range(hogs)]
    wrong = []
    try:
        for i in range(n):
            out, _ = bulk_transfer(running_agent, mib)
            if out != ["True", str(mib << 20)]:
                wrong.append((i, out))
    finally:
        for b in burners:
            b.kill()
            b.wait()
    after = splice_counters()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in
             ("started", "kernel_trimmed_skbs", "kernel_repeated_skbs", "kernel_untrimmed_skbs")}
    print(f"{n} transfers of {mib} MiB beside {hogs} CPU hogs: {len(wrong)} wrong; {delta}")
    assert not wrong, wrong
    assert delta["started"] == n
