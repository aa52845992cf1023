"""Web app under load: N concurrent uploads to a real server; all must finish; server memory.

Usage (from the repository root):

    python benchmarks/webapp_load.py -n 20 -o benchmarks/results/webapp_load.md

Starts ``cardioseg serve`` (shipped model unless ``--checkpoint``) on a free loopback port with a
fresh data folder, uploads N synthetic ED/ES pairs from N threads at once, waits until every job
is ``done`` or ``failed``, and samples the server process's resident memory (``VmRSS`` from
``/proc``) every 0.2 s from start-up to the end. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from webapp_benchmark import Server, make_studies, upload  # noqa: E402

from cardioseg.models import default_checkpoint_path  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=20, help="concurrent uploads")
    ap.add_argument("--checkpoint", type=Path, default=default_checkpoint_path())
    ap.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/webapp_load.md"))
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        studies = make_studies(work / "in", (192, 192), 10, 2)
        server = Server(work / "data", args.checkpoint, work / "server.log", None)
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(rss_mb(server.proc.pid))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        idle = rss_mb(server.proc.pid)
        results: dict[int, dict] = {}
        errors: list[str] = []

        def one(i: int) -> None:
            try:
                with httpx.Client(base_url=server.url, timeout=120) as c:
                    results[i] = upload(c, {"ed": studies["ed"], "es": studies["es"]})
            except Exception as exc:  # reported in the output
                errors.append(f"{i}: {exc}")

        t0 = time.perf_counter()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(args.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        uploaded_s = time.perf_counter() - t0
        with httpx.Client(base_url=server.url, timeout=30) as c:
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                listed = c.get("/api/studies").json()["studies"]
                if all(s["job"]["state"] in ("done", "failed") for s in listed):
                    break
                time.sleep(0.5)
        total_s = time.perf_counter() - t0
        stop.set()
        sampler.join()
        server.stop()
    states = [s["job"]["state"] for s in listed]
    lines = [
        "# Web app under load",
        "",
        f"Command: `python benchmarks/webapp_load.py {' '.join(sys.argv[1:])}`",
        "",
        f"- {args.n} concurrent uploads of a synthetic ED/ES pair (192 x 192 x 10, 2 x 1.4 MB) "
        f"to a real `cardioseg serve` on loopback, model `{args.checkpoint.name}`.",
        f"- Uploads accepted: {len(results)}/{args.n} (errors: {errors or 'none'}), all uploads "
        f"returned after {uploaded_s:.1f} s; studies listed: {len(listed)}; jobs done: "
        f"{states.count('done')}, failed: {states.count('failed')}; all finished after "
        f"{total_s:.1f} s.",
        f"- Server resident memory: {idle:.0f} MB idle (model loaded), peak {max(samples):.0f} MB "
        f"during the run, {samples[-1]:.0f} MB at the end ({len(samples)} samples, every 0.2 s).",
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
