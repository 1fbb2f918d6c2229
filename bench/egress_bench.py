"""The egress filter's cost: an allowed HTTPS download through the domain filter (the egress proxy, which
reads the SNI and splices) and through header injection (TLS intercepted), against the same download with
no policy (the kernel's NAT path alone).

    sudo .venv/bin/python bench/egress_bench.py                    # 30 small GETs and 5 x 100 MB per path
    sudo .venv/bin/python bench/egress_bench.py --runs 50 --size-mb 20

It needs root and no VM: a sandbox network of the agent's own code (`NetworkManager.setup(...,
guest_link="veth")`, the test-only fake guest: a netns where the guest's eth0 is a veth) with the real
rules and the real egress proxy, in this process's event loop, and a test internet of its own
(tests/network/_internet.py: a netns on 198.18/15 with HTTPS servers, their CA and a DNS server). The
"guest" is curl run in the fake guest's netns, so what is measured is the data path, not an emulated CPU.
Everything it made is removed at the end, also on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from _common import REPO, Row, Series, now, row_table, write_results

sys.path.insert(0, str(REPO))

from tests.network._internet import Internet, start_internet

from wrenn.agent.network import NetworkConfig, NetworkManager, parse_policy
from wrenn.controlplane.service.network import new_ca

NAME = "a.netpol.test"


async def curl(netns: str, url: str, address: str, cafile: Path) -> tuple[float, float]:
    """(seconds to the last byte, bytes per second) of one GET from inside `netns`."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, "curl", "-sS", "-o", "/dev/null", "--cacert", str(cafile),
        "--resolve", f"{NAME}:443:{address}", "-w", "%{time_total} %{speed_download}", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"curl {url} failed: {err.decode().strip()}")
    seconds, speed = out.decode().split()
    return float(seconds), float(speed)


async def run(args: argparse.Namespace, internet: Internet) -> dict[str, object]:
    tag = f"eb{os.getpid() % 1000:03d}x"
    manager = NetworkManager(
        NetworkConfig(slots=2, prefix=tag, dns=(internet.dns,), upstream_ca=str(internet.ca),
                      host_net="10.241.0.0/16", veth_net="10.242.0.0/16")
    )  # fmt: skip
    ca_cert, ca_key = new_ca("egress-bench")
    both = Path(internet.directory) / "both-cas.pem"
    both.write_text(internet.ca.read_text() + ca_cert)
    policies = {
        "no policy": parse_policy(),
        "domain filter": parse_policy([NAME], ["0.0.0.0/0"]),
        "header injection": parse_policy(
            [NAME], ["0.0.0.0/0"], rules={NAME: {"X-Api-Key": "bench"}},
            ca_cert_pem=ca_cert.encode(), ca_key_pem=ca_key.encode(),
        ),
    }  # fmt: skip
    await manager.start()
    net = await manager.setup(1, guest_link="veth", policy=policies["no policy"], sandbox_id="bench")
    address = internet.address(10)
    small, big = f"https://{NAME}/", f"https://{NAME}/bytes/{args.size_mb * 1_000_000}"
    latency: dict[str, Series] = {n: Series(f"GET / ({n})") for n in policies}
    throughput: dict[str, list[float]] = {n: [] for n in policies}
    try:
        for policy in policies.values():  # warm-up: caches, leaf certificate, DNS
            await manager.set_policy(net, "bench", policy)
            await curl(net.guest_netns, small, address, both)
        for _ in range(args.runs):  # interleaved, so that load on the machine hits every path alike
            for name, policy in policies.items():
                await manager.set_policy(net, "bench", policy)
                latency[name].samples.append((await curl(net.guest_netns, small, address, both))[0])
        for _ in range(args.big_runs):
            for name, policy in policies.items():
                await manager.set_policy(net, "bench", policy)
                throughput[name].append((await curl(net.guest_netns, big, address, both))[1])
    finally:
        await manager.teardown(net)
        await manager.uninstall()
    base = latency["no policy"]
    rows = [Row(latency[n], base) for n in ("domain filter", "header injection")]
    print(row_table(rows, added=True))
    print(f"\n{args.size_mb} MB download, MB/s (median of {args.big_runs}):")
    for name, speeds in throughput.items():
        speeds.sort()
        median, low, high = speeds[len(speeds) // 2] / 1e6, speeds[0] / 1e6, speeds[-1] / 1e6
        print(f"  {name:18} {median:8.1f}   (min {low:.1f}, max {high:.1f})")
    return {
        "latency": [r.to_json() for r in rows],
        "throughput_bytes_per_s": throughput,
        "size_mb": args.size_mb,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=30, help="small GETs per path")
    p.add_argument("--big-runs", type=int, default=5, help="large downloads per path")
    p.add_argument("--size-mb", type=int, default=100)
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("egress_bench needs root (network namespaces)")
    started = now()
    internet = start_internet(f"eb{os.getpid() % 10000:04d}")
    try:
        report = asyncio.run(run(args, internet))
    finally:
        internet.stop()
    write_results("egress", started, report)


if __name__ == "__main__":
    main()
