"""Web app timings (upload → report done) and a kill -9 durability check on a real server.

Usage (from the repository root):

    python benchmarks/webapp_benchmark.py                      # shipped model
    python benchmarks/webapp_benchmark.py --checkpoint my.pt   # any checkpoint

Starts ``cardioseg serve`` as a subprocess on a free loopback port with a fresh data folder,
uploads a 2-phase ED/ES synthetic study and a 25-phase synthetic cine, and times each from the
start of the upload to the job being done. Then the durability check: a new server gets a
finished study and a cine, is killed with SIGKILL while the cine's analysis runs, and is started
again on the same data folder; the interrupted job must end done (re-queued) or failed with a
reason, and no uploaded study or finished result may be lost. Writes
``benchmarks/results/webapp.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``cardioseg serve`` in a subprocess (its output goes to a log file)."""

    def __init__(self, data_dir: Path, checkpoint: Path, log: Path, threads: int | None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.log = open(log, "ab")
        cmd = [
            sys.executable,
            "-m",
            "cardioseg.cli.main",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(data_dir),
            "--model",
            str(checkpoint),
        ]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.logfile = log
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.logfile.read_text()[-2000:]}")
            try:
                h = httpx.get(self.url + "/api/health", timeout=2).json()
                if h.get("model_ready"):
                    return
                if h.get("model_error"):
                    raise RuntimeError(h["model_error"])
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.log.close()


def make_studies(folder: Path, shape: tuple[int, int], slices: int, frames: int) -> dict:
    """Synthetic ED/ES pair and cine NIfTI files."""
    import nibabel as nib

    from cardioseg.data.synthetic import PhantomConfig, make_cine, make_phantom, write_phantom

    cfg = PhantomConfig(seed=11, shape=shape, spacing=1.5 * 192 / max(shape), n_slices=slices)
    files = write_phantom(make_phantom(cfg), folder, "pair")
    cine = make_cine(cfg, frames)
    cine_path = folder / "cine.nii.gz"
    nib.save(nib.Nifti1Image(cine.image.astype(np.float32), cine.affine), str(cine_path))
    return {
        "ed": files["pair_ED"],
        "es": files["pair_ES"],
        "cine": cine_path,
        "shape": (*shape, slices),
        "frames": frames,
    }


def upload(client: Any, files: dict[str, Path]) -> dict:
    parts = {k: (p.name, p.read_bytes()) for k, p in files.items()}
    r = client.post("/api/studies", files=parts)
    if r.status_code != 201:
        raise RuntimeError(f"upload refused: {r.status_code} {r.text}")
    return r.json()


