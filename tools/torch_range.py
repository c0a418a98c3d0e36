"""Tests the project at both ends of the torch range it declares: the lowest release pyproject.toml allows and
the newest the package index serves.

For each end it makes a virtual environment (outside the repository; several GB each, mostly CUDA wheels),
installs torch, torchvision and this project into it (``pip install -e .``), then runs there:

* the kernel equivalence tests (tests/models/test_seam.py, test_kernels.py, test_op_checks.py);
* a fast-path report: which private-op checks passed (video_swin.models.kernels.checks), which fast paths
  ran in one training step and one inference pass of a tiny model, and whether logits and gradients
  equal the reference model's;
* two training steps of a tiny model on the demo data (``video-swin train --config demo.yaml``).

    python tools/torch_range.py                        # both ends, venvs under /work/venvs
    python tools/torch_range.py --ends low --venvs DIR
    python tools/torch_range.py --low 2.5.1 --high 2.15.0

This machine's pip configuration may cap torch (a constraints file): the venvs are installed with
``PIP_CONFIG_FILE=/dev/null`` and no constraints, so that both ends are what the index serves.
Exit code 0 only where every end passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = ["tests/models/test_seam.py", "tests/models/test_kernels.py", "tests/models/test_op_checks.py"]
# The tiny training run: the demo data made small, a model of one block per stage.
TRAIN_SETS = {
    "data.clip_len": 4, "data.frame_interval": 2, "data.crop_size": 32, "data.train_short_side": 36,
    "data.test_short_side": 32, "data.num_workers": 0, "model.embed_dim": 16, "model.depths": "[1,1]",
    "model.num_heads": "[1,2]", "model.window_size": "[2,4,4]", "train.batch_size": 4,
    "train.log_every_steps": 1, "train.save_every_steps": 1000, "train.max_steps": 2, "eval.every_epochs": 0,
}  # fmt: skip


def pip_env() -> dict[str, str]:
    """The environment for the venvs' pip: no site configuration (it may cap torch), no constraints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def index_versions(package: str) -> list[str]:
    """Versions of ``package`` the index serves, newest first (``pip index versions``)."""
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", package], env=pip_env(),
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    match = re.search(r"Available versions: (.*)", out)
    return [v.strip() for v in match.group(1).split(",")] if match else []


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def declared_floor() -> str:
    """The ``torch>=X`` of pyproject.toml's dependencies."""
    match = re.search(r'"torch>=([0-9.]+)"', (REPO / "pyproject.toml").read_text())
    if not match:
        raise SystemExit("pyproject.toml declares no torch>=X")
    return match.group(1)


def _dependencies() -> list[str]:
    """pyproject.toml's ``[project] dependencies``."""
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def ends(low: str | None, high: str | None) -> dict[str, str]:
    """``{"low": version, "high": version}``: the lowest release at or above the declared floor (its newest
    patch release) and the newest release the index serves, unless given."""
    versions = [v for v in index_versions("torch") if "+" not in v and re.fullmatch(r"[0-9.]+", v)]
    if low is None:
        floor = _key(declared_floor())
        allowed = sorted((v for v in versions if _key(v) >= floor), key=_key)
        minor = _key(allowed[0])[:2]
        low = max((v for v in allowed if _key(v)[:2] == minor), key=_key)
    if high is None:
        high = max(versions, key=_key)
    return {"low": low, "high": high}


def torchvision_for(torch_version: str, available: list[str]) -> str | None:
    """The torchvision requirement made for ``torch_version``: torch 2.N pairs with torchvision 0.(N+15), whose
    patch release pip picks (each pins its torch release); None where the index has no such torchvision yet
    (pip then picks the newest one whose requirements allow this torch)."""
    major, minor = _key(torch_version)[:2]
    if major != 2 or not any(_key(v)[:2] == (0, minor + 15) for v in available):
        return None
    return f"0.{minor + 15}.*"


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: int = 3600) -> tuple[int, str]:
    """Runs ``cmd`` in the repository; its output is appended to ``log`` and returned."""
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    text = result.stdout + result.stderr
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{text}\n[exit {result.returncode}, {time.monotonic() - start:.0f} s]\n\n")
    return result.returncode, text


