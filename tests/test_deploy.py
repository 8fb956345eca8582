"""Taking the model away: student.onnx checked against PyTorch, class names through export, `predict`
on real image files, and a run whose default output is one line per trial.

Everything is real: the smoke study's students, scikit-learn digits written as PNG/JPEG files,
torch's ONNX exporter and onnxruntime.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, SMOKE_SPACE, run_cli

pytest.importorskip("onnxruntime", reason="the onnx extra (make setup installs it)")
pytest.importorskip("onnxscript", reason="the onnx extra (make setup installs it)")

STUDY = "smoke"
TRIAL_LINE = re.compile(r"^\d\d:\d\d:\d\d trial \d+ (COMPLETE|PRUNED|FAIL)\b")
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def exported(smoke_study, tmp_path_factory) -> Path:
    """The smoke study's best trial exported to a fresh folder (student.onnx included)."""
    out = tmp_path_factory.mktemp("export") / "best"
    run_cli("export", "--study", STUDY, "--best", "--out", str(out), cwd=smoke_study)
    return out


def _digits_test_uint8() -> tuple[np.ndarray, np.ndarray]:
    """The digits test split as the data loader stores it (uint8, 8 x 8) and its labels."""
    from tdmr_search.config import DataConfig
    from tdmr_search.data import load_data

    data = load_data(DataConfig(dataset="digits", shots=20, val_fraction=0.25), 0)
    images = (data.test.images[:, 0].numpy() * 255.0).round().astype(np.uint8)
    return images, data.test.labels.numpy()


