"""`busflow demo`: seconds from upload to result in headless Chromium, for the U-Net and the multi-task model.

    python benchmarks/demo_latency.py [--repeats 5] [--size 256] [--results DIR]

Without --results, the page serves the two networks at their paper-sized default width and 256² input
(weights as initialised: latency does not depend on them) from a scratch results folder. Each repeat opens
the page, uploads a 400 × 500 px phantom scan, presses Analyse and waits until the summary line shows the
result; the first repeat of a model includes loading it. Needs Debian's chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from browser import start_chromium, upload_and_analyse  # noqa: E402
from predict_speed import MODELS, save_untrained, scans  # noqa: E402

RUN = "latency"


def serve(results: Path, scratch: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, GRADIO_TEMP_DIR=str(scratch / "uploads"), GRADIO_ANALYTICS_ENABLED="False")
    server = subprocess.Popen([sys.executable, "-m", "busflow.cli", "demo", "--results", str(results), "--port", str(port)],
                              env=env, stdout=open(scratch / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(180):
        try:
            urllib.request.urlopen(url, timeout=5)
            return server, url
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(1)
    server.terminate()
    raise SystemExit(f"the demo did not start:\n{(scratch / 'server.log').read_text()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--results", type=Path, help="serve this results folder instead (models keyed <run>/<model>/fold0)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="busflow-demo-latency-"))
    images = sorted(scans(scratch, args.repeats).glob("*.png"))
    if args.results:
        results, run = args.results, next(p.name for p in sorted(args.results.iterdir()) if (p / "models").is_dir())
    else:
        results, run = scratch / "results", RUN
        for name, (arch, options) in MODELS.items():
            save_untrained(results / RUN / "models" / name / "fold0", arch, options, args.size)
    keys = [f"{run}/{name}/fold0" for name in MODELS]
    server, url = serve(results, scratch)
    driver = start_chromium(scratch / "profile")
    try:
        print(f"{len(images)} uploads per model of 400 × 500 px phantom scans; CPU threads {os.cpu_count()}")
        for key in keys:
            seconds = [upload_and_analyse(driver, f"{url}?model={key}", image) for image in images]
            print(f"{key:>28}: first {seconds[0]:.2f} s (loads the model), then median {statistics.median(seconds[1:]):.2f} s "
                  f"(min {min(seconds[1:]):.2f}, max {max(seconds[1:]):.2f})")
    finally:
        driver.quit()
        server.terminate()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
