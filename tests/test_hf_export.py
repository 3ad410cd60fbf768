"""bigjax runs out to Hugging Face and back: transformers loads every exported weight (sharded, with
a correct index) and computes bigjax's logits; importing the export again gives the same bits; a
byte-level bigjax model exports with a tokenizer that reproduces its bytes; an imported model
fine-tunes through train.py, and init_from reads a Hugging Face directory directly."""

import json
import os

import jax
import numpy as np
import pytest
from safetensors import safe_open

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import bigjax  # noqa: E402
from bigjax import build, finetune, train  # noqa: E402
from bigjax.config_checks import ConfigError  # noqa: E402
from bigjax.data.tokenizers import ByteTokenizer  # noqa: E402
from bigjax.hf import bert as hf_bert  # noqa: E402
from bigjax.hf.__main__ import export_model, import_model, write_run  # noqa: E402
from bigjax.load import layout_config  # noqa: E402
from configs import finetune as finetune_config  # noqa: E402
from tests import hf_models  # noqa: E402

# Both sides compute in float32 from identical weights. With weights drawn at std 0.1 (logits of
# about 2) transformers' own float32 logits lie ~1e-6 from its float64 ones (measured), so 1e-5
# is float32 noise with margin, while one misplaced weight moves logits by ~0.1. (At the import
# tests' std 0.3 that noise is ~2e-5 on both sides, hence their 1e-4.)
ATOL = 1e-5
INIT = 0.1
ONE = jax.devices()[:1]


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("tokenizers")
  hf_models.save_bpe_tokenizer(str(root / "bpe"))
  hf_models.save_wordpiece_tokenizer(str(root / "wordpiece"))
  return {"bpe": str(root / "bpe"), "wordpiece": str(root / "wordpiece")}