def install(venv: Path, torch_version: str, torchvision: str | None, log: Path) -> str:
    """Makes ``venv`` with this torch and the project installed (kept where it already has them); its torch."""
    python = venv / "bin" / "python"
    marker = venv / "torch-range.json"
    wanted = {"torch": torch_version, "torchvision": torchvision, "repo": str(REPO)}
    if python.exists() and marker.exists() and json.loads(marker.read_text()) == wanted:
        return torch_version
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pins = [f"torch=={torch_version}", f"torchvision=={torchvision}" if torchvision else "torchvision"]
    steps = [[*pins, "pytest"], ["-e", str(REPO), *pins]]
    if _key(torch_version) < _key(declared_floor()):
        # Below the declared floor (to try lowering it): the project without its torch requirement.
        others = [d for d in _dependencies() if not re.match(r"(torch|torchvision)\b", d)]
        steps = [[*pins, "pytest", *others], ["--no-deps", "-e", str(REPO)]]
    for args in steps:
        code, text = run([str(python), "-m", "pip", "install", *args], log, env=pip_env())
        if code:
            raise RuntimeError(f"pip install {' '.join(args)} failed in {venv} (see {log}):\n{text[-2000:]}")
    marker.write_text(json.dumps(wanted))
    return torch_version


def check_end(name: str, torch_version: str, venvs: Path, log_dir: Path) -> dict:
    """Installs and tests one end; returns what it found."""
    log = log_dir / f"{name}-{torch_version}.log"
    log.write_text("")
    venv = venvs / f"torch-{torch_version}"
    torchvision = torchvision_for(torch_version, index_versions("torchvision"))
    result: dict = {"end": name, "torch": torch_version, "venv": str(venv), "log": str(log)}
    try:
        install(venv, torch_version, torchvision, log)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        return {**result, "installed": False, "error": str(e).splitlines()[0]}
    python = str(venv / "bin" / "python")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    code, text = run([python, "-c", "import torch, torchvision; print(torch.__version__, torchvision.__version__)"],
                     log, env)  # fmt: skip
    result["installed"] = code == 0
    result["versions"] = text.strip().splitlines()[-1] if text.strip() else ""

    code, text = run([python, "-m", "pytest", *TESTS, "-q", "-p", "no:cacheprovider"], log, env)
    summary = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    result["equivalence_tests"] = {"passed": code == 0, "summary": summary[-1] if summary else text[-300:]}

    code, text = run([python, str(Path(__file__).resolve()), "--report"], log, env)
    try:
        result["fast_paths"] = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result["fast_paths"] = {"error": text[-1000:]}

    with tempfile.TemporaryDirectory(prefix="torch-range-") as tmp:
        sets = {**TRAIN_SETS, "output_dir": f"{tmp}/run", "data.root": f"{tmp}/data",
                "data.train_annotations": f"{tmp}/data/train.csv", "data.val_annotations": f"{tmp}/data/val.csv"}  # fmt: skip
        # The demo data at its smallest (the demo's own 1,200 videos would take minutes), written by this torch's venv.
        code, _ = run([python, "-c", "import sys; from video_swin.data import make_demo_data; "
                       "make_demo_data(sys.argv[1], seed=0, train_per_class=2, val_per_class=1)", f"{tmp}/data"], log, env)  # fmt: skip
        sets["data.generate_demo"] = "false"
        cmd = [str(venv / "bin" / "video-swin"), "train", "--config", "demo.yaml", "--set",
               *(f"{k}={v}" for k, v in sets.items())]  # fmt: skip
        code, text = run(cmd, log, env)
        losses = list(dict.fromkeys(re.findall(r"loss=([0-9.]+)", text)))  # one per logged step
        result["train_two_steps"] = {"passed": code == 0 and (Path(tmp) / "run" / "model.safetensors").exists(),
                                     "exit": code, "losses": losses}  # fmt: skip
    result["passed"] = bool(result["installed"] and result["equivalence_tests"]["passed"]
                            and result["fast_paths"].get("equivalent") and result["train_two_steps"]["passed"])  # fmt: skip
    return result


