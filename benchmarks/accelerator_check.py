"""The accelerator check: devices, the fast tests, the train-step grid, the
online inference speed and the VPQ evaluator, as one JSON file and a table.

    python benchmarks/accelerator_check.py [--cpu] [--out FILE]
        [--budget_s 480] [--tests fast|none|PATH...]

Run by `benchmarks/accelerator_check.sh` (which installs the CUDA build of
jax first); see that script. On a GPU:
- tests: `pytest -m "not slow"` on the GPU (tests written for 4 simulated
  CPU devices fail there; the count of failures is recorded, not fatal);
- train: `base` and `fusetrack` at 800x1600 (the release's crops) and
  512x1024, float32 and bfloat16, batch 1 and the largest batch that fits
  (estimated from batch 1's peak device memory, halved until it runs),
  each in a fresh process (benchmarks/train_step.py's measurement: the
  real pipeline and pmap-ed step): compile s, steady-state step s,
  images/s, peak device memory;
- inference: frames/s of the full online pipeline at 1024x2048
  (benchmarks/inference.py's measurement) and its peak device memory;
- VPQ: benchmarks/vpq_eval.py on 2 generated videos at 1024x2048.
Configurations run in priority order (fusetrack 800x1600 first) until
`--budget_s` of benchmark time is spent; the rest are recorded as skipped.

With `--cpu` (or when no GPU is found) everything runs on the CPU at the
tiny sizes (tests/vps_tiny.py): a small test file, fusetrack bfloat16 at
batch 1, inference on the synthetic config, VPQ on one small video; CI
runs it (tests/test_accelerator_check.py) so that the script cannot rot.

The last line is `gpu_train_images_per_s=<x>`: fusetrack at 800x1600 in its
faster precision, largest batch (nan on the CPU).
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))


def _env(cpu: bool) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  env["JAX_PLATFORMS"] = "cpu" if cpu else ""
  return env


def _result(cmd, env, timeout) -> dict:
  """Runs a benchmark child; its `RESULT {json}` line, or {"error": ...}."""
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=timeout, check=False, cwd=ROOT)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s",
            "wall_s": time.perf_counter() - t0}
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      out = json.loads(line[len("RESULT "):])
      out["wall_s"] = time.perf_counter() - t0
      return out
  tail = (proc.stderr or proc.stdout)[-2000:]
  oom = bool(re.search(r"RESOURCE_EXHAUSTED|[Oo]ut of memory", tail))
  return {"error": "out of memory" if oom else f"exit {proc.returncode}",
          "log_tail": tail, "wall_s": time.perf_counter() - t0}


_DEVICES = """
import json, jax
d = jax.devices()
print("RESULT " + json.dumps({"jax": jax.__version__,
    "backend": jax.default_backend(), "devices": [str(x) for x in d],
    "device_kind": d[0].device_kind, "count": len(d)}))