def wait_job(client: Any, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise RuntimeError(f"job {job_id} not finished after {timeout} s")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def timings(ckpt: Path, studies: dict, work: Path, threads: int | None, timeout: float) -> list:
    import httpx

    server = Server(work / "timing-data", ckpt, work / "server-timing.log", threads)
    rows = []
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            for label, files, n in (
                ("ED/ES pair (2 phases)", {"ed": studies["ed"], "es": studies["es"]}, 2),
                (
                    f"cine ({studies['frames']} phases)",
                    {"file": studies["cine"]},
                    studies["frames"],
                ),
            ):
                size = sum(p.stat().st_size for p in files.values())
                t0 = time.perf_counter()
                up = upload(client, files)
                t_up = time.perf_counter() - t0
                job = wait_job(client, up["job"]["id"], timeout)
                t_done = time.perf_counter() - t0
                report = (
                    client.get(f"/api/studies/{up['study']['id']}/results").json()
                    if job["state"] == "done"
                    else {}
                )
                rows.append(
                    {
                        "study": label,
                        "frames": n,
                        "bytes": size,
                        "upload_s": t_up,
                        "done_s": t_done,
                        "state": job["state"],
                        "analysis_s": (report.get("meta") or {}).get("seconds"),
                        "error": job.get("error"),
                    }
                )
                print(
                    f"{label}: upload {t_up:.2f} s, upload→done {t_done:.1f} s ({job['state']})",
                    flush=True,
                )
    finally:
        server.stop()
    return rows


def durability(ckpt: Path, studies: dict, work: Path, threads: int | None, timeout: float) -> dict:
    import httpx

    data = work / "kill-data"
    log = work / "server-kill.log"
    out: dict[str, Any] = {}
    server = Server(data, ckpt, log, threads)
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            first = upload(client, {"ed": studies["ed"], "es": studies["es"]})
            wait_job(client, first["job"]["id"], timeout)
            cine = upload(client, {"file": studies["cine"]})
            before = {s["id"]: s for s in client.get("/api/studies").json()["studies"]}
            inputs = {
                sid: {p.name: sha256(p) for p in (data / "studies" / sid / "input").iterdir()}
                for sid in before
            }
            # kill -9 while the cine's analysis runs
            deadline = time.monotonic() + timeout
            job = cine["job"]
            while time.monotonic() < deadline:
                job = client.get(f"/api/jobs/{cine['job']['id']}").json()
                if job["state"] != "queued" and (
                    job["progress"] >= 0.1 or job["state"] != "running"
                ):
                    break
                time.sleep(0.02)
            out["state_at_kill"] = (
                f"{job['state']} ({100 * job['progress']:.0f} %, {job['message']})"
            )
            out["killed_while_running"] = job["state"] == "running"
    except BaseException:
        server.stop()
        raise
    server.kill9()
    server.log.close()
    print(f"killed -9 with the cine job {out['state_at_kill']}", flush=True)

    t0 = time.perf_counter()
    server = Server(data, ckpt, log, threads)
    try:
        out["restart_s"] = time.perf_counter() - t0
        with httpx.Client(base_url=server.url, timeout=600) as client:
            job = wait_job(client, cine["job"]["id"], timeout)
            out["recovered_s"] = time.perf_counter() - t0
            out["final_state"] = job["state"]
            out["attempts"] = job["attempts"]
            out["error"] = job["error"]
            after = {s["id"]: s for s in client.get("/api/studies").json()["studies"]}
            out["studies_before"], out["studies_after"] = len(before), len(after)
            out["studies_lost"] = sorted(set(before) - set(after))
            out["inputs_intact"] = all(
                {p.name: sha256(p) for p in (data / "studies" / sid / "input").iterdir()} == h
                for sid, h in inputs.items()
                if sid in after
            )
            first_result = client.get(f"/api/studies/{first['study']['id']}/results")
            out["finished_result_kept"] = first_result.status_code == 200
            leftovers = list((data / "tmp").iterdir()) + [
                q
                for sid in after
                for q in (data / "studies" / sid).iterdir()
                if q.name.startswith(".")
            ]
            out["leftover_temp_files"] = len(leftovers)
    finally:
        server.stop()
    ok = (
        not out["studies_lost"]
        and out["inputs_intact"]
        and out["finished_result_kept"]
        and (out["final_state"] == "done" or (out["final_state"] == "failed" and out["error"]))
    )
    out["passed"] = bool(ok)
    print(
        f"after restart: {out['final_state']} (attempt {out['attempts']}), studies "
        f"{out['studies_before']} → {out['studies_after']}, passed={ok}",
        flush=True,
    )
    return out


def write_markdown(
    path: Path,
    args: argparse.Namespace,
    ckpt: Path,
    tiny: bool,
    studies: dict,
    rows: list,
    dur: dict,
) -> None:
    from cardioseg.io.nifti import atomic_write

    lines = [
        "# Web app: upload → report timings and kill -9 durability",
        "",
        f"Command: `python benchmarks/webapp_benchmark.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"- Machine: {platform.platform()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}; torch threads: {args.threads or 'default'}.",
        f"- Checkpoint: `{ckpt.name}`"
        + (
            " (a tiny random model: the numbers measure the web app, queue and report overhead, "
            "not the real model; segmentation masks are meaningless)"
            if tiny
            else ""
        )
        + ".",
        f"- Synthetic studies (`cardioseg.data.synthetic`): grid {studies['shape'][0]} x "
        f"{studies['shape'][1]} x {studies['shape'][2]} slices; the cine has "
        f"{studies['frames']} phases. PDF reports on (server default).",
        "- Server: `cardioseg serve` subprocess on 127.0.0.1, fresh data folder, one worker "
        "thread; times are wall-clock from the start of the HTTP upload to the job state `done` "
        "(polled every 0.1 s).",
        "",
        "## Upload → report done",
        "",
        "| study | upload size | upload (s) | upload → done (s) | analysis in worker (s) | state |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        an = "" if r["analysis_s"] is None else f"{r['analysis_s']:.1f}"
        lines.append(
            f"| {r['study']} | {r['bytes'] / 1e6:.1f} MB | {r['upload_s']:.2f} | "
            f"{r['done_s']:.1f} | {an} | {r['state']} |"
        )
    lines += [
        "",
        "`analysis in worker` is `meta.seconds` of report.json (load, segmentation of every "
        "frame, ED and ES again with TTA for the labels and the QC uncertainty); the rest of "
        "upload → done is upload checks, queueing, report files and the slice-viewer cache.",
        "",
        "## kill -9 during an analysis",
        "",
        "A server with one finished study (ED/ES pair) and a cine being analysed was killed with "
        "SIGKILL, then started again on the same data folder.",
        "",
        f"- Cine job when killed: {dur['state_at_kill']}"
        + (
            ""
            if dur["killed_while_running"]
            else " (the job was not running at the kill; rerun with a larger study)"
        )
        + ".",
        f"- After the restart: job **{dur['final_state']}** on attempt {dur['attempts']}"
        + (f", reason: {dur['error']}" if dur["error"] else "")
        + f"; {dur['recovered_s']:.1f} s from restart to the job's end "
        f"(server ready in {dur['restart_s']:.1f} s).",
        f"- Studies before / after: {dur['studies_before']} / {dur['studies_after']}; lost: "
        f"{len(dur['studies_lost'])}; uploaded files byte-identical: "
        f"{'yes' if dur['inputs_intact'] else 'NO'}; finished result kept: "
        f"{'yes' if dur['finished_result_kept'] else 'NO'}; temporary leftovers: "
        f"{dur['leftover_temp_files']}.",
        f"- Verdict: **{'passed' if dur['passed'] else 'FAILED'}**.",
        "",
    ]
    with atomic_write(path) as tmp:
        tmp.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="model checkpoint (default: the shipped weights)",
    )
    ap.add_argument(
        "-o", "--output", type=Path, default=REPO / "benchmarks" / "results" / "webapp.md"
    )
    ap.add_argument("--shape", type=int, nargs=2, default=(192, 192), help="in-plane size")
    ap.add_argument("--slices", type=int, default=10)
    ap.add_argument("--frames", type=int, default=25, help="phases of the cine")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per job")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="mark the checkpoint as a random test model in the report",
    )
    args = ap.parse_args()
    try:
        import httpx  # noqa: F401
    except ImportError:
        sys.exit("needs httpx: pip install -e '.[dev]'")
    if args.checkpoint is None:
        from cardioseg.models.checkpoint import default_checkpoint_path

        args.checkpoint = default_checkpoint_path()
        if not args.checkpoint.is_file():
            sys.exit(
                f"the shipped weights are not there yet ({args.checkpoint}); pass --checkpoint PATH"
            )
    if not args.checkpoint.is_file():
        sys.exit(f"checkpoint not found: {args.checkpoint}")
    with tempfile.TemporaryDirectory(prefix="cardioseg-webapp-bench-") as tmp:
        work = Path(tmp)
        studies = make_studies(work / "studies", tuple(args.shape), args.slices, args.frames)
        rows = timings(args.checkpoint, studies, work, args.threads, args.timeout)
        dur = durability(args.checkpoint, studies, work, args.threads, args.timeout)
        write_markdown(args.output, args, args.checkpoint, args.tiny, studies, rows, dur)
    print(f"-> {args.output}")
    if not dur["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