MODELS = {
    "gpt2": (lambda: hf_models.gpt2(init=INIT), "bpe", transformers.AutoModelForCausalLM),
    "llama3": (lambda: hf_models.llama(kv_heads=2, tied=False, init=INIT, rope_scaling={
        "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32}), "bpe", transformers.AutoModelForCausalLM),
    "bert-mlm": (lambda: hf_models.bert(init=INIT), "wordpiece", transformers.AutoModelForMaskedLM),
    "bert-classifier": (lambda: hf_models.bert(classifier=True, init=INIT), "wordpiece",
                        transformers.AutoModelForSequenceClassification),
}


def _bigjax_logits(run, tokens_BxL):
  if run.config.task == "lm":
    return np.asarray(jax.jit(run.model.apply)({"params": run.params}, tokens_BxL)[0])
  out = jax.jit(run.model.apply)({"params": run.params}, tokens_BxL, tokens_BxL >= 0)
  return np.asarray(out[0] if run.config.task == "mlm" else out)


def _check_index(directory: str):
  """Every tensor in exactly one shard, and total_size the sum of their bytes."""
  with open(os.path.join(directory, "model.safetensors.index.json")) as f:
    index = json.load(f)
  seen, total = [], 0
  for file in sorted(set(index["weight_map"].values())):
    with safe_open(os.path.join(directory, file), "numpy") as shard:
      for name in shard.keys():
        assert index["weight_map"][name] == file
        seen.append(name)
        total += shard.get_tensor(name).nbytes
  assert sorted(seen) == sorted(index["weight_map"]) and len(set(seen)) == len(seen)
  assert index["metadata"]["total_size"] == total


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_through_transformers(name, tokenizer_dirs, tmp_path):
  make, tokenizer, auto_class = MODELS[name]
  torch.manual_seed(0)
  hf_dir = hf_models.save(make(), str(tmp_path / "hf"), tokenizer_dirs[tokenizer])
  run = import_model(hf_dir, str(tmp_path / "run"))
  out = str(tmp_path / "exported")
  written = export_model(str(tmp_path / "run"), out, max_shard_size="30KB")
  assert len(written) > 2  # several shards and the index
  _check_index(out)

  model, info = auto_class.from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info  # no missing, unexpected or mismatched weights
  vocab = run.task.model_cfg.vocab_size
  tokens_BxL = np.random.default_rng(0).integers(5, vocab, (2, 48)).astype(np.int32)
  np.testing.assert_allclose(hf_models.logits(model.eval(), tokens_BxL),
                             _bigjax_logits(run, tokens_BxL), atol=ATOL, rtol=0)
  assert (transformers.AutoTokenizer.from_pretrained(out).encode(hf_models.TEXT)
          == transformers.AutoTokenizer.from_pretrained(hf_dir).encode(hf_models.TEXT))

  again = import_model(out, str(tmp_path / "again"))
  jax.tree.map(np.testing.assert_array_equal, again.params, run.params)


def test_byte_level_bigjax_model_exports_with_its_tokenizer(make_config, tmp_path):
  """A run of bigjax's own byte-level GPT (initialised here; training would not change what is
  exported)."""
  config = make_config()
  params = jax.jit(build.build(config, ONE).init_fn)(0).params
  write_run(str(tmp_path / "run"), config.to_dict(), params)
  run = bigjax.load(str(tmp_path / "run"), devices=ONE)
  export_model(str(tmp_path / "run"), str(tmp_path / "hf"))
  model, info = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"),
                                                                  output_loading_info=True)
  assert not any(info.values()), info
  text = hf_models.TEXT
  ids = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf")).encode(text)
  assert ids == ByteTokenizer().encode(text).tolist()
  tokens_1xL = np.asarray([ids[:config.seq_len]], np.int32)
  np.testing.assert_allclose(hf_models.logits(model.eval(), tokens_1xL),
                             _bigjax_logits(run, tokens_1xL), atol=ATOL, rtol=0)


def test_imported_model_fine_tunes_through_train(tokenizer_dirs, corpus_path, tmp_path,
                                                 metrics_of, caplog):
  torch.manual_seed(1)
  hf_dir = hf_models.save(hf_models.llama(kv_heads=2), str(tmp_path / "hf"),
                          tokenizer_dirs["bpe"])
  import_model(hf_dir, str(tmp_path / "imported"))
  config = finetune_config.get_config(str(tmp_path / "imported"))
  config.update_from_flattened_dict({
      "steps": 12, "batch_size": 8, "seq_len": 32,
      "log_every": 1, "eval_every": 0, "eval_steps": 1, "checkpoint_every": 0,
      "compilation_cache_dir": "", "data.source": "text", "data.path": corpus_path,
      "optim.lr": 3e-3, "optim.warmup_steps": 2, "tracking.tensorboard": False,
      "tracking.progress": False, "sample.prompt": ""})
  with caplog.at_level("WARNING", logger="bigjax.finetune"):
    train.train_and_evaluate(config, str(tmp_path / "tuned"), devices=ONE)
  assert "; 0 start fresh" in caplog.text  # every parameter came from the imported model
  losses = [row["train/loss"] for row in metrics_of(str(tmp_path / "tuned"))
            if "train/loss" in row]
  # A random model starts near ln(320) = 5.8 nats; twelve Adam steps on repeated text cut that
  # by far more than the step-to-step noise of a batch of 8.
  assert np.mean(losses[-3:]) < losses[0] - 0.5


def test_init_from_a_hugging_face_directory(tokenizer_dirs, tmp_path, caplog):
  """A decoder copies every parameter. A classifier from a published BERT (BertForMaskedLM files
  that still hold the pretraining pooler and next-sentence head) copies the embeddings, the
  encoder and the pooler, and starts its output layer fresh: transformers' sentiment recipe."""
  torch.manual_seed(2)
  llama_dir = hf_models.save(hf_models.llama(), str(tmp_path / "llama"), tokenizer_dirs["bpe"])
  expected = bigjax.load(llama_dir, devices=ONE)
  run = build.build(layout_config(expected.config, 1, None), ONE)
  fresh = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), run.abstract.params)
  copied = finetune.load_pretrained(fresh, run.abstract.params, llama_dir)
  jax.tree.map(np.testing.assert_array_equal, copied, expected.params)

  pretrained = transformers.BertForPreTraining(hf_models.bert().config)
  bert_dir = hf_models.save(pretrained, str(tmp_path / "bert"), tokenizer_dirs["wordpiece"])
  with open(os.path.join(bert_dir, "config.json")) as f:
    hf = json.load(f) | {"architectures": ["BertForMaskedLM"]}
  with open(os.path.join(bert_dir, "config.json"), "w") as f:
    json.dump(hf, f)
  with caplog.at_level("WARNING", logger="bigjax.hf.convert"):
    mlm = bigjax.load(bert_dir, devices=ONE)
  assert "cls.seq_relationship.weight" in caplog.text and "bert.pooler.dense.weight" in caplog.text
  config = mlm.config.copy_and_resolve_references()
  config.update_from_flattened_dict({"task": "text_classify", "data.class_names": ("neg", "pos")})
  run = build.build(layout_config(config, 1, None), ONE)
  fresh = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), run.abstract.params)
  copied = finetune.load_pretrained(fresh, run.abstract.params, bert_dir)
  jax.tree.map(np.testing.assert_array_equal, copied["encoder"], mlm.params["encoder"])
  np.testing.assert_array_equal(copied["classifier"]["pooler"]["kernel"],
                                pretrained.bert.pooler.dense.weight.detach().numpy().T)
  assert not copied["classifier"]["out"]["kernel"].any()  # still the fresh (here zero) head


def test_export_refuses_what_hugging_face_cannot_express(make_config):
  """bigjax's own BERT is pre-norm; Hugging Face BERT is post-norm."""
  config = make_config(**{"task": "mlm", "model.token_types": 2})
  task = build.make_task(config)
  with pytest.raises(ConfigError, match="model.post_norm=False"):
    hf_bert.to_hf(task, {})
