"""GPU throughput: stage 1 with a ViT-B/16 teacher at 224 and stage 2 with a mobile student.

Runs the pipeline's own code on a CUDA GPU (bf16 autocast, channels-last, TF32 and cudnn autotuning
as ``Runtime.create('cuda')`` sets them, whole datasets held as the pipeline holds them):

1. **teacher pass** (what stage 1 runs for a parameter-free transform, and what kd/probe run):
   ``pipeline.loop.infer`` over host-resident target images, batch 256: per batch a pinned
   host-to-device copy, the ``resize`` transform and the frozen ``vit_base_patch16_224`` (random
   weights: the same cost as pretrained). Also the same forward on a batch already on the GPU, and
   the host-to-device copies alone, to tell whether feeding the data limits the pass.
2. **stage-1 training** with a learnable ``pad`` transform: ``reprogram_teacher`` (forward and
   backward through the frozen teacher to the prompt), batch 256.
3. **stage-2 training**: ``distill_student`` with ``mobilenetv3_large_100`` at 224 (one phase,
   feature + KD + CE losses), batch 256; and the per-step data work alone (index batch to the
   device, gather images, labels and teacher targets), which is all the data loading stage 2 does.

Figures: images per second; achieved TFLOP/s = images/s x 2 x MACs per image (``model_flops``
counts one multiply-add as one FLOP, so x2) against the card's dense bf16 peak (looked up from
the device name; ``--peak`` overrides); the share of wall time the GPU is busy (union of the CUDA
kernel and copy intervals from ``torch.profiler`` over one epoch, divided by that epoch's wall time).

Goals (the issue): the teacher pass above 40% of peak; data loading never the bottleneck (here:
the host-fed teacher pass within 10% of the device-resident one, and stage-2 data work under 10%
of step time).

With ``--space spaces/gpu.yaml`` the teacher (name and input size), the student (the costliest one
under the space's cap) and the batch (``distill.batch_size``) are the space's. With
``--study-minutes M`` it then runs a real study of that space for M minutes (``run_search``, the
re-evaluation and baselines included, in a fresh store under ``--store``) and adds the search's
figures: trials per hour, the GPU busy share over the study (utilisation sampled every second
through NVML or nvidia-smi), and the best trial's validation and test accuracy.

Without a GPU it prints "no CUDA GPU: skipped" and exits 0. ``--cpu-dry-run`` runs the same code
on the CPU with tiny timm test models (the figures mean nothing; it checks the code path); with
``--space`` the study runs 2 trials with the space's teacher, students and data swapped for the
same tiny offline stand-ins through ``load_space``'s overrides (CPU_STAND_INS).

    python benchmarks/gpu.py [--quick] [--peak TFLOPS] [--cpu-dry-run] [--out benchmarks/results/gpu.json]
    python benchmarks/gpu.py --space spaces/gpu.yaml --study-minutes 20
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import parser, setup, stamp, table, verdict, write_json

GOAL_MFU = 0.40
GOAL_DATA_SHARE = 0.10

#: Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, by a substring of the device name; first match wins.
PEAKS = (
    ("GH200", 989.4), ("H200", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4),
    ("H800", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.1), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 6000 Ada", 364.2),
)


def peak_tflops(device_name: str) -> float | None:
    for key, peak in PEAKS:
        if key.lower() in device_name.lower():
            return peak
    return None


def interval_union(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by possibly overlapping intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def device_busy(prof: Any) -> dict[str, float] | None:
    """Seconds the GPU ran kernels, copies, and either (interval unions), from a finished profiler."""
    from torch.autograd import DeviceType

    kernels, copies = [], []
    for e in prof.events():
        if e.device_type != DeviceType.CUDA or getattr(e, "is_user_annotation", False):
            continue
        if (getattr(e, "activity_type", None) or "") == "gpu_user_annotation":
            continue
        span = (e.time_range.start, e.time_range.end)
        is_copy = e.name.startswith(("Memcpy", "Memset")) or (getattr(e, "activity_type", "") or "").startswith(
            ("gpu_memcpy", "gpu_memset"))
        (copies if is_copy else kernels).append(span)
    if not kernels and not copies:
        return None
    return {"kernel_seconds": interval_union(kernels) / 1e6, "copy_seconds": interval_union(copies) / 1e6,
            "busy_seconds": interval_union(kernels + copies) / 1e6, "kernel_count": len(kernels)}


class Device:
    """Synchronised timing (CUDA events on a GPU) and profiling for one device."""

    def __init__(self, runtime: Any) -> None:
        import torch

        self.torch = torch
        self.runtime = runtime
        self.cuda = runtime.cuda

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any]) -> float:
        """Seconds ``fn`` takes, its GPU work included (CUDA events; perf_counter on the CPU)."""
        self.sync()
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        self.torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3

    def profiler(self) -> Any:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        return profile(activities=acts)

    def profile(self, fn: Callable[[], Any]) -> dict[str, Any]:
        prof = self.profiler()
        self.sync()
        prof.start()
        t0 = time.perf_counter()
        fn()
        self.sync()
        wall = time.perf_counter() - t0
        prof.stop()
        return _busy_figures(device_busy(prof), wall)


def _busy_figures(busy: dict[str, float] | None, wall: float) -> dict[str, Any]:
    out: dict[str, Any] = {"profiled_wall_seconds": wall}
    if busy is None:
        out["gpu_busy_share"] = None
        out["note"] = "no CUDA activity recorded (CPU run or CUPTI unavailable)"
        return out
    out.update(busy)
    out["gpu_busy_share"] = busy["busy_seconds"] / wall
    out["gpu_kernel_share"] = busy["kernel_seconds"] / wall
    return out


class EpochClock:
    """An ``on_epoch_end`` callback: times each epoch; profiles epoch ``profile_epoch`` (0-based)."""

    def __init__(self, dev: Device, profile_epoch: int) -> None:
        self.dev = dev
        self.profile_epoch = profile_epoch
        self.durations: list[float] = []  # epoch 0 is measured from the first callback on, so it is not here
        self.last: float | None = None
        self.prof: Any = None
        self.profiled: dict[str, Any] = {}

    def __call__(self, step: int, metrics: dict) -> None:
        self.dev.sync()  # the epoch's validation accuracy has synchronised already; cheap
        now = time.perf_counter()
        if self.prof is not None:
            self.prof.stop()
            self.profiled = _busy_figures(device_busy(self.prof), now - self.last)
            self.prof = None
        elif self.last is not None:
            self.durations.append(now - self.last)
        if step + 1 == self.profile_epoch:  # the next epoch runs under the profiler
            self.prof = self.dev.profiler()
            self.prof.start()
        self.last = time.perf_counter()

    def epoch_seconds(self) -> float:
        """Wall time of the (unprofiled) epochs after the first, median."""
        import statistics

        return statistics.median(self.durations)


def synthetic_data(n_train: int, n_val: int, size: int, classes: int = 10) -> Any:
    """Random target images (float in [0, 1], N x 3 x size x size) on the host, as ``load_data`` leaves them."""
    import torch

    from tdmr_search.data import ImageSplit, TargetData

    g = torch.Generator().manual_seed(0)

    def split(n: int) -> ImageSplit:
        return ImageSplit(torch.rand(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))

    return TargetData("synthetic", split(n_train), split(n_val), split(n_val), classes, [str(i) for i in range(classes)])


#: Tiny real offline parts for a CPU dry run of a space's study (``load_space`` overrides).
CPU_STAND_INS: dict[str, Any] = {
    "teacher.name": "test_vit", "teacher.weights": "random", "teacher.input_size": 32,
    "data.dataset": "digits", "data.download": False, "data.root": None, "data.shots": 20, "data.unlabeled": 300,
    "data.test_limit": None, "students.names": ["test_resnet", "test_efficientnet"], "students.resolutions": [16],
    "reprogram.epochs": 2, "distill.epochs": 4, "max_flops": "2M", "device": "cpu",
}


class Utilisation:
    """Samples the GPU's utilisation (percent of time a kernel ran) every ``every`` seconds in a thread."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self.samples: list[float] = []
        self.source: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _read(self) -> float | None:
        import torch

        if self.source in (None, "nvml"):
            try:
                value = float(torch.cuda.utilization(0))  # needs pynvml (nvidia-ml-py)
                self.source = "nvml"
                return value
            except Exception:
                self.source = "no nvml"  # try nvidia-smi from now on
        if shutil.which("nvidia-smi"):
            try:
                out = subprocess.run(["nvidia-smi", "--id=0", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5, check=True).stdout
                self.source = "nvidia-smi"
                return float(out.strip().splitlines()[0])
            except Exception:
                return None
        return None

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> Utilisation:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def share(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100.0 if self.samples else None


def space_models(space_path: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The teacher, its input size, the costliest student under the cap and the batch of a space."""
    from tdmr_search.search.preflight import teacher_input_size
    from tdmr_search.search.space import feasible_students, load_space

    space = load_space(space_path, overrides)
    fit, _ = feasible_students(space, 3, 224, 10)  # the cost of the student itself; the data's size barely moves it
    if not fit:
        raise SystemExit(f"no student of {space_path} fits its cap")
    top = fit[-1]
    return {"teacher": space.base.teacher.name, "teacher_size": teacher_input_size(space.base.teacher),
            "student": top.name, "student_size": top.resolution, "batch": space.base.distill.batch_size}


def run_study(space_path: str, overrides: dict[str, Any] | None, minutes: float | None, trials: int | None,
              store: Path, cuda: bool) -> dict[str, Any]:
    """A real study of the space: trials per hour, GPU busy share, the best trial's accuracies."""
    import optuna
    import yaml

    from tdmr_search.search.reevaluate import best_trials
    from tdmr_search.search.settings import SearchSettings
    from tdmr_search.search.space import load_space
    from tdmr_search.search.study import run_search

    store.mkdir(parents=True, exist_ok=True)
    space_file = store / "space.yaml"  # the space as it ran, overrides included
    space_file.write_text(yaml.safe_dump(load_space(space_path, overrides).raw, sort_keys=False))
    url = f"sqlite:///{store / 'gpu-study.db'}"
    budget = f"{int(minutes * 60)}s" if minutes is not None else str(trials)
    util = Utilisation()
    t0 = time.perf_counter()
    with util if cuda else _Nothing():
        run_search(SearchSettings(str(space_file), "gpu-study", budget, storage=url, progress=False,
                                  artifacts=str(store / "artifacts")))
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name="gpu-study", storage=url)
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            and t.datetime_start and t.datetime_complete]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds() if done else 0
    best = best_trials(study)[0] if done else None
    return {
        "space": space_path, "budget": budget, "wall_seconds": wall, "store": str(store),
        "trials": len(done), "complete": sum(t.state == optuna.trial.TrialState.COMPLETE for t in done),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in done),
        "search_seconds": span, "trials_per_hour": 3600.0 * len(done) / span if span else None,
        "gpu_busy_share": util.share() if cuda else None, "utilisation_source": util.source if cuda else None,
        "best": None if best is None else {
            "trial": best.number, "val_acc": best.user_attrs.get("val_acc"), "test_acc": best.user_attrs.get("test_acc"),
            "flops": best.user_attrs.get("flops"), "student": (best.user_attrs.get("config") or {}).get("student")},
    }


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    p = parser("gpu", __doc__.splitlines()[0])
    p.add_argument("--peak", type=float, default=None, help="the card's dense bf16 peak in TFLOP/s (default: looked up)")
    p.add_argument("--cpu-dry-run", action="store_true", help="run the code path on the CPU with tiny test models")
    p.add_argument("--teacher", default="vit_base_patch16_224")
    p.add_argument("--teacher-size", type=int, default=224)
    p.add_argument("--student", default="mobilenetv3_large_100")
    p.add_argument("--student-size", type=int, default=224)
    p.add_argument("--image-size", type=int, default=224, help="side of the stored target images")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=None, help="batches per timed epoch (default 20; --quick: 8)")
    p.add_argument("--space", default=None,
                   help="take the teacher, the costliest student under the cap and the batch from this space (spaces/gpu.yaml)")
    p.add_argument("--study-minutes", type=float, default=None,
                   help="then run a study of --space for this many minutes (CPU dry run: 2 trials)")
    p.add_argument("--store", default=None, help="folder of that study's store (default: a temporary folder, removed)")
    args = p.parse_args()
    setup(args)
    if args.study_minutes is not None and not args.space:
        p.error("--study-minutes needs --space")

    import torch

    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print("no CUDA GPU: skipped (run on a machine with one, or --cpu-dry-run to check the code path)")
        return
    overrides = CPU_STAND_INS if args.cpu_dry_run else None
    if args.space:
        models = space_models(args.space, overrides)
        args.teacher, args.teacher_size = models["teacher"], models["teacher_size"]
        args.student, args.student_size, args.batch = models["student"], models["student_size"], models["batch"]
        print(f"space {args.space}: teacher {args.teacher}@{args.teacher_size}, student {args.student}@{args.student_size}, "
              f"batch {args.batch}", flush=True)
    if args.cpu_dry_run:
        args.teacher, args.teacher_size, args.student, args.student_size = "test_vit", 32, "test_efficientnet", 32
        args.image_size, args.batch = 32, 8
        args.steps = args.steps or 3
    steps = args.steps or (8 if args.quick else 20)

    from tdmr_search.config import PipelineConfig, StudentConfig, TeacherConfig
    from tdmr_search.models.flops import model_flops, student_cost
    from tdmr_search.models.students import build_student
    from tdmr_search.models.teachers import build_teacher
    from tdmr_search.models.transforms import build_transform
    from tdmr_search.pipeline.loop import Runtime, infer, train_batches
    from tdmr_search.pipeline.run import distill_student, reprogram_teacher
    from tdmr_search.pipeline.stages import plan_phases

    runtime = Runtime.create("cpu" if args.cpu_dry_run else "cuda")
    dev = Device(runtime)
    name = torch.cuda.get_device_name(0) if runtime.cuda else "cpu (dry run)"
    peak = args.peak or (peak_tflops(name) if runtime.cuda else None)
    batch, n = args.batch, args.batch * steps
    print(f"device {name}, bf16 peak {peak or '?'} TFLOP/s, batch {batch}, {steps} batches per timed pass", flush=True)

    # ---- 1. teacher pass -------------------------------------------------------------------------
    teacher_macs = model_flops(args.teacher, args.teacher_size)  # one multiply-add = one FLOP here
    teacher = runtime.module(build_teacher(TeacherConfig(name=args.teacher, weights="random",
                                                         input_size=args.teacher_size)))
    transform = runtime.module(build_transform("resize", teacher.input_size, teacher.mean, teacher.std))

    def features(x: torch.Tensor) -> torch.Tensor:
        return teacher(transform(x))

    data = synthetic_data(n, batch, args.image_size)
    host = data.train.images
    infer(features, host[: 2 * batch], runtime, batch)  # warm-up: cudnn autotuning, allocator
    pipeline_s = dev.time(lambda: infer(features, host, runtime, batch))
    on_device = runtime.put(host[:batch])

    @torch.no_grad()
    def device_resident() -> None:
        for _ in range(steps):
            with runtime.autocast():
                features(on_device)

    device_resident()
    resident_s = dev.time(device_resident)

    def copies() -> None:
        for start in range(0, n, batch):
            runtime.put(host[start : start + batch])

    copies()
    copy_s = dev.time(copies)
    teacher_busy = dev.profile(lambda: infer(features, host, runtime, batch))

    def tflops(images_per_s: float, macs: float, factor: float = 1.0) -> float:
        return images_per_s * 2.0 * macs * factor / 1e12

    t_pipe_ips, t_res_ips = n / pipeline_s, n / resident_s
    teacher_fig = {
        "model": args.teacher, "input_size": args.teacher_size, "stored_image_size": args.image_size,
        "macs_per_image": teacher_macs, "images": n,
        "pipeline_pass": {"seconds": pipeline_s, "images_per_s": t_pipe_ips, "tflops": tflops(t_pipe_ips, teacher_macs)},
        "device_resident": {"seconds": resident_s, "images_per_s": t_res_ips, "tflops": tflops(t_res_ips, teacher_macs)},
        "host_to_device_copies_seconds": copy_s, "copy_share_of_pipeline_pass": copy_s / pipeline_s,
        "feeding_cost": 1.0 - t_pipe_ips / t_res_ips, "profile": teacher_busy,
    }

    # ---- 2. stage-1 training through the teacher (pad transform) ------------------------------------
    config = PipelineConfig().replace({
        "device": runtime.device.type, "teacher.name": args.teacher, "teacher.weights": "random",
        "teacher.input_size": args.teacher_size, "reprogram.transform": "pad", "reprogram.pad": 16,
        "reprogram.proxy_dim": 128, "reprogram.epochs": 4, "reprogram.batch_size": batch,
        "student.name": args.student, "student.resolution": args.student_size, "distill.n_stages": 1,
        "distill.epochs": 4, "distill.batch_size": batch, "distill.temperature": 4.0,
    })
    clock1 = EpochClock(dev, profile_epoch=3)
    side = reprogram_teacher(config, data, runtime, clock1, teacher=teacher)
    s1_epoch = clock1.epoch_seconds()
    s1_ips = n / s1_epoch
    stage1_fig = {
        "transform": "pad", "epoch_seconds": s1_epoch, "images_per_s": s1_ips,
        "tflops_approx": tflops(s1_ips, teacher_macs, 2.0),
        "flops_note": "forward + backward to the input through frozen weights, taken as 2x the forward's FLOPs",
        "epoch_includes": f"{steps} training steps + validation of {len(data.val)} images", "profile": clock1.profiled,
    }

    # ---- 3. stage-2 training of the student ---------------------------------------------------------
    student_cfg = StudentConfig(name=args.student, resolution=args.student_size)
    student_macs, _ = student_cost(student_cfg, 3, args.image_size, 128, 10)  # the deployed student, resize included
    student = build_student(student_cfg, 3, 128, 10, pretrained=False)
    student.classifier.load_state_dict(side.state["classifier"])
    phases = plan_phases(1, 4, 4.0, "constant")  # one phase: feature + KD + CE losses, H trained
    clock2 = EpochClock(dev, profile_epoch=3)
    distill_student(student, phases, config, data, runtime, side.z_train, side.logits_train, clock2, "distill")
    s2_epoch = clock2.epoch_seconds()
    s2_ips = n / s2_epoch

    x = runtime.put(data.train.images)
    y = runtime.put(data.train.labels)
    z_t, t_logits = runtime.put(side.z_train), runtime.put(side.logits_train)
    gen = torch.Generator().manual_seed(1)

    def gather_epoch() -> None:
        for idx in train_batches(n, batch, gen):  # exactly the data work of one distill_student step
            idx = idx.to(runtime.device)
            _ = (x[idx], y[idx], z_t[idx], t_logits[idx])

    gather_epoch()
    gather_s = dev.time(gather_epoch)
    stage2_fig = {
        "model": args.student, "resolution": args.student_size, "macs_per_image": student_macs,
        "epoch_seconds": s2_epoch, "images_per_s": s2_ips, "step_seconds": s2_epoch / steps,
        "tflops_approx": tflops(s2_ips, student_macs, 3.0),
        "flops_note": "training step taken as 3x the forward's FLOPs",
        "data_seconds_per_epoch": gather_s, "data_share_of_step": gather_s / s2_epoch,
        "epoch_includes": f"{steps} training steps + validation of {len(data.val)} images", "profile": clock2.profiled,
    }

    mfu = teacher_fig["pipeline_pass"]["tflops"] / peak if peak else None
    mfu_resident = teacher_fig["device_resident"]["tflops"] / peak if peak else None
    data_ok = teacher_fig["feeding_cost"] < GOAL_DATA_SHARE and stage2_fig["data_share_of_step"] < GOAL_DATA_SHARE
    goals = {"teacher_pass_mfu>0.40": None if mfu is None else mfu > GOAL_MFU, "data_not_bottleneck": data_ok}

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    rows = [
        ["teacher pass (pipeline, host-fed)", f"{t_pipe_ips:,.0f}", f"{teacher_fig['pipeline_pass']['tflops']:.1f}",
         pct(mfu), pct(teacher_busy.get("gpu_busy_share"))],
        ["teacher forward (on-device batch)", f"{t_res_ips:,.0f}", f"{teacher_fig['device_resident']['tflops']:.1f}",
         pct(mfu_resident), "-"],
        ["stage-1 train, pad transform", f"{s1_ips:,.0f}", f"~{stage1_fig['tflops_approx']:.1f}",
         pct(stage1_fig["tflops_approx"] / peak if peak else None), pct(clock1.profiled.get("gpu_busy_share"))],
        [f"stage-2 train, {args.student}@{args.student_size}", f"{s2_ips:,.0f}", f"~{stage2_fig['tflops_approx']:.1f}",
         pct(stage2_fig["tflops_approx"] / peak if peak else None), pct(clock2.profiled.get("gpu_busy_share"))],
    ]
    print(table(rows, ["what", "images/s", "TFLOP/s", "of bf16 peak", "GPU busy"]))
    print(f"teacher pass at {pct(mfu)} of peak: goal > {100 * GOAL_MFU:.0f}%: {verdict(goals['teacher_pass_mfu>0.40'])}")
    print(f"data: feeding the teacher pass from the host costs {pct(teacher_fig['feeding_cost'])} of its throughput "
          f"(copies alone {pct(teacher_fig['copy_share_of_pipeline_pass'])} of the pass); stage-2 per-step data work "
          f"{pct(stage2_fig['data_share_of_step'])} of step time: not the bottleneck: {verdict(data_ok)}")
    study_fig = None
    if args.study_minutes is not None:
        store = Path(args.store) if args.store else Path(tempfile.mkdtemp(prefix="tdmr-gpu-study-"))
        try:
            study_fig = run_study(args.space, overrides, None if args.cpu_dry_run else args.study_minutes,
                                  2 if args.cpu_dry_run else None, store, runtime.cuda)
        finally:
            if not args.store:
                shutil.rmtree(store, ignore_errors=True)
        best = {k: v if v is not None else float("nan") for k, v in (study_fig["best"] or {}).items()}
        print(f"study of {args.space} ({study_fig['budget']}): {study_fig['trials']} trials "
              f"({study_fig['complete']} complete, {study_fig['pruned']} pruned), "
              f"{study_fig['trials_per_hour'] or 0:.1f} trials/hour, GPU busy {pct(study_fig['gpu_busy_share'])}, "
              f"best val {best.get('val_acc', float('nan')):.3f} / test {best.get('test_acc', float('nan')):.3f}")
    if args.cpu_dry_run:
        print("CPU dry run: the figures above only show that the code path runs")
    payload = {**stamp(), "benchmark": "gpu", "dry_run": args.cpu_dry_run, "device_name": name, "peak_tflops": peak,
               "space": args.space, "batch": batch, "steps": steps, "teacher": teacher_fig, "stage1": stage1_fig,
               "stage2": stage2_fig, "study": study_fig,
               "mfu_teacher_pass": mfu, "mfu_teacher_device_resident": mfu_resident,
               "goals": {"min_mfu": GOAL_MFU, "max_data_share": GOAL_DATA_SHARE, "met": goals}}
    print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
