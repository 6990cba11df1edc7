"""scripts/build_reference_model.py: trains a real (tiny) tinygpt, verifies it, writes it out.

The reference params take about a minute; these tests train a model of a few thousand weights in a
couple of seconds through the same code, and prove that verification refuses a model whose
weights, params or recorded loss do not match what was trained.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts import build_reference_model as builder
from scripts.build_reference_model import MODEL_FILE, BuildError, build, train, verify

ROOT = Path(__file__).resolve().parents[2]

TINY: dict[str, Any] = {
    **builder.REFERENCE_PARAMS,
    "steps": 3,
    "batch_size": 2,
    "seq_len": 16,
    "d_model": 16,
    "n_layers": 1,
    "n_heads": 2,
    "warmup_steps": 1,
    "eval_every": 0,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("reference") / "out"
    return out, build(out, dict(TINY), threads=1)


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_reference_model.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_build_writes_the_model_its_sha256_and_metadata(built: tuple[Path, dict[str, Any]]) -> None:
    out, metadata = built
    assert sorted(path.name for path in out.iterdir()) == [
        "metadata.json",
        MODEL_FILE,
        f"{MODEL_FILE}.sha256",
    ]
    digest = hashlib.sha256((out / MODEL_FILE).read_bytes()).hexdigest()
    # sha256sum's format, so `sha256sum -c model.safetensors.sha256` checks a download.
    assert (out / f"{MODEL_FILE}.sha256").read_text() == f"{digest}  {MODEL_FILE}\n"
    assert json.loads((out / "metadata.json").read_text()) == metadata
    assert metadata["sha256"] == digest
    assert metadata["size"] == (out / MODEL_FILE).stat().st_size


def test_the_metadata_says_what_was_trained_and_that_evaluation_reproduced_it(
    built: tuple[Path, dict[str, Any]],
) -> None:
    _, metadata = built
    assert metadata["program"] == "tinygpt"
    assert metadata["step"] == 3
    assert metadata["params"]["d_model"] == 16
    assert metadata["params"]["device"] == "cpu"
    assert metadata["evaluated_val_loss"] == pytest.approx(metadata["final_val_loss"], abs=1e-6)
    # An untrained byte model sits near ln(256) = 5.55 nats; three steps barely move it.
    assert 3.0 < metadata["final_val_loss"] < 6.5
    assert len(metadata["dataset_sha256"]) == 64
    assert len(metadata["code_version"]) == 64
    assert metadata["parameters"] > 1000


def test_verification_refuses_a_model_whose_weights_changed(
    built: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    out, metadata = built
    with safe_open(str(out / MODEL_FILE), framework="pt") as handle:
        recorded = dict(handle.metadata())
    tensors = load_file(str(out / MODEL_FILE))
    name = next(key for key in tensors if tensors[key].dim() == 2)
    tensors[name] = tensors[name] * 3.0
    tampered = tmp_path / MODEL_FILE
    save_file(tensors, str(tampered), metadata=recorded)
    with pytest.raises(BuildError, match=r"evaluating model.safetensors gives val/loss"):
        verify(tampered, dict(TINY), metadata["final_val_loss"], threads=1)


def test_verification_refuses_a_model_trained_with_other_params(built: tuple[Path, dict[str, Any]]) -> None:
    out, metadata = built
    with pytest.raises(BuildError, match="metadata names other params"):
        verify(out / MODEL_FILE, {**TINY, "seed": 1}, metadata["final_val_loss"], threads=1)


def test_verification_refuses_a_loss_the_training_did_not_report(built: tuple[Path, dict[str, Any]]) -> None:
    out, metadata = built
    with pytest.raises(BuildError, match="records final_val_loss"):
        verify(out / MODEL_FILE, dict(TINY), metadata["final_val_loss"] + 0.01, threads=1)


def test_verification_refuses_a_file_that_is_not_safetensors(tmp_path: Path) -> None:
    junk = tmp_path / MODEL_FILE
    junk.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(BuildError, match="does not load"):
        verify(junk, dict(TINY), 1.0, threads=1)


def test_a_training_that_fails_is_reported_with_the_programs_own_last_line(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as failure:
        train({**TINY, "n_heads": 3}, tmp_path / "run", threads=1)
    assert str(failure.value).startswith("training exited with code 2: config error:")
    assert "divisible by n_heads" in str(failure.value)


def test_an_out_path_that_is_a_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.write_text("")
    result = run_script("--out", str(occupied))
    assert result.returncode == 1
    assert result.stderr == f"reference model: --out {occupied} exists and is not a directory\n"
    assert result.stdout == ""


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_steps_must_be_a_positive_integer(value: str) -> None:
    result = run_script("--steps", value)
    assert result.returncode == 2
    assert "must be a positive integer" in result.stderr
    assert "Traceback" not in result.stderr
