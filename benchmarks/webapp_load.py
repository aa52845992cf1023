"""Web app under load: N concurrent uploads to a real server; all must finish; server memory.

Usage (from the repository root):

    python benchmarks/webapp_load.py -n 20 --rounds 3 -o benchmarks/results/webapp_load.md

Starts ``cardioseg serve`` (shipped model unless ``--checkpoint``) on a free loopback port with a
fresh data folder; then, ``--rounds`` times, uploads N synthetic ED/ES pairs from N threads at
once and waits until every job is ``done`` or ``failed``. The server process's resident memory
(``VmRSS`` from ``/proc``) is sampled every 0.2 s from start-up to the end and reported per round,
so a leak shows as growth from round to round. Linux only (``/proc``).
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
    ap.add_argument("--rounds", type=int, default=1, help="bursts of N uploads, one after another")
    ap.add_argument("--timeout", type=float, default=900.0, help="per round")
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
        results: dict[tuple[int, int], dict] = {}
        errors: list[str] = []
        rounds: list[dict[str, float]] = []

        def one(r: int, i: int) -> None:
            try:
                with httpx.Client(base_url=server.url, timeout=120) as c:
                    results[r, i] = upload(c, {"ed": studies["ed"], "es": studies["es"]})
            except Exception as exc:  # reported in the output
                errors.append(f"round {r} upload {i}: {exc}")

        t0 = time.perf_counter()
        for r in range(args.rounds):
            t_round, first = time.perf_counter(), len(samples)
            threads = [threading.Thread(target=one, args=(r, i)) for i in range(args.n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            uploaded_s = time.perf_counter() - t_round
            with httpx.Client(base_url=server.url, timeout=30) as c:
                deadline = time.monotonic() + args.timeout
                while time.monotonic() < deadline:
                    listed = c.get("/api/studies").json()["studies"]
                    if all(s["job"]["state"] in ("done", "failed") for s in listed):
                        break
                    time.sleep(0.5)
            window = samples[first:] or [float("nan")]
            rounds.append(
                {
                    "uploaded_s": uploaded_s,
                    "total_s": time.perf_counter() - t_round,
                    "peak": max(window),
                    "end": rss_mb(server.proc.pid),
                }
            )
        total_s = time.perf_counter() - t0
        stop.set()
        sampler.join()
        server.stop()
    states = [s["job"]["state"] for s in listed]
    total = args.n * args.rounds
    lines = [
        "# Web app under load",
        "",
        f"Command: `python benchmarks/webapp_load.py {' '.join(sys.argv[1:])}`",
        "",
        f"- {args.rounds} round(s) of {args.n} concurrent uploads of a synthetic ED/ES pair "
        f"(192 x 192 x 10, 2 x 1.4 MB) to one real `cardioseg serve` on loopback, model "
        f"`{args.checkpoint.name}`; each round waits until every job has finished.",
        f"- Uploads accepted: {len(results)}/{total} (errors: {errors or 'none'}); studies "
        f"listed: {len(listed)}; jobs done: {states.count('done')}, failed: "
        f"{states.count('failed')}; all finished after {total_s:.1f} s.",
        f"- Server resident memory: {idle:.0f} MB idle (model loaded), peak {max(samples):.0f} MB, "
        f"{samples[-1]:.0f} MB at the end ({len(samples)} samples, every 0.2 s).",
        "",
        "| round | uploads returned after (s) | round finished after (s) | peak RSS (MB) | "
        "RSS at the end of the round (MB) |",
        "|---|---|---|---|---|",
        *(
            f"| {k + 1} | {r['uploaded_s']:.1f} | {r['total_s']:.1f} | {r['peak']:.0f} | "
            f"{r['end']:.0f} |"
            for k, r in enumerate(rounds)
        ),
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
