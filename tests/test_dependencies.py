"""Pinned third-party behaviour that saved outputs depend on.

* FSQ (vector-quantize-pytorch): a tokenizer checkpoint stores only the encoder, ``quantize.project_in/out`` and
  the decoder; the codes and indices come from the library's formula. Fixed inputs -> hard-coded indices and
  codes, so a library release that changes the bound, the rounding or the index basis fails here instead of
  silently changing what saved checkpoints and saved token indices decode to. The expected values were worked
  by hand from the FSQ formula (and agree for vector-quantize-pytorch 1.20.0, 1.27.0, 1.31.0 and 1.32.0):
  ``half_l = (L - 1) * (1 + 1e-3) / 2``, ``offset = 0.5 if L is even else 0``,
  ``bounded = tanh(z + atanh(offset / half_l)) * half_l - offset``, ``code = round(bounded) / (L // 2)``,
  level digit ``round(bounded) + L // 2`` in ``0..L-1``, ``index = sum(digit_i * prod(L_0 .. L_{i-1}))``.
  E.g. L = 8, z = 0.3: ``tanh(0.3 + 0.1437) * 3.5035 - 0.5 = 0.960`` -> 1 -> code 0.25, digit 5.
* The installed packages satisfy the ranges in ``pyproject.toml`` (so a CI machine with drifted packages fails
  here, naming the package), and the private DVCLive hook that ``models/train/live.py`` overrides still exists.
"""
from __future__ import annotations

import math
from importlib import metadata
from pathlib import Path

import pytest
import torch

FSQ = pytest.importorskip("vector_quantize_pytorch").FSQ

# (levels, inputs z (one row per token), expected indices, expected codes): the default tokenizer
# (codebook_size 512 -> [8, 8, 8]) and AMPLIFY's (2048 -> [8, 8, 6, 5], odd level included).
FSQ_CASES = [
    ([8, 8, 8],
     [[0.0, 0.0, 0.0], [-5.0, 5.0, 0.0], [0.3, -0.3, 1.0], [-0.8, 2.0, -1.6]],
     [292, 312, 413, 57],  # digits (4,4,4), (0,7,4), (5,3,6), (1,7,0) with basis (1, 8, 64)
     [[0.0, 0.0, 0.0], [-1.0, 0.75, 0.0], [0.25, -0.25, 0.5], [-0.75, 0.75, -1.0]]),
    ([8, 8, 6, 5],
     [[0.0, 0.0, 0.0, 0.0], [5.0, -5.0, 5.0, -5.0], [0.3, -0.3, 0.6, -0.6], [1.0, -1.0, 2.0, -2.0]],
     [996, 327, 669, 334],  # digits (4,4,3,2), (7,0,5,0), (5,3,4,1), (6,1,5,0) with basis (1, 8, 64, 384)
     [[0.0, 0.0, 0.0, 0.0], [0.75, -1.0, 2 / 3, -1.0], [0.25, -0.25, 1 / 3, -0.5], [0.5, -0.75, 2 / 3, -1.0]]),
]


@pytest.mark.parametrize("levels, z, indices, codes", FSQ_CASES, ids=["8-8-8", "8-8-6-5"])
def test_fsq_codes_and_indices_fixed_values(levels, z, indices, codes):
    fsq = FSQ(levels=levels, dim=len(levels)).eval()  # dim == len(levels): no projections, no random weights
    out, idx = fsq(torch.tensor([z], dtype=torch.float32))
    assert idx.tolist() == [indices]
    torch.testing.assert_close(out, torch.tensor([codes]), rtol=0, atol=1e-6)
    # and back: indices -> the same codes
    torch.testing.assert_close(fsq.indices_to_codes(torch.tensor([indices], dtype=torch.int32)),
                               torch.tensor([codes]), rtol=0, atol=1e-6)