def report() -> dict:
    """Inside a venv: the op checks, which fast paths one training step and one inference pass of a tiny
    model take, and whether logits and gradients equal the reference model's."""
    import copy
    import importlib
    import logging

    import torch

    import video_swin
    from video_swin.models.kernels import accelerate_cpu, checks, cpu_profile, switches

    # The modules themselves (the package's ``linear`` and ``attention`` names are functions).
    fast_attention, fast_block, fast_linear, fast_mlp = (
        importlib.import_module(f"video_swin.models.kernels.{name}") for name in ("attention", "block", "linear", "mlp")
    )

    logging.basicConfig(level=logging.WARNING)
    ran: dict[str, int] = {}

    def counted(module, name, label):
        fn = getattr(module, name)

        def wrapper(*args, **kwargs):
            ran[label] = ran.get(label, 0) + 1
            return fn(*args, **kwargs)

        setattr(module, name, wrapper)

    counted(fast_attention, "flash_forward", "attention (flash kernel forward)")
    counted(fast_attention, "_attention_backward", "attention (chunked backward)")
    counted(fast_block, "recomputed_mlp", "mlp (recomputing kernel)")
    counted(fast_block, "reorder_tokens", "partition (one gather)")
    counted(fast_block, "windowed_residual", "inference (windows in chunks)")
    mm = fast_linear.mm

    def mm_counted(x, w, bias=None, onednn=True):
        if onednn:
            ran["linear (oneDNN)"] = ran.get("linear (oneDNN)", 0) + 1
        return mm(x, w, bias, onednn)

    for module in (fast_linear, fast_attention, fast_mlp):
        module.mm = mm_counted

    torch.manual_seed(0)
    ref = video_swin.create_model("swin3d_t", embed_dim=16, depths=(1, 1), num_heads=(2, 2), num_classes=5,
                                  window_size=(2, 4, 4), head_dropout=0.0, drop_path_rate=0.0)  # fmt: skip
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fast = accelerate_cpu(copy.deepcopy(ref), recompute_from=0)
    x = torch.randn(2, 3, 4, 32, 32)
    outs = []
    for model in (ref, fast):
        model.train().zero_grad(set_to_none=True)
        out = model(x)
        out.square().mean().backward()
        with torch.no_grad():
            inference = model.eval()(x)
        outs.append((out.detach(), {k: p.grad for k, p in model.named_parameters()}, inference))
    (o_ref, g_ref, i_ref), (o, g, i) = outs

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()

    diffs = {"logits": rel(o, o_ref), "inference": rel(i, i_ref), "grads": max(rel(g[k], g_ref[k]) for k in g_ref)}
    return {
        "torch": torch.__version__,
        "op_checks": {path: why or "ok" for path, why in checks.check_ops().items()},
        "linear_backend": switches.linear_backend(),
        "machine_choices": cpu_profile().choices(),  # what this CPU was measured to do faster (kernels/machine.py)
        "ran": ran,
        "max_rel_diff": diffs,
        "equivalent": diffs["logits"] < 1e-5 and diffs["inference"] < 1e-5 and diffs["grads"] < 1e-4,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venvs", default="/work/venvs", help="where the venvs go (outside the repo; default %(default)s)")
    parser.add_argument("--ends", nargs="+", choices=["low", "high"], default=["low", "high"])
    parser.add_argument("--low", help="torch version of the low end (default: the floor's newest patch release)")
    parser.add_argument("--high", help="torch version of the high end (default: the newest on the index)")
    parser.add_argument("--logs", help="folder of the per-end logs (default: VENVS/logs)")
    parser.add_argument("--report", action="store_true", help=argparse.SUPPRESS)  # inside a venv: see report()
    args = parser.parse_args()
    if args.report:
        print(json.dumps(report()))
        return 0
    venvs = Path(args.venvs).resolve()
    if REPO in venvs.parents or venvs == REPO:
        parser.error(f"--venvs {venvs} lies in the repository; choose a folder outside it")
    log_dir = Path(args.logs) if args.logs else venvs / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    versions = ends(args.low, args.high)
    results = []
    for name in args.ends:
        result = check_end(name, versions[name], venvs, log_dir)
        results.append(result)
        print(json.dumps(result, indent=1), flush=True)
    print("\nend   torch      tests                              fast paths ran (checks)                      equivalent  2 steps")
    for r in results:
        fp = r.get("fast_paths", {})
        ran = ", ".join(sorted({k.split(" ")[0] for k in fp.get("ran", {})})) or "-"
        off = [p for p, v in fp.get("op_checks", {}).items() if v != "ok"]
        checks = "all ops ok" if fp.get("op_checks") and not off else f"off: {', '.join(off)}"
        print(f"{r['end']:5} {r['torch']:10} {r.get('equivalence_tests', {}).get('summary', 'not installed')[:34]:34} "
              f"{ran} ({checks}) {fp.get('equivalent')!s:>5}  {r.get('train_two_steps', {}).get('passed')}")  # fmt: skip
    return 0 if all(r.get("passed") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
