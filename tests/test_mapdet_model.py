"""The map detector: the seed's setup test (construction, three parameter groups, forward with loss, backward
reaching all three trainable groups and nothing in the frozen language model or image encoder), the full sizes on
the meta device, decoding, and the errors a user meets before any work."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.common.params import parse_section
from models.mapdet.config import MapDetConfig
from models.mapdet.evaluation import decode

TINY = dict(image_size=28, vision_width=16, vision_layers=1, vision_heads=2, vision_intermediate=32,
            qformer_width=16, qformer_layers=2, qformer_heads=2, qformer_intermediate=32, qformer_encoder_width=16,
            num_query_tokens=4, lm_width=32, lm_layers=1, lm_heads=2, lm_kv_heads=2, lm_intermediate=48,
            num_instances=4, decoder_width=16, decoder_heads=2, epochs=2, batch_size=2, warmup_steps=1,
            figure_samples=1)


def tiny_params(**changes):
    return parse_section("mapdet", {**TINY, **changes})


def build(**changes):
    from models.mapdet.sources import build_detector
    from models.mapdet.training import MapDetTask

    p = tiny_params(**changes)
    cfg = MapDetConfig.from_params(p, num_points=5, num_classes=3)
    task = MapDetTask(cfg, p)
    torch.manual_seed(0)
    model = task.build_model()
    return task, model


def batch(B=2, M=3, P=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(B, M, P, 2, generator=g)
    valid = torch.tensor([[True, True, False], [True, False, False]])[:B]
    return {"images": torch.randint(0, 256, (B, 6, 3, 28, 28), dtype=torch.uint8, generator=g),
            "gt_points": pts, "gt_labels": torch.tensor([[0, 2, -1], [1, -1, -1]])[:B],
            "gt_closed": torch.tensor([[False, False, False], [True, False, False]])[:B], "gt_valid": valid}


def test_setup_groups_forward_backward_and_frozen_parts():
    """The seed's test_training_setup: gradients reach the Q-Former, the map queries and the decoder; the frozen
    language model and image encoder get none, hold no optimiser state and do not move in a step."""
    task, model = build()
    assert task.provenance["random_sources"] and task.provenance["language_model"]["random_source"]
    groups = task.param_groups(model)
    assert [g["name"] for g in groups] == ["qformer", "queries", "decoder"]
    assert groups[0]["lr_mult"] == pytest.approx(2.0e-4 / 1.0e-3) and groups[1]["lr_mult"] == 1.0
    in_groups = {id(p) for g in groups for p in g["params"]}
    frozen = [p for n, p in model.named_parameters() if n.startswith(("language_model.", "encoder.vision_model."))]
    assert frozen and not any(p.requires_grad for p in frozen) and not in_groups & {id(p) for p in frozen}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == in_groups                                           # every trainable parameter, once

    loss, logs = task.loss(model, batch())
    assert torch.isfinite(loss) and {"loss_cls", "loss_pts", "loss_dir"} <= set(logs)
    loss.backward()
    for g in groups:
        assert all(p.grad is not None for p in g["params"]), g["name"]
        assert sum(float(p.grad.abs().sum()) for p in g["params"]) > 0, g["name"]
    assert all(p.grad is None for p in frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([{"params": g["params"]} for g in groups], lr=1e-2, weight_decay=0.01)
    opt.step()
    assert all(id(p) not in {id(q) for q in opt.state} for p in frozen)
    for n, p in model.named_parameters():
        moved = not torch.equal(before[n], p.detach())
        assert moved is p.requires_grad or not moved, n
        if n.startswith(("language_model.", "encoder.vision_model.")):
            assert not moved, n
    assert not torch.equal(before["point_queries"], model.point_queries.detach())
    assert not torch.equal(before["qformer.layernorm.weight"], model.qformer.layernorm.weight.detach())


def test_unfrozen_language_model_gets_its_own_group_and_gradients():
    task, model = build(freeze_lm=False)
    groups = task.param_groups(model)
    assert [g["name"] for g in groups] == ["qformer", "queries", "decoder", "lm"]
    assert groups[-1]["lr_mult"] == pytest.approx(1.0e-4 / 1.0e-3)
    loss, _ = task.loss(model, batch())
    loss.backward()
    assert all(p.grad is not None for p in model.language_model.parameters())


def test_full_sizes_on_meta_match_the_checkpoint_layouts():
    """EVA ViT-g (985,952,256 params in BLIP-2 at 224 px), BLIP-2's Q-Former + queries (105,162,240), LLaMA-2-7B without the LM
    head (6,738,415,616 - 32000 x 4096) and Qwen2-7B without it; trainable parameters by group."""
    from models.mapdet.model import MapDetector

    expect_lm = {"llama": 6_738_415_616 - 32000 * 4096, "qwen2": 7_615_616_512 - 152064 * 3584}
    for lm, lm_params in expect_lm.items():
        cfg = MapDetConfig.full_size(lm)
        with torch.device("meta"):
            model = MapDetector(cfg, list(range(1, 21)))
        count = {g: sum(p.numel() for _, p in ps) for g, ps in model.groups().items()}
        # BLIP-2's ViT-g has 257 positions (224 px); at the seed's 336 px 577 (the checkpoint's grid is resampled)
        assert count["lm"] == lm_params and count["encoder"] == 985_952_256 + (577 - 257) * 1408
        qformer = sum(p.numel() for p in model.qformer.parameters()) + model.query_tokens.numel()
        assert qformer == 105_162_240
        assert count["queries"] == (50 + 50 * 20) * cfg.lm_width                     # ~4.3M at 4096
        assert count["qformer"] == qformer + 6 * 1408 + 768 * cfg.lm_width + cfg.lm_width
        assert 5e6 < count["decoder"] < 2e7
        total = sum(count.values())
        trainable = count["qformer"] + count["queries"] + count["decoder"]
        assert trainable / total < 0.02                                            # the seed: ~1.6 %


def test_prompt_longer_than_the_context_is_refused():
    from models.mapdet.model import MapDetector

    cfg = MapDetConfig.from_params(tiny_params(lm_max_positions=30), num_points=5)
    with pytest.raises(ValueError, match="lm_max_positions = 30"):
        MapDetector(cfg, list(range(20)))


def test_lm_params_must_describe_a_real_lm_folder(tmp_path):
    from models.common.params import ParamsError
    from models.mapdet import checkpoints as C

    cfg = MapDetConfig.from_params(tiny_params(), num_points=5)
    C.write_random_checkpoint(cfg.replace(lm_width=48, lm_heads=2).lm_config(), tmp_path / "lm", seed=0)
    with pytest.raises(ParamsError, match="lm_width = 32"):
        build(lm_checkpoint=str(tmp_path / "lm"))


def test_decode_takes_the_top_scoring_instance_class_pairs():
    logits = torch.tensor([[[5.0, -5.0, 0.0], [-5.0, -5.0, 4.0]]])          # [1, I=2, C=3]
    points = torch.zeros(1, 2, 3, 2)
    points[0, 1] = 1.0
    out = decode(logits, points, (60.0, 30.0), top_k=3)[0]
    assert out["labels"].tolist() == [0, 2, 2] and np.all(np.diff(out["scores"]) <= 0)
    assert np.allclose(out["pts"][0], [[-15.0, -30.0]] * 3) and np.allclose(out["pts"][1], [[15.0, 30.0]] * 3)


def test_config_rules_name_the_key():
    from models.common.params import ConfigError, ParamsError

    with pytest.raises(ParamsError, match="mapdet.image_size"):
        tiny_params(image_size=30)
    with pytest.raises(ConfigError, match="lm_kv_heads"):
        MapDetConfig.from_params(tiny_params(lm_kv_heads=3, lm_heads=2), num_points=5)
    with pytest.raises(ParamsError, match="unknown key 'mapdet.freeze_llm'"):
        parse_section("mapdet", {"freeze_llm": True})


def test_bfloat16_language_model_still_passes_gradients_to_the_qformer():
    """lm_dtype bfloat16 (a 7B LM on a GPU): the frozen LM's weights are bf16, the trained parts stay fp32."""
    task, model = build(lm_dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in model.language_model.parameters())
    assert model.query_tokens.dtype == torch.float32 and model.decoder.input.weight.dtype == torch.float32
    loss, _ = task.loss(model, batch())
    loss.backward()
    assert torch.isfinite(loss) and float(model.query_tokens.grad.abs().sum()) > 0