def test_fsq_indices_to_codes_fixed_values():
    fsq = FSQ(levels=[8, 8, 8], dim=3)
    idx = torch.tensor([0, 1, 7, 8, 63, 64, 292, 511], dtype=torch.int32)
    expected = [[-1.0, -1.0, -1.0], [-0.75, -1.0, -1.0], [0.75, -1.0, -1.0], [-1.0, -0.75, -1.0],
                [0.75, 0.75, -1.0], [-1.0, -1.0, -0.75], [0.0, 0.0, 0.0], [0.75, 0.75, 0.75]]
    torch.testing.assert_close(fsq.indices_to_codes(idx), torch.tensor(expected), rtol=0, atol=0)
    # AMPLIFY's levels have 1920 codes; nominal indices 1920..2047 wrap (digit-wise modulo), which
    # TokenizerModel.decode_indices documents: 1920 -> digits (0, 0, 0, 0) = index 0, 1921 -> index 1
    fsq = FSQ(levels=[8, 8, 6, 5], dim=4)
    assert math.prod([8, 8, 6, 5]) == 1920
    torch.testing.assert_close(fsq.indices_to_codes(torch.tensor([1920, 1921, 2047], dtype=torch.int32)),
                               fsq.indices_to_codes(torch.tensor([0, 1, 127], dtype=torch.int32)), rtol=0, atol=0)
    torch.testing.assert_close(fsq.indices_to_codes(torch.tensor([1919], dtype=torch.int32)),
                               torch.tensor([[0.75, 0.75, 2 / 3, 1.0]]), rtol=0, atol=1e-6)


def test_fsq_projections_checkpoint_keys_and_fixed_weights():
    """The tokenizer's FSQ has dim != len(levels): its checkpoint holds exactly the two projections (the level
    buffers and the implicit codebook are not persistent), and the output is ``project_out(codes)``."""
    fsq = FSQ(levels=[8, 8, 8], dim=4).eval()
    assert sorted(fsq.state_dict()) == ["project_in.bias", "project_in.weight", "project_out.bias",
                                        "project_out.weight"]
    w_in = torch.tensor([[1.0, 0.0, 0.0, 0.5], [0.0, 1.0, 0.0, -0.5], [0.0, 0.0, 1.0, 0.0]])
    w_out = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -1.0], [1.0, 1.0, 1.0]])
    b_out = torch.tensor([0.0, 0.0, 0.0, 0.5])
    fsq.load_state_dict({"project_in.weight": w_in, "project_in.bias": torch.zeros(3),
                         "project_out.weight": w_out, "project_out.bias": b_out}, strict=True)
    z = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.3, -0.3, 1.0, 0.0], [0.1, -0.1, -5.0, 0.4]]])
    # projected: (0, 0, 0), (0.3, -0.3, 1.0), (0.3, -0.3, -5.0) -> digits (4,4,4), (5,3,6), (5,3,0)
    out, idx = fsq(z)
    assert idx.tolist() == [[292, 413, 29]]
    codes = torch.tensor([[0.0, 0.0, 0.0], [0.25, -0.25, 0.5], [0.25, -0.25, -1.0]])
    torch.testing.assert_close(out, (codes @ w_out.T + b_out)[None], rtol=0, atol=1e-6)
    torch.testing.assert_close(fsq.indices_to_codes(idx), out, rtol=0, atol=1e-6)


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_installed_packages_satisfy_pyproject_ranges():
    requirements = pytest.importorskip("packaging.requirements")
    project = _pyproject()["project"]
    wrong = []
    for line in project["dependencies"] + project["optional-dependencies"]["test"]:
        req = requirements.Requirement(line)
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{req.name}: not installed (needs {req.specifier})")
            continue
        if not req.specifier.contains(version, prereleases=True):
            wrong.append(f"{req.name} {version} outside {req.specifier}")
    assert not wrong, "installed packages outside pyproject.toml's ranges: " + "; ".join(wrong)


def test_dvclive_private_hook_still_exists():
    """models/train/live.py overrides ``Live._init_test`` and sets ``_save_dvc_exp`` / ``_dvc_file``
    (checked in dvclive 3.41-3.49); if a release renames them the override silently stops working."""
    from dvclive import Live

    from models.train.live import _Live

    assert callable(getattr(Live, "_init_test", None))
    assert "_init_test" in _Live.__dict__
    src = Path(metadata.distribution("dvclive").locate_file("dvclive/live.py")).read_text()
    for name in ("self._save_dvc_exp", "self._dvc_file", "self._init_test()"):
        assert name in src, name