# -- 1. ONNX parity ------------------------------------------------------------------------------
def test_export_writes_an_onnx_file_that_matches_pytorch(exported):
    import onnxruntime as ort

    from tdmr_search import load_deployed
    from tdmr_search.config import load_config
    from tdmr_search.data import load_data

    for name in ("config.yaml", "student.safetensors", "student.onnx", "model.json", "metrics.json", "README.md"):
        assert (exported / name).is_file(), name
    info = json.loads((exported / "model.json").read_text())
    onnx = info["onnx"]
    assert onnx["file"] == "student.onnx" and onnx["opset"] >= 17
    assert onnx["max_abs_logit_diff"] < 1e-4 and onnx["argmax_agree"] == onnx["images"] > 0
    assert "test images of digits" in onnx["images_from"]
    card = (exported / "README.md").read_text()
    assert "largest absolute logit difference" in card and f"{onnx['argmax_agree']}/{onnx['images']} images" in card

    # checked again here, independently, on every test image and at two batch sizes
    model = load_deployed(exported)
    cfg = load_config(exported / "config.yaml")
    x = load_data(cfg.data, cfg.seed).test.images
    session = ort.InferenceSession(str(exported / "student.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] != 1, "the batch dimension must be dynamic"
    for batch in (x[:1], x[:7], x):
        with torch.no_grad():
            ref = model(batch).numpy()
        out = session.run(None, {"images": batch.numpy()})[0]
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() < 1e-4
        assert (out.argmax(1) == ref.argmax(1)).all()


def test_export_without_onnx_packages_says_so_once(smoke_study, tmp_path):
    """onnxruntime absent (blocked the way Python marks a module that cannot be imported)."""
    import subprocess
    import sys

    out = tmp_path / "no-onnx"
    code = ("import sys; sys.modules['onnxruntime'] = None; from tdmr_search.cli import main; "
            f"raise SystemExit(main(['export', '--study', 'smoke', '--best', '--out', {str(out)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=smoke_study, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if "skipped student.onnx" in line]
    assert len(said) == 1 and "onnxruntime is not installed" in said[0] and "tdmr-search[onnx]" in said[0], proc.stderr
    assert not (out / "student.onnx").exists() and (out / "student.safetensors").is_file()
    assert json.loads((out / "model.json").read_text())["onnx"]["file"] is None
    assert "No ONNX file: skipped: onnxruntime is not installed" in (out / "README.md").read_text()


# -- 2. class names and preprocessing ------------------------------------------------------------
def test_model_json_describes_input_and_classes(exported):
    info = json.loads((exported / "model.json").read_text())
    assert info["class_names"] == [str(i) for i in range(10)]  # digits
    pre = info["preprocessing"]
    assert pre["channels"] == info["in_chans"] == 1 and pre["height"] == pre["width"] == info["image_size"] == 8
    assert pre["value_range"] == [0.0, 1.0] and pre["layout"] == "NCHW"
    card = (exported / "README.md").read_text()
    assert "## Input and classes" in card and "values in [0, 1]" in card and "0 `0`, 1 `1`" in card


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Digits as an image folder with named classes: train/<name>/*.png and test/<name>/*.png."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits-folder")
    bunch = load_digits()
    images = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)
    seen: dict[int, int] = {}
    for img, label in zip(images, bunch.target, strict=True):
        k = seen.get(int(label), 0)
        seen[int(label)] = k + 1
        if k >= 40:
            continue
        split = "train" if k < 30 else "test"
        folder = root / split / DIGIT_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{k:03d}.png")
    return root


@pytest.mark.slow
def test_class_names_round_trip_through_a_study_and_export(image_folder, tmp_path):
    """The README's 'your own images' path: image folder -> validate -> run -> export -> predict."""
    space = yaml.safe_load(SMOKE_SPACE.read_text())
    space["name"] = "folder"
    space["base"]["data"] = {"dataset": f"imagefolder:{image_folder}", "shots": 20, "val_fraction": 0.25,
                             "image_size": 16}
    space["students"] = {"names": ["test_resnet"], "resolutions": [16]}
    space_file = tmp_path / "folder.yaml"
    space_file.write_text(yaml.safe_dump(space, sort_keys=False))
    run_cli("validate", str(space_file), cwd=tmp_path)
    run_cli("run", "--study", "folder", "--space", str(space_file), "--budget", "1", "--no-baselines", "--pruner", "none",
            cwd=tmp_path)
    out = tmp_path / "exported"
    run_cli("export", "--study", "folder", "--best", "--out", str(out), cwd=tmp_path)
    info = json.loads((out / "model.json").read_text())
    assert info["class_names"] == sorted(DIGIT_NAMES)  # ImageFolder's order: sorted folder names
    assert info["in_chans"] == 3 and info["image_size"] == 16 and info["preprocessing"]["color"].startswith("RGB")
    assert info["onnx"]["file"] == "student.onnx"
    assert "0 `eight`, 1 `five`" in (out / "README.md").read_text()
    proc = run_cli("predict", "--model", str(out), str(image_folder / "test" / "seven"), "--top-k", "2", cwd=tmp_path)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == 2 * 10 and {r["class"] for r in rows} <= set(DIGIT_NAMES)


# -- 3. predict ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """Digits test images as grey PNG, RGBA PNG (any size), 16-bit PNG and RGB JPEG, plus a corrupt file.

    Returns the folder and, for the lossless files, the index of the test image each holds.
    """
    from PIL import Image

    images, _ = _digits_test_uint8()
    folder = tmp_path_factory.mktemp("mixed")
    Image.fromarray(images[0]).save(folder / "grey.png")
    rgba = np.dstack([images[1]] * 3 + [np.full_like(images[1], 255)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(images[2].astype(np.uint16) * 257).save(folder / "grey16.png")  # 16-bit, same values
    Image.fromarray(np.dstack([images[3]] * 3)).resize((96, 96), Image.NEAREST).save(folder / "big.jpg")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    (folder / "notes.txt").write_text("not an image: skipped in a folder")
    return folder, {"grey.png": 0, "rgba.png": 1, "grey16.png": 2}


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_predict_a_folder_with_a_corrupt_a_grey_and_an_rgba_image(exported, mixed_folder, backend, tmp_path):
    from tdmr_search import load_deployed

    folder, index = mixed_folder
    csv_file = tmp_path / "predictions.csv"
    proc = run_cli("predict", "--model", str(exported), str(folder), "--top-k", "10", "--backend", backend,
                   "--out", str(csv_file), cwd=tmp_path, check=False)
    assert proc.returncode == 1, "a file failed: the exit code says so"
    errors = proc.stderr.strip().splitlines()
    assert [e for e in errors if "corrupt.png" in e] == [e for e in errors if e.startswith("tdmr-search predict:")]
    assert len([e for e in errors if e.startswith("tdmr-search predict:")]) == 1
    assert "4 of 5 files predicted" in proc.stdout and ("onnxruntime" if backend == "onnx" else "pytorch") in proc.stdout
    rows = list(csv.DictReader(csv_file.open()))
    by_file: dict[str, list[dict]] = {}
    for r in rows:
        by_file.setdefault(Path(r["file"]).name, []).append(r)
    assert set(by_file) == {"grey.png", "rgba.png", "grey16.png", "big.jpg", "corrupt.png"}
    assert by_file["corrupt.png"][0]["class"] == "" and "not a readable image" in by_file["corrupt.png"][0]["error"]
    # the model's own preprocessing: lossless files give exactly the model's output on the stored test image
    model = load_deployed(exported)
    x = torch.from_numpy(_digits_test_uint8()[0]).float().div(255.0)[:, None]
    with torch.no_grad():
        probs = torch.softmax(model(x), 1).numpy()
    for name, i in index.items():
        got = by_file[name]
        assert len(got) == 10 and abs(sum(float(r["probability"]) for r in got) - 1.0) < 2e-3
        assert got[0]["class"] == str(int(probs[i].argmax())), name
        assert float(got[0]["probability"]) == pytest.approx(float(probs[i].max()), abs=1e-4), name
    assert len(by_file["big.jpg"]) == 10  # a JPEG 12 times the model's size, resized


def test_predict_failures_are_one_line(exported, tmp_path):
    proc = run_cli("predict", "--model", str(tmp_path / "nowhere"), str(tmp_path), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("tdmr-search predict: error:")
    assert "is not a folder" in proc.stderr
    proc = run_cli("predict", "--model", str(exported), str(tmp_path / "missing.png"), cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "missing.png: no such file" in proc.stderr
    proc = run_cli("predict", "--model", str(exported), str(tmp_path), "--top-k", "11", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "--top-k must be an integer from 1 to the model's 10 classes" in proc.stderr


@pytest.mark.slow
def test_predict_a_trained_folder_without_onnx(tmp_path, mixed_folder):
    """`train --out` writes the deployment as export does; without its ONNX file predict runs PyTorch."""
    from conftest import TINY_CONFIG

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG))
    run_cli("train", "--config", str(config), "--out", str(tmp_path / "run"), cwd=tmp_path)
    info = json.loads((tmp_path / "run" / "model.json").read_text())
    assert info["class_names"] == [str(i) for i in range(10)] and "preprocessing" in info
    assert (tmp_path / "run" / "student.onnx").exists() and info["onnx"]["argmax_agree"] == info["onnx"]["images"]
    (tmp_path / "run" / "student.onnx").unlink()
    folder, _ = mixed_folder
    proc = run_cli("predict", "--model", str(tmp_path / "run"), str(folder / "grey.png"), str(folder / "rgba.png"),
                   cwd=tmp_path)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [Path(r["file"]).name for r in rows] == ["grey.png", "rgba.png"]
    assert all(r["class"] in [str(i) for i in range(10)] and r["error"] == "" for r in rows)


# -- 4. a run a person can read ------------------------------------------------------------------
def test_default_run_output_is_one_line_per_trial(smoke_study):
    lines = (smoke_study / "run.log").read_text().strip().splitlines()  # stderr of `run --budget 3`
    trials = [line for line in lines if TRIAL_LINE.match(line)]
    assert len(trials) == 3, lines
    assert not [line for line in lines if re.search(r"epoch \d+/\d+", line)], "per-epoch lines only with -v"
    for line in trials:  # number, state, value, best so far, student, seconds
        assert re.search(r"\| best \d\.\d{4} \(trial \d+\) \| test_\w+@\d+ \| \d+\.\ds \| \d finished", line), line
    others = [line for line in lines if line not in trials]
    assert len(others) <= 6, others  # once per run: notes on the pruner and the validation split, the two baselines


def test_verbose_run_restores_per_epoch_lines(copy_study):
    proc = run_cli("run", "--study", STUDY, "--space", str(SMOKE_SPACE), "--budget", "4", "--no-baselines", "-v",
                   cwd=copy_study)
    lines = proc.stderr.strip().splitlines()
    assert len([line for line in lines if re.search(r" trial 3 (COMPLETE|PRUNED|FAIL)", line)]) == 1, lines
    epochs = [line for line in lines if re.search(r"(stage 1|distill) epoch \d+/\d+", line)]
    assert len(epochs) >= 2, lines  # stage 1 (unless cached) and at least one stage-2 epoch
    assert any("INFO tdmr_search.pipeline" in line for line in epochs)


def test_status_line_without_a_terminal_degrades_to_plain_lines(monkeypatch):
    """No terminal: no bar; a long task shows as a plain line now and then (here: at once)."""
    import logging
    import sys

    from tdmr_search import console, progress

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(console, "PLAIN_TASK_SECONDS", 0.0)
    handler = console.Console(bar=None, verbose=False)
    assert handler.bar is False  # StringIO is not a terminal
    top = logging.getLogger("tdmr_search")
    level = top.level
    top.addHandler(handler)
    top.setLevel(logging.INFO)
    log = logging.getLogger("tdmr_search.search.study.test")
    try:
        with progress.listen(handler):
            progress.budget(1, 3, "trials", "best 0.5000 (trial 0)")
            progress.task("trial 1 (test_resnet@16)", 2, 4, "distill epochs")  # status line only
            for _ in progress.track(range(4), label="teacher pass (pool)", unit="batches"):
                pass
            log.info("trial 1 COMPLETE 0.5000")
            logging.getLogger("tdmr_search.pipeline.test").info("distill epoch 1/4")  # not a headline
    finally:
        top.removeHandler(handler)
        top.setLevel(level)
    out = stream.getvalue()
    assert "\r" not in out and "\x1b" not in out and "[#" not in out
    assert "teacher pass (pool): 1/4 batches (25%)" in out and "trial 1 COMPLETE 0.5000" in out
    assert "distill epoch" not in out  # INFO lines of the pipeline show only with -v; a trial's epochs only on a bar
    assert all(re.match(r"^\d\d:\d\d:\d\d ", line) for line in out.splitlines())
    handler.bar = True  # what a terminal would show
    progress_line = handler.status()
    assert progress_line.startswith("[") and "1/3 trials" in progress_line and "best 0.5000" in progress_line
