"""Hugging Face checkpoints into bigjax: logits equal to transformers' (PyTorch, float32) for GPT-2,
Llama (kv heads 1/2/4, tied and untied, non-default rope_theta, llama3 scaling) and BERT, greedy
decoding equal to transformers' generate, every layout a file comes in, and a one-line error for
each kind of bad input."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import bigjax  # noqa: E402
from bigjax import generate  # noqa: E402
from bigjax.config_checks import ConfigError  # noqa: E402
from bigjax.hf.__main__ import import_model  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402
from tests import hf_models  # noqa: E402

# float32 on both sides; the two differ only in summation order, ~1e-6 relative on logits of a
# few units, so 1e-4 leaves a wide margin while a wrong mapping moves logits by ~1.
ATOL = 1e-4
LENGTH = 64  # positions compared: RoPE and learned positions far from the first few


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("tokenizers")
  hf_models.save_bpe_tokenizer(str(root / "bpe"))
  hf_models.save_wordpiece_tokenizer(str(root / "wordpiece"))
  return {"bpe": str(root / "bpe"), "wordpiece": str(root / "wordpiece")}


def _tokens(batch: int, vocab: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, (batch, LENGTH)).astype(np.int32)


def _decoder_logits(run, tokens_BxL):
  return np.asarray(jax.jit(run.model.apply)({"params": run.params}, tokens_BxL)[0])


DECODERS = {
    "gpt2-tied": lambda: hf_models.gpt2(tied=True),
    "gpt2-erf-gelu": lambda: hf_models.gpt2(activation_function="gelu"),
    "llama-kv1-tied": lambda: hf_models.llama(kv_heads=1, tied=True, rope_theta=500.0),
    "llama-kv2-untied": lambda: hf_models.llama(kv_heads=2, tied=False, rope_theta=2e5),
    "llama-kv4-untied": lambda: hf_models.llama(kv_heads=4, tied=False, rope_theta=500.0),
    # original context 32 < the 64 positions compared; with head width 8 and theta 500 the four
    # wavelengths (6, 30, 133, 628) fall in all three llama3 bands (kept, blended, divided).
    "llama3-scaling": lambda: hf_models.llama(kv_heads=2, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32}),
}


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_logits_match_transformers(name, tokenizer_dirs, tmp_path):
  torch.manual_seed(0)
  model = DECODERS[name]()
  hf_dir = hf_models.save(model, str(tmp_path / name), tokenizer_dirs["bpe"])
  tokens_BxL = _tokens(2, hf_models.BPE_VOCAB)
  expected = hf_models.logits(model, tokens_BxL)
  run = bigjax.load(hf_dir, devices=jax.devices()[:1])
  assert np.abs(expected).max() > 1.0  # the comparison is not between near-zero outputs
  np.testing.assert_allclose(_decoder_logits(run, tokens_BxL), expected, atol=ATOL, rtol=0)
  if name in GREEDY:
    _assert_greedy_tokens_match_generate(run, model)


GREEDY = ("gpt2-tied", "llama-kv2-untied")  # one of each family also decodes


def _assert_greedy_tokens_match_generate(run, model):
  """32 tokens from bigjax's KV-cache sampler at temperature 0 equal transformers' generate."""
  prompt_1xP = run.tokenizer.encode("def f(x):\n    return")[None]
  new_N, = generate.generate(run.model, run.params, prompt_1xP, max_new_tokens=32,
                             temperature=0.0)
  ours = np.concatenate([prompt_1xP[0], new_N])[None]
  with torch.no_grad():
    theirs = model.generate(torch.tensor(prompt_1xP, dtype=torch.long), max_new_tokens=32,
                            min_new_tokens=32, do_sample=False, pad_token_id=0)
  np.testing.assert_array_equal(np.asarray(ours), theirs.numpy())
  assert len(set(np.asarray(ours)[0, prompt_1xP.shape[1]:])) > 3  # not one token repeated


def test_unscanned_sharded_and_bfloat16_files(tokenizer_dirs, tmp_path):
  """Per-layer parameters (no scan), a checkpoint in shards with an index, and bfloat16 tensors
  (compared with transformers reading the same bfloat16 file into float32)."""
  torch.manual_seed(1)
  model = hf_models.llama(kv_heads=2)
  sharded = hf_models.save(model, str(tmp_path / "sharded"), tokenizer_dirs["bpe"],
                           max_shard_size="40KB")
  assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
  tokens_BxL = _tokens(2, hf_models.BPE_VOCAB, seed=1)
  run = bigjax.load(sharded, devices=jax.devices()[:1], scan_layers=False)
  assert "layer_1" in run.params and "layers" not in run.params
  np.testing.assert_allclose(_decoder_logits(run, tokens_BxL), hf_models.logits(model, tokens_BxL),
                             atol=ATOL, rtol=0)

  half = hf_models.save(model.to(torch.bfloat16), str(tmp_path / "bf16"), tokenizer_dirs["bpe"])
  widened = transformers.AutoModelForCausalLM.from_pretrained(half, dtype=torch.float32)
  run = bigjax.load(half, devices=jax.devices()[:1])
  np.testing.assert_allclose(_decoder_logits(run, tokens_BxL),
                             hf_models.logits(widened, tokens_BxL), atol=ATOL, rtol=0)


@pytest.mark.parametrize("classifier", [False, True], ids=["masked_lm", "classifier"])
def test_bert_logits_match_transformers(classifier, tokenizer_dirs, tmp_path):
  """With padding: the second row's last 20 positions are [PAD] and masked out on both sides."""
  torch.manual_seed(2)
  model = hf_models.bert(classifier)
  hf_dir = hf_models.save(model, str(tmp_path / "bert"), tokenizer_dirs["wordpiece"])
  run = bigjax.load(hf_dir, devices=jax.devices()[:1])
  pad = run.task.special.pad
  tokens_BxL = np.maximum(_tokens(2, hf_models.WORDPIECE_VOCAB, seed=2), pad + 1)
  tokens_BxL[1, -20:] = pad
  valid_BxL = tokens_BxL != pad
  expected = hf_models.logits(model, tokens_BxL, valid_BxL)
  out = jax.jit(run.model.apply)({"params": run.params}, tokens_BxL, valid_BxL)
  got = np.asarray(out if classifier else out[0])
  if not classifier:  # padded positions' outputs are unused; both sides compute them differently
    got, expected = got[valid_BxL], expected[valid_BxL]
  assert np.abs(expected).max() > 0.5
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
  if classifier:
    assert run.config.data.class_names == ("LABEL_0", "LABEL_1", "LABEL_2")