"""


def devices(env) -> dict:
  """The devices jax sees, asked in a child process (this one never
  initialises a GPU: the children get all of its memory)."""
  out = _result([sys.executable, "-c", _DEVICES], env, 300)
  if "error" in out:
    raise RuntimeError(f"jax failed to start: {out.get('log_tail', '')}")
  out.pop("wall_s", None)
  return dict(out, host=platform.node(), cpu_count=os.cpu_count())


def run_tests(selection, env, timeout) -> dict:
  """pytest on `selection` (paths and options); counts from its summary."""
  cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         *selection]
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=timeout, check=False, cwd=ROOT)
    out, rc = proc.stdout, proc.returncode
  except subprocess.TimeoutExpired as e:
    out = e.stdout.decode() if isinstance(e.stdout, bytes) else (
        e.stdout or "")
    rc = "timeout"
  counts = {k: int(v) for v, k in re.findall(
      r"(\d+) (passed|failed|error|errors|skipped|deselected)", out)}
  failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
  return {"command": " ".join(cmd[1:]), "returncode": rc, **counts,
          "failures": failed[:50], "seconds": time.perf_counter() - t0}


def train_run(variant, size, dtype, batch, steps, data_dir, env, timeout):
  cmd = [sys.executable, os.path.join(HERE, "train_step.py"), "--child",
         variant, "--size", size, "--steps", str(steps), "--data_dir",
         data_dir, "--batch", str(batch), "--dtype", dtype, "--no_flops"]
  out = _result(cmd, env, timeout)
  out.update(variant=variant, size=size, dtype=dtype, batch=batch)
  return out


def _largest_batch_candidate(first: dict, max_batch: int) -> int:
  """From batch 1's peak and the device's limit: the batch that should fit
  (activations scale with the batch; the weights and optimizer state do
  not, so this is conservative)."""
  peak, limit = first.get("peak_device_mb"), first.get("device_limit_mb")
  if not peak or not limit or math.isnan(peak) or math.isnan(limit):
    return min(2, max_batch)
  return max(1, min(max_batch, int(0.9 * limit / peak)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cpu", action="store_true",
                      help="the CPU at tiny sizes (default when no GPU)")
  parser.add_argument("--out", default="",
                      help="JSON file (default benchmarks/results/"
                           "accelerator_check_<device>_<date>.json)")
  parser.add_argument("--budget_s", type=float, default=480.0,
                      help="benchmark time after which configurations "
                           "are skipped")
  parser.add_argument("--tests", nargs="*", default=None,
                      help="pytest selection ('none': no tests); default: "
                           "'-m not slow tests' on a GPU, one small file "
                           "on the CPU")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--max_batch", type=int, default=16)
  args = parser.parse_args()

  start = time.perf_counter()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ["JAX_PLATFORMS"] = "cpu"  # This process: data writing only.
  sys.path.insert(0, ROOT)
  info = devices(_env(args.cpu))
  cpu = args.cpu or info["backend"] != "gpu"
  if cpu and not args.cpu:
    print(f"no GPU found (backend {info['backend']}): running the CPU check",
          file=sys.stderr)
    info = devices(_env(True))
  env = _env(cpu)
  report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "mode": "cpu-tiny" if cpu else "gpu", "devices": info}
  print(f"devices: {info['devices']} ({info['device_kind']}), jax "
        f"{info['jax']}", flush=True)

  selection = args.tests
  if selection is None:
    selection = (["tests/ops/test_bfloat16.py"] if cpu else
                 ["-m", "not slow", "-x", "--maxfail=20", "tests"])
  if selection != ["none"]:
    report["tests"] = run_tests(selection, env, 120 if cpu else 300)
    print(f"tests: {report['tests']}", flush=True)

  if cpu:
    train_grid = [("fusetrack", "tiny", "bfloat16")]
    largest = []
    inference_size, vpq_args = "synthetic", ["--videos", "1", "--height",
                                             "64", "--width", "128",
                                             "--skip_hotcoco"]
    steps, max_batch = 2, 1
  else:
    release, paper = "800x1600", "512x1024"
    train_grid = [("fusetrack", release, "bfloat16"),
                  ("fusetrack", release, "float32"),
                  ("base", release, "bfloat16"), ("base", release, "float32"),
                  ("fusetrack", paper, "bfloat16"),
                  ("fusetrack", paper, "float32"),
                  ("base", paper, "bfloat16"), ("base", paper, "float32")]
    largest = [g for g in train_grid if g[1] == release] + [
        g for g in train_grid if g[1] == paper]
    inference_size, vpq_args = "1024x2048", ["--videos", "2",
                                             "--skip_hotcoco"]
    steps, max_batch = args.steps, args.max_batch

  def left() -> float:
    return args.budget_s - (time.perf_counter() - start)

  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  rows, skipped = [], []
  with tempfile.TemporaryDirectory() as tmp:
    data = {}

    def data_dir(size):
      if size not in data:
        data[size] = os.path.join(tmp, size)
        train_step._write_data(size, data[size])  # pylint: disable=protected-access
      return data[size]

    def train(variant, size, dtype, batch):
      if left() <= 0:
        skipped.append(f"train {variant} {size} {dtype} batch {batch}")
        return None
      r = train_run(variant, size, dtype, batch, steps, data_dir(size), env,
                    max(60.0, left()))
      rows.append(r)
      print(f"train: {_row(r)}", flush=True)
      return r

    first = {}
    for variant, size, dtype in train_grid[:2]:
      first[variant, size, dtype] = train(variant, size, dtype, 1)
    # Inference and VPQ before the rest of the grid.
    if left() > 0:
      cmd = [sys.executable, os.path.join(HERE, "inference.py"), "--child",
             inference_size, "--frames", "3" if cpu else "12"]
      report["inference"] = _result(cmd, env, max(60.0, left()))
      print(f"inference: {report['inference']}", flush=True)
    else:
      skipped.append(f"inference {inference_size}")
    if left() > 0:
      report["vpq"] = _vpq(vpq_args, env, max(60.0, left()))
      print(f"vpq: {report['vpq']}", flush=True)
    else:
      skipped.append("vpq")
    for g in train_grid[2:]:
      first[g] = train(*g, 1)
    for g in largest:
      r = first.get(g)
      if not r or "error" in r:
        continue
      batch = _largest_batch_candidate(r, max_batch)
      while batch > 1:
        out = train(*g, batch)
        if out is None or "error" not in out:
          break
        batch //= 2

  report["train"] = rows
  report["skipped"] = skipped
  report["seconds"] = time.perf_counter() - start
  best = [r for r in rows if r["variant"] == "fusetrack" and
          r["size"] == "800x1600" and "error" not in r]
  value = max((r["images_per_s"] for r in best), default=float("nan"))
  report["gpu_train_images_per_s"] = value
  out = args.out or os.path.join(
      HERE, "results", f"accelerator_check_{report['mode']}_"
      f"{re.sub(r'[^A-Za-z0-9]+', '_', info['device_kind'])}_"
      f"{datetime.date.today().isoformat()}.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(report, f, indent=1, sort_keys=True)
  _table(report)
  print(f"wrote {out}")
  print(f"gpu_train_images_per_s={value:.3f}")


def _vpq(vpq_args, env, timeout) -> dict:
  cmd = [sys.executable, os.path.join(HERE, "vpq_eval.py"), *vpq_args]
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=timeout, check=False, cwd=ROOT)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s"}
  out = {"wall_s": time.perf_counter() - t0, "returncode": proc.returncode}
  m = re.search(r"python -m eval\.vpq \(k = [\d, ]+\)\s+([\d.]+)",
                proc.stdout)
  if m:
    out["seconds_end_to_end"] = float(m.group(1))
  m = re.search(r"speedup_vs_numpy_reference=([\d.]+)", proc.stdout)
  if m:
    out["speedup_vs_numpy_reference"] = float(m.group(1))
  if proc.returncode:
    out["error"] = proc.stderr[-2000:]
  return out


def _row(r) -> str:
  if "error" in r:
    return (f"{r['variant']:<10}{r['size']:>10}{r['dtype']:>10}"
            f"{r['batch']:>6}  {r['error']}")
  return (f"{r['variant']:<10}{r['size']:>10}{r['dtype']:>10}{r['batch']:>6}"
          f"{r['compile_s']:>10.1f}{r['step_s']:>9.3f}"
          f"{r['images_per_s']:>8.2f}{r['peak_device_mb']:>11.0f}")


def _table(report) -> None:
  d = report["devices"]
  print(f"\n{d['device_kind']} x{d['count']} ({d['backend']}), jax "
        f"{d['jax']}, {report['mode']}, {report['seconds']:.0f} s")
  if "tests" in report:
    t = report["tests"]
    print(f"tests: {t.get('passed', 0)} passed, {t.get('failed', 0)} "
          f"failed, {t.get('errors', t.get('error', 0))} errors in "
          f"{t['seconds']:.0f} s")
  print(f"{'variant':<10}{'size':>10}{'dtype':>10}{'batch':>6}"
        f"{'compile s':>10}{'step s':>9}{'img/s':>8}{'peak MB':>11}")
  for r in report["train"]:
    print(_row(r))
  inf = report.get("inference", {})
  if "fps" in inf:
    print(f"inference {inf['size']}: {inf['fps']:.2f} frames/s, compile "
          f"{inf['compile_s']:.1f} s, peak device "
          f"{inf.get('peak_device_mb', float('nan')):.0f} MB")
  vpq = report.get("vpq", {})
  if "seconds_end_to_end" in vpq:
    print(f"VPQ evaluator: {vpq['seconds_end_to_end']:.2f} s end to end, "
          f"{vpq.get('speedup_vs_numpy_reference', float('nan')):.1f}x the "
          "NumPy reference")
  for s in report["skipped"]:
    print(f"skipped (budget): {s}")


if __name__ == "__main__":
  main()
