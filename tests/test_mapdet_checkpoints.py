"""Map-detector checkpoint folders: random checkpoints in the exact layouts of the shared layout dumps (BLIP-2 tiny,
LLaMA tiny, Qwen2 tiny), strict loading that reproduces the reference modules, every bad-folder message, and the
full-size parameter counts on meta (``/work/shared/design/mapdet_checkpoints.md``)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.mapdet.checkpoints import (
    INDEX_NAME, LLAMA2_7B_CONFIG, QWEN2_7B_CONFIG, ByteTokenizer, CheckpointFolderError, LoadReport,
    blip2_qformer_config_json, full_size_parameter_counts, lm_config_from_dict, load_language_model, load_qformer,
    qformer_config_from_folder, random_blip2_qformer_layout, random_language_model_layout, read_layout,
    resolve_folder, write_random_checkpoint)

from tests.checkpoint_layouts import layout_dir

LAYOUTS = layout_dir() or Path("shared/checkpoint_layouts")
needs_layouts = pytest.mark.skipif(layout_dir() is None, reason="the shared checkpoint layouts are not here")
BLIP2, LLAMA, QWEN2 = (LAYOUTS / n for n in ("blip2_tiny_llama.json", "llama_tiny.json", "qwen2_tiny.json"))
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def _config(path: Path) -> dict:
    return json.loads(path.read_text())["config_json"]


def _file_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for p in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(p)))
    return out


def _reference_lm(folder: Path, cls):
    config = lm_config_from_dict(json.loads((folder / "config.json").read_text()))
    ref = cls(config)
    tensors = _file_tensors(folder)
    ref.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")
                         and "rotary_emb.inv_freq" not in k})
    return ref.eval()


def _qformer_parts(folder: Path):
    from transformers import Blip2QFormerModel

    cfg = qformer_config_from_folder(folder)
    torch.manual_seed(0)
    return cfg, Blip2QFormerModel(cfg).eval(), torch.nn.Parameter(torch.zeros(1, 8, cfg.hidden_size))


def _edit_index(folder: Path, fn) -> None:
    index = json.loads((folder / INDEX_NAME).read_text())
    fn(index)
    (folder / INDEX_NAME).write_text(json.dumps(index))


# -------------------------------------------------------------------------------------------- writing / resolving
@needs_layouts
def test_random_checkpoint_has_the_exact_layout_a_correct_index_and_deterministic_bytes(tmp_path):
    layout = read_layout(BLIP2)
    one = write_random_checkpoint(BLIP2, tmp_path / "one", seed=5)
    two = write_random_checkpoint(BLIP2, tmp_path / "two", seed=5, shards=2)
    again = write_random_checkpoint(BLIP2, tmp_path / "again", seed=5, shards=2)
    other = write_random_checkpoint(BLIP2, tmp_path / "other", seed=6)
    assert json.loads((one / "config.json").read_text()) == _config(BLIP2)
    assert not (one / INDEX_NAME).exists() and sorted(p.name for p in two.glob("*.safetensors")) == [SHARD1, SHARD2]
    for folder in (two, again):
        assert (folder / SHARD1).read_bytes() == (two / SHARD1).read_bytes()     # same seed, same bytes
    idx = resolve_folder(two)
    assert idx.shapes() == layout.tensors and len(idx.entries) == 140
    index = json.loads((two / INDEX_NAME).read_text())
    assert index["metadata"]["total_size"] == 4 * 250448 == idx.total_size
    assert set(index["weight_map"].values()) == {SHARD1, SHARD2}
    assert idx.sha256(SHARD1) == hashlib.sha256((two / SHARD1).read_bytes()).hexdigest()
    a, b, c = _file_tensors(one), _file_tensors(two), _file_tensors(other)
    assert all(torch.equal(a[k], b[k]) for k in a)                                # the split does not change values
    assert not torch.equal(a["query_tokens"], c["query_tokens"])
    assert torch.equal(a["qformer.layernorm.weight"], torch.ones(32))             # norms 1
    assert 0.01 < a["qformer.encoder.layer.0.attention.attention.query.weight"].std() < 0.03
    assert resolve_folder(one).shapes() == layout.tensors


@needs_layouts
def test_layouts_derived_from_configs_equal_the_dumps():
    for path in (LLAMA, QWEN2):
        assert random_language_model_layout(lm_config_from_dict(_config(path))) == read_layout(path).tensors
    from transformers import Blip2QFormerConfig

    section = dict(_config(BLIP2)["qformer_config"], encoder_hidden_size=48)
    cfg = Blip2QFormerConfig(**section)
    expected = {k: v for k, v in read_layout(BLIP2).tensors.items() if k == "query_tokens" or k.startswith("qformer.")}
    assert random_blip2_qformer_layout(cfg, 8) == expected


# ------------------------------------------------------------------------------------------------ index errors
@needs_layouts
def test_index_naming_a_missing_shard(tmp_path):
    folder = write_random_checkpoint(LLAMA, tmp_path, seed=0, shards=2)
    (folder / SHARD2).rename(folder / "elsewhere.safetensors")
    with pytest.raises(CheckpointFolderError, match=rf"{INDEX_NAME}.*do not exist.*{SHARD2}"):
        resolve_folder(folder)


@needs_layouts
def test_index_key_in_two_shards(tmp_path):
    folder = write_random_checkpoint(LLAMA, tmp_path, seed=0, shards=2)
    first = load_file(str(folder / SHARD1))
    key = sorted(first)[0]
    save_file({**load_file(str(folder / SHARD2)), key: first[key]}, str(folder / SHARD2), metadata={"format": "pt"})
    with pytest.raises(CheckpointFolderError, match=rf"more than one shard: '{key}' in {SHARD1} and {SHARD2}"):
        resolve_folder(folder)
    # the same key written twice in the JSON weight_map itself (a dict would silently keep the last)
    text = (folder / INDEX_NAME).read_text().replace('"weight_map": {', f'"weight_map": {{"{key}": "{SHARD2}", ', 1)
    (folder / INDEX_NAME).write_text(text)
    with pytest.raises(CheckpointFolderError, match=rf"maps a key twice.*'{key}'"):
        resolve_folder(folder)


@needs_layouts
def test_index_header_key_missing_from_weight_map_and_misrouted_key(tmp_path):
    folder = write_random_checkpoint(LLAMA, tmp_path, seed=0, shards=2)
    _edit_index(folder, lambda ix: ix["weight_map"].pop("model.norm.weight"))
    with pytest.raises(CheckpointFolderError, match=rf"missing from weight_map: 'model.norm.weight' \(in {SHARD2}\)"):
        resolve_folder(folder)
    folder = write_random_checkpoint(LLAMA, tmp_path / "b", seed=0, shards=2)
    _edit_index(folder, lambda ix: ix["weight_map"].__setitem__("model.norm.weight", SHARD1))
    with pytest.raises(CheckpointFolderError, match=rf"'model.norm.weight' \(weight_map says {SHARD1}, whose header "
                                                    rf"lacks it; it is in {SHARD2}"):
        resolve_folder(folder)


@needs_layouts
def test_index_total_size_wrong(tmp_path):
    folder = write_random_checkpoint(LLAMA, tmp_path, seed=0, shards=2)
    _edit_index(folder, lambda ix: ix["metadata"].__setitem__("total_size", 4 * 131904 + 2))
    with pytest.raises(CheckpointFolderError, match=rf"{INDEX_NAME}: metadata.total_size = 527618 but the shard "
                                                    r"headers hold 527616 bytes"):
        resolve_folder(folder)


def test_folder_without_a_checkpoint(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointFolderError, match=r"neither .*pytorch_model.bin.*pickles are refused"):
        resolve_folder(tmp_path)


# ---------------------------------------------------------------------------------------------- language models
@needs_layouts
def test_llama_two_shards_loads_strictly_and_matches_the_reference(tmp_path):
    from transformers import LlamaModel

    folder = write_random_checkpoint(LLAMA, tmp_path, seed=1, shards=2)
    model, tokenizer, report = load_language_model(folder)
    ref = _reference_lm(folder, LlamaModel)
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        assert torch.equal(model(inputs_embeds=x).last_hidden_state, ref(inputs_embeds=x).last_hidden_state)
    assert torch.equal(model.rotary_emb.inv_freq, ref.rotary_emb.inv_freq)
    assert tokenizer is None and not any(p.requires_grad for p in model.parameters())
    assert report.loaded == {"model": {"tensors": 20, "params": 115520}} and report.header_dtypes == {"model": ["F32"]}
    assert report.declared_skipped == {next(iter(report.declared_skipped)): ["lm_head.weight"]}
    assert report.facts["num_key_value_heads"] == 4 and report.facts["lm_head_in_file"] is True
    assert set(report.file_sha256) == {SHARD1, SHARD2} and report.reinitialised == []
    report.random_source = True
    assert json.loads(json.dumps(report.to_dict()))["random_source"] is True


@needs_layouts
def test_qwen2_gqa_loads_and_matches_the_reference_and_the_dtype_policy(tmp_path):
    from transformers import Qwen2Model

    folder = write_random_checkpoint(QWEN2, tmp_path, seed=2, dtype=torch.bfloat16)
    model, _, report = load_language_model(folder)
    ref = _reference_lm(folder, Qwen2Model)
    x = torch.randn(1, 5, 64)
    with torch.no_grad():
        assert torch.equal(model(inputs_embeds=x).last_hidden_state, ref(inputs_embeds=x).last_hidden_state)
    assert report.header_dtypes == {"model": ["BF16"]} and report.loaded["model"]["tensors"] == 26
    assert report.facts["num_key_value_heads"] == 2 and report.facts["model_class"] == "Qwen2Model"
    bf16, _, rep16 = load_language_model(folder, dtype=torch.bfloat16, hash_files=False)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16} and rep16.target_dtype == "bfloat16"
    assert bf16.rotary_emb.inv_freq.dtype == torch.float32 and rep16.file_sha256 == {}
    with pytest.raises(CheckpointFolderError, match="qwen2 is bf16-native and must not run in float16"):
        load_language_model(folder, dtype=torch.float16)


@needs_layouts
def test_lm_missing_unexpected_and_transposed_keys_are_named(tmp_path):
    shapes = read_layout(LLAMA).tensors
    missing = write_random_checkpoint(LLAMA, tmp_path / "m", seed=0, shards=2,
                                      drop_keys=["model.layers.1.mlp.up_proj.weight"])
    with pytest.raises(CheckpointFolderError, match=r"does not fit LlamaModel; missing in file: "
                                                    r"model.layers.1.mlp.up_proj.weight"):
        load_language_model(missing)
    extra = write_random_checkpoint({**shapes, "model.layers.0.mlp.extra.weight": (4, 4)}, tmp_path / "u", seed=0,
                                    config=_config(LLAMA))
    with pytest.raises(CheckpointFolderError, match=r"unexpected in file: model.layers.0.mlp.extra.weight "
                                                    r"\(model.safetensors\)"):
        load_language_model(extra)
    key = "model.layers.1.mlp.down_proj.weight"
    transposed = write_random_checkpoint({**shapes, key: shapes[key][::-1]}, tmp_path / "t", seed=0,
                                         config=_config(LLAMA))
    with pytest.raises(CheckpointFolderError, match=rf"shape mismatch: {key} \(model.safetensors\): file \[172, 64\] "
                                                    r"vs model \[64, 172\]"):
        load_language_model(transposed)


@needs_layouts
def test_lm_config_disagreeing_with_the_tensor_shapes_names_the_field(tmp_path):
    folder = write_random_checkpoint(QWEN2, tmp_path / "q", seed=0, config=dict(_config(QWEN2),
                                                                                num_key_value_heads=28))
    with pytest.raises(CheckpointFolderError, match=r"num_key_value_heads = 28 but model.layers.0.self_attn.k_proj"
                                                    r".weight \(model.safetensors\) has shape \[32, 64\] -> 32 rows "
                                                    r"= 2 heads of head_dim 16"):
        load_language_model(folder)
    folder = write_random_checkpoint(LLAMA, tmp_path / "h", seed=0, config=dict(_config(LLAMA), hidden_size=128))
    with pytest.raises(CheckpointFolderError, match=r"hidden_size = 128 but model.embed_tokens.weight "
                                                    r"\(model.safetensors\) has shape \[256, 64\]"):
        load_language_model(folder)
    folder = write_random_checkpoint(LLAMA, tmp_path / "l", seed=0, config=dict(_config(LLAMA), num_hidden_layers=3))
    with pytest.raises(CheckpointFolderError, match=r"num_hidden_layers = 3 but the file has 2 layers"):
        load_language_model(folder)
    folder = write_random_checkpoint(LLAMA, tmp_path / "t", seed=0, config=dict(_config(LLAMA), model_type="opt"))
    with pytest.raises(CheckpointFolderError, match=r"config.json: model_type = 'opt'; llama or qwen2 expected"):
        load_language_model(folder)


@needs_layouts
def test_lm_heads_untied_absent_tied_aliased(tmp_path):
    untied = write_random_checkpoint(LLAMA, tmp_path / "u", seed=0, drop_keys=["lm_head.weight"])
    with pytest.raises(CheckpointFolderError, match=r"lm_head.weight is absent .* tie_word_embeddings = false"):
        load_language_model(untied, keep_lm_head=True)
    _, _, report = load_language_model(untied)                    # feature extractor: fine, but recorded
    assert report.facts["lm_head_in_file"] is False and "lm_head_note" in report.facts
    assert report.declared_skipped == {}

    tied = write_random_checkpoint(LLAMA, tmp_path / "t", seed=0, drop_keys=["lm_head.weight"],
                                   config=dict(_config(LLAMA), tie_word_embeddings=True))
    model, _, report = load_language_model(tied, keep_lm_head=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert report.aliased == {"lm_head.weight": "model.embed_tokens.weight"}
    x = torch.randn(1, 3, 64)
    with torch.no_grad():
        out = model(inputs_embeds=x, output_hidden_states=True)
        assert torch.allclose(out.logits, out.hidden_states[-1] @ model.model.embed_tokens.weight.T, atol=1e-6)

    kept, _, report = load_language_model(write_random_checkpoint(LLAMA, tmp_path / "k", seed=0), keep_lm_head=True)
    assert torch.equal(kept.lm_head.weight, _file_tensors(tmp_path / "k")["lm_head.weight"])
    assert report.loaded["lm_head"] == {"tensors": 1, "params": 16384} and report.declared_skipped == {}


@needs_layouts
def test_legacy_rotary_inv_freq_keys_are_declared_ignored(tmp_path):
    shapes = read_layout(LLAMA).tensors
    legacy = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": (8,) for i in range(2)}
    folder = write_random_checkpoint({**shapes, **legacy}, tmp_path, seed=0, shards=2, config=_config(LLAMA))
    model, _, report = load_language_model(folder)
    assert sorted(report.declared_skipped[next(k for k in report.declared_skipped if "inv_freq" in k)]) == \
        sorted(legacy)
    from transformers import LlamaModel

    x = torch.randn(1, 4, 64)
    with torch.no_grad():
        assert torch.equal(model(inputs_embeds=x).last_hidden_state,
                           _reference_lm(folder, LlamaModel)(inputs_embeds=x).last_hidden_state)


@needs_layouts
def test_tokenizer_files_are_loaded_else_none_and_the_byte_fallback(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = write_random_checkpoint(LLAMA, tmp_path, seed=0)
    tk = Tokenizer(models.WordLevel({"[UNK]": 0, "lane": 1, "divider": 2}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]").save_pretrained(folder)
    _, tokenizer, report = load_language_model(folder)
    assert tokenizer("lane divider")["input_ids"] == [1, 2] and report.facts["tokenizer"]


def test_byte_tokenizer():
    tok = ByteTokenizer(256)
    assert tok.encode("ab") == [97, 98] and tok.encode("é") == [195, 169] and tok.decode([195, 169]) == "é"
    with pytest.raises(ValueError, match=">= 256"):
        ByteTokenizer(100)


# ---------------------------------------------------------------------------------------------------- Q-Former
@needs_layouts
def test_qformer_from_the_blip2_layout_matches_the_reference_and_stays_fp32(tmp_path):
    from transformers import Blip2QFormerModel

    folder = write_random_checkpoint(BLIP2, tmp_path, seed=3, shards=2, dtype=torch.float16)   # F16 on disk
    cfg, qformer, query = _qformer_parts(folder)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.encoder_hidden_size) == (32, 4, 48)
    report = load_qformer(folder, qformer, query)
    tensors = _file_tensors(folder)
    ref = Blip2QFormerModel(cfg).eval()
    ref.load_state_dict({k[len("qformer."):]: v for k, v in tensors.items() if k.startswith("qformer.")})
    assert query.dtype == torch.float32 and torch.equal(query.data, tensors["query_tokens"].float())
    assert {p.dtype for p in qformer.parameters()} == {torch.float32}
    image = torch.randn(2, 17, 48)
    with torch.no_grad():
        got = qformer(query_embeds=query.expand(2, -1, -1), encoder_hidden_states=image).last_hidden_state
        want = ref(query_embeds=tensors["query_tokens"].float().expand(2, -1, -1),
                   encoder_hidden_states=image).last_hidden_state
    assert torch.equal(got, want)
    assert report.loaded == {"qformer": {"tensors": 86, "params": 49024}, "query_tokens": {"tensors": 1, "params": 256}}
    assert report.header_dtypes == {"qformer": ["F16"], "query_tokens": ["F16"]} and report.target_dtype == "float32"
    skipped = {reason.split(" ")[0]: len(keys) for reason, keys in report.declared_skipped.items()}
    assert skipped == {"vision_model.*": 30, "language_model.*": 21, "language_projection.*": 2}
    assert isinstance(report, LoadReport) and json.dumps(report.to_dict())


@needs_layouts
def test_qformer_only_folder_and_stray_text_ffn_keys(tmp_path):
    from transformers import Blip2QFormerConfig

    cfg = Blip2QFormerConfig(**dict(_config(BLIP2)["qformer_config"], encoder_hidden_size=48))
    layout = random_blip2_qformer_layout(cfg, 8)
    stray = {f"qformer.encoder.layer.{i}.{m}.{p}": s for i in range(4)
             for m, p, s in (("intermediate", "dense.weight", (80, 32)), ("output", "dense.weight", (32, 80)),
                             ("output", "LayerNorm.weight", (32,)))}
    folder = write_random_checkpoint({**layout, **stray}, tmp_path, seed=4,
                                     config=blip2_qformer_config_json(cfg, 8))
    _, qformer, query = _qformer_parts(folder)
    report = load_qformer(folder, qformer, query)
    assert list(report.declared_skipped) == [next(k for k in report.declared_skipped if "stray" in k)]
    assert sorted(next(iter(report.declared_skipped.values()))) == sorted(stray)
    assert report.loaded["qformer"]["tensors"] == 86


@needs_layouts
def test_qformer_missing_unexpected_transposed_named_in_one_error(tmp_path):
    shapes = read_layout(BLIP2).tensors
    key = "qformer.encoder.layer.2.crossattention.attention.value.weight"
    bad = {k: v for k, v in shapes.items() if k != "qformer.encoder.layer.1.output_query.dense.bias"}
    bad.update({key: shapes[key][::-1], "qformer.embeddings.word_embeddings.weight": (10, 32)})
    folder = write_random_checkpoint(bad, tmp_path, seed=0, config=_config(BLIP2))
    _, qformer, query = _qformer_parts(folder)
    with pytest.raises(CheckpointFolderError) as err:
        load_qformer(folder, qformer, query)
    msg = str(err.value)
    assert f"shape mismatch: {key} (model.safetensors): file [48, 32] vs model [32, 48]" in msg
    assert "missing in file: qformer.encoder.layer.1.output_query.dense.bias" in msg
    assert "unexpected in file: qformer.embeddings.word_embeddings.weight (model.safetensors)" in msg


@needs_layouts
def test_qformer_config_disagreeing_with_the_tensors_names_field_and_tensor(tmp_path):
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    folder = write_random_checkpoint(BLIP2, tmp_path, seed=0, keys=("query_tokens", "qformer"))
    assert not any(k.startswith("vision_model.") for k in resolve_folder(folder).entries)
    base = dict(_config(BLIP2)["qformer_config"], encoder_hidden_size=48)
    cases = {
        "encoder_hidden_size": (dict(base, encoder_hidden_size=1408),
                                r"encoder_hidden_size = 1408 but qformer.encoder.layer.0.crossattention.attention."
                                r"key.weight \(model.safetensors\) has shape \[32, 48\]"),
        "cross_attention_frequency": (dict(base, cross_attention_frequency=1),
                                      r"cross_attention_frequency = 1 puts cross-attention in layers \[0, 1, 2, 3\].*"
                                      r"qformer.encoder.layer.1.crossattention.attention.key.weight absent"),
        "hidden_size": (dict(base, hidden_size=64),
                        r"hidden_size = 64 but qformer.layernorm.weight \(model.safetensors\) has shape \[32\]"),
        "num_hidden_layers": (dict(base, num_hidden_layers=6), r"num_hidden_layers = 6 but the file has 4 layers"),
    }
    for name, (section, pattern) in cases.items():
        qformer = Blip2QFormerModel(Blip2QFormerConfig(**section))
        query = torch.nn.Parameter(torch.zeros(1, 8, section["hidden_size"]))
        with pytest.raises(CheckpointFolderError, match=pattern):
            load_qformer(folder, qformer, query)
    _, qformer, _ = _qformer_parts(folder)
    with pytest.raises(CheckpointFolderError, match=r"query_tokens Parameter \[1, 32, 32\]: token count = 32 but "
                                                    r"query_tokens \(model.safetensors\) has shape \[1, 8, 32\]"):
        load_qformer(folder, qformer, torch.nn.Parameter(torch.zeros(1, 32, 32)))
    cfg = json.loads((folder / "config.json").read_text())          # the folder's own config vs its tensors
    cfg["vision_config"]["hidden_size"] = 64
    (folder / "config.json").write_text(json.dumps(cfg))
    qformer = Blip2QFormerModel(Blip2QFormerConfig(**base))
    with pytest.raises(CheckpointFolderError, match=r"config.json qformer_config.encoder_hidden_size = 64 but "
                                                    r"qformer.encoder.layer.0.crossattention"):
        load_qformer(folder, qformer, torch.nn.Parameter(torch.zeros(1, 8, 32)))


# ---------------------------------------------------------------------------------------------- full-size counts
def test_full_size_counts_from_the_public_configs():
    counts = full_size_parameter_counts()
    assert counts["blip2_qformer_with_query_tokens"] == 105_162_240 and counts["blip2_qformer"] == 105_137_664
    assert counts["llama2_7b"] == 6_738_415_616 and counts["qwen2_7b"] == 7_615_616_512


@needs_layouts
def test_full_size_counts_equal_the_layout_dumps():
    assert _config(LAYOUTS / "llama2_7b.json") == LLAMA2_7B_CONFIG
    assert _config(LAYOUTS / "qwen2_7b.json") == QWEN2_7B_CONFIG
    counts = full_size_parameter_counts(LAYOUTS)
    for name in ("llama2_7b", "qwen2_7b"):
        dump = json.loads((LAYOUTS / f"{name}.json").read_text())
        assert counts[name] == dump["num_parameters"]
        assert counts[f"{name}_base"] == dump["submodule_param_counts"]["model"]["numel"]
    blip2 = json.loads((LAYOUTS / "blip2_opt27b.json").read_text())
    assert counts["blip2_qformer"] == blip2["top_level_prefixes"]["qformer"]["numel"]
    assert counts["blip2_query_tokens"] == blip2["top_level_prefixes"]["query_tokens"]["numel"]
    assert counts["blip2_qformer_with_query_tokens"] == 105_162_240
    assert (counts["llama2_7b"], counts["qwen2_7b"]) == (6_738_415_616, 7_615_616_512)


@needs_layouts
def test_qformer_declared_reinitialisation_keeps_the_fresh_cross_attention_kv(tmp_path):
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    folder = write_random_checkpoint(BLIP2, tmp_path, seed=0, keys=("query_tokens", "qformer"))
    section = dict(_config(BLIP2)["qformer_config"], encoder_hidden_size=20)      # an encoder width other than 48
    qformer = Blip2QFormerModel(Blip2QFormerConfig(**section))
    fresh = [f"qformer.encoder.layer.{i}.crossattention.attention.{m}.weight" for i in (0, 2) for m in ("key", "value")]
    before = {k: qformer.state_dict()[k[len("qformer."):]].clone() for k in fresh}
    query = torch.nn.Parameter(torch.zeros(1, 8, 32))
    with pytest.raises(CheckpointFolderError, match="encoder_hidden_size = 20"):
        load_qformer(folder, qformer, query)
    report = load_qformer(folder, qformer, query, reinitialise=fresh)
    assert report.reinitialised == sorted(fresh) and report.loaded["qformer"]["tensors"] == 86 - 4
    assert all(torch.equal(qformer.state_dict()[k[len("qformer."):]], v) for k, v in before.items())
    assert sorted(report.declared_skipped["declared re-initialised (file tensor not used)"]) == sorted(fresh)