def test_gpt2_file_without_prefix_and_with_mask_buffers(tokenizer_dirs, tmp_path):
  """Files saved from GPT2Model name tensors without `transformer.`; old files also hold the
  causal-mask buffers attn.bias. Both read to the same parameters."""
  torch.manual_seed(4)
  hf_dir = hf_models.save(hf_models.gpt2(), str(tmp_path / "gpt2"), tokenizer_dirs["bpe"])
  reference = bigjax.load(hf_dir, devices=jax.devices()[:1]).params
  path = os.path.join(hf_dir, "model.safetensors")
  tensors = {k.removeprefix("transformer."): v for k, v in load_file(path).items()}
  tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 96, 96), np.float32))
  save_file(tensors, path, metadata={"format": "pt"})
  jax.tree.map(np.testing.assert_array_equal, bigjax.load(hf_dir).params, reference)


@pytest.fixture(scope="module")
def good_llama(tokenizer_dirs, tmp_path_factory):
  torch.manual_seed(5)
  return hf_models.save(hf_models.llama(kv_heads=2), str(tmp_path_factory.mktemp("good")),
                        tokenizer_dirs["bpe"])


def _broken(good: str, tmp_path, config=None, tensors=None) -> str:
  """A copy of `good` with config.json fields replaced and tensors changed (None deletes)."""
  bad = str(tmp_path / "bad")
  os.makedirs(bad)
  for name in os.listdir(good):
    with open(os.path.join(good, name), "rb") as src, open(os.path.join(bad, name), "wb") as dst:
      dst.write(src.read())
  with open(os.path.join(bad, "config.json")) as f:
    hf = json.load(f) | (config or {})
  with open(os.path.join(bad, "config.json"), "w") as f:
    json.dump(hf, f)
  if tensors == "delete":
    os.remove(os.path.join(bad, "model.safetensors"))
    return bad
  weights = load_file(os.path.join(bad, "model.safetensors")) | (tensors or {})
  save_file({k: v for k, v in weights.items() if v is not None},
            os.path.join(bad, "model.safetensors"), metadata={"format": "pt"})
  return bad


BAD_INPUTS = {
    "no weights": ({"tensors": "delete"}, "has no weights"),
    "unknown architecture": ({"config": {"architectures": ["MistralForCausalLM"]}},
                             "bigjax reads one of"),
    "missing tensor": ({"tensors": {"model.layers.1.mlp.up_proj.weight": None}},
                       "tensor model.layers.1.mlp.up_proj.weight is missing"),
    "unexpected tensor": ({"tensors": {"model.layers.0.extra.weight": np.zeros(3, np.float32)}},
                          "unexpected tensor model.layers.0.extra.weight"),
    "shape mismatch": ({"config": {"intermediate_size": 40}},
                       r"down_proj.weight has shape \(32, 48\), but the model needs \(32, 40\)"),
    "rope scaling": ({"config": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}},
                     "rope scaling of type 'yarn'"),
    "attention bias": ({"config": {"attention_bias": True}}, "attention_bias=True"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_a_one_line_error(case, good_llama, tmp_path):
  change, message = BAD_INPUTS[case]
  bad = _broken(good_llama, tmp_path, **change)
  with pytest.raises(ConfigError, match=message) as error:
    import_model(bad, str(tmp_path / "run"))
  assert "\n" not in str(error.value)


def test_cli_reports_bad_input_in_one_line(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
  result = subprocess.run(
      [sys.executable, "-m", "bigjax.hf", "import", f"--hf={tmp_path}",
       f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 2
  assert result.stderr.strip().count("\n") == 0
  assert result.stderr.startswith("error: config.json lacks n_embd")
