"""Chat fine-tuning: assistant-only loss, packed == unpacked, resumable packing, learning."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import train
from bigjax.config_checks import ConfigError
from bigjax.data import dialogues, pipeline, sft
from bigjax.data.tokenizers import ByteTokenizer
from bigjax.tasks.sft import SftTask
from configs import sft_tiny

SEQ_LEN = 160  # two of the generated single-question conversations (about 75 bytes) per row


@pytest.fixture(scope="module")
def dialogue_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("dialogues")
  dialogues.write(str(directory), train=600, validation=40, kinds=("count",))
  return directory


def sft_config(make_config, path, **overrides):
  return make_config(**{"task": "sft", "data.source": "jsonl", "data.path": str(path),
                        "data.chat_template": "plain", "seq_len": SEQ_LEN,
                        "model.max_len": SEQ_LEN, **overrides})


def test_the_loss_is_on_the_assistant_tokens_only():
  conversation = [{"role": "user", "content": "What is 2+3?"},
                  {"role": "assistant", "content": "5"}]
  row = sft.pack_row([sft.tokenize(conversation, "plain", ByteTokenizer())], 64)
  text = "<|user|>\nWhat is 2+3?<|end|>\n<|assistant|>\n5<|end|>\n"  # the plain template
  assert bytes(row["inputs"][:len(text) - 1].astype(np.uint8)).decode() == text[:-1]
  graded = row["targets"][row["weights"] == 1]
  assert bytes(graded.astype(np.uint8)).decode() == "5<|end|>\n"  # the answer and its end
  assert row["weights"].sum() == len("5<|end|>\n")
  assert (row["segment_ids"] == 1).sum() == len(text) - 1
  assert (row["segment_ids"][len(text):] == 0).all()
  np.testing.assert_array_equal(row["positions"][:len(text) - 1], np.arange(len(text) - 1))


@pytest.mark.parametrize("attention", ["auto", "xla"])  # blockwise on CPU, and XLA's own
def test_packed_conversations_score_as_they_do_alone(dialogue_dir, make_config, attention):
  config = sft_config(make_config, dialogue_dir, **{"model.attention": attention,
                                                    "model.attention_block_len": 32})
  task = SftTask(config)
  conversations = task.conversations["train"]
  examples = [conversations.example(i) for i in range(2)]
  packed = sft.pack_row(examples, SEQ_LEN)
  alone = [sft.pack_row([e], SEQ_LEN) for e in examples]
  batch = pipeline.stack([packed, *alone])
  params = nn.meta.unbox(task.init(jax.random.key(0), batch)["params"])
  loss_BxL, _ = jax.jit(task._token_losses)(params, batch)
  first = len(examples[0][0]) - 1  # positions the first conversation takes
  second = len(examples[1][0]) - 1
  assert first + second <= SEQ_LEN and (packed["segment_ids"][first:first + second] == 2).all()
  np.testing.assert_allclose(loss_BxL[0, :first], loss_BxL[1, :first], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss_BxL[0, first:first + second], loss_BxL[2, :second],
                             rtol=1e-5, atol=1e-6)
  # Without the segment ids the second conversation would see the first: its losses change.
  unmasked = {**batch, "segment_ids": jnp.ones_like(batch["segment_ids"])}
  loss_unmasked, _ = jax.jit(task._token_losses)(params, unmasked)
  assert not np.allclose(loss_unmasked[0, first:first + second], loss_BxL[2, :second],
                         atol=1e-4)


def test_packing_resumes_exactly_across_epochs(dialogue_dir, make_config):
  task = SftTask(sft_config(make_config, dialogue_dir))
  conversations = task.conversations["train"]
  rows = sft.PackedRows(conversations, SEQ_LEN, seed=0)
  packed, per_epoch = [], 0
  while len(packed) < len(conversations):
    packed += rows.rows(per_epoch).tolist()
    per_epoch += 1
  assert sorted(packed) == list(range(len(conversations)))  # every conversation once an epoch
  assert rows.rows(per_epoch).tolist() != rows.rows(0).tolist()  # in a new order the next

  batches = iter(task.train_data(8, seed=0))
  seen = [next(batches) for _ in range(per_epoch // 8 + 3)]  # into the second epoch
  interrupted = iter(task.train_data(8, seed=0))
  for _ in range(per_epoch // 8):
    next(interrupted)
  resumed = iter(task.train_data(8, seed=0))
  resumed.set_state(interrupted.get_state())
  for expected in seen[per_epoch // 8:]:
    got = next(resumed)
    for k in expected:
      np.testing.assert_array_equal(got[k], expected[k])


def test_the_tiny_sft_config_makes_greedy_answers_right(dialogue_dir, make_config, workdir):
  """configs/sft_tiny.py, from a fresh model the size of the other tests' on the "count"
  dialogues (a word's length, 3 to 6 letters). A random model's greedy answer is right by
  chance with odds near 1 in 256^3 (digit, <|end|>, newline): before must be 0."""
  tiny = make_config()
  config = sft_tiny.get_config()
  config.update_from_flattened_dict({
      "init_from": "", "data.path": str(dialogue_dir), "seq_len": SEQ_LEN, "steps": 120,
      "batch_size": 8, "eval_every": 0, "checkpoint_every": 0, "optim.lr": 3e-3,
      "optim.warmup_steps": 10, "compilation_cache_dir": "", "model.max_len": SEQ_LEN,
      **{f"model.{k}": tiny.model[k] for k in ("num_layers", "d_model", "d_ff")},
      **{f"tracking.{k}": tiny.tracking[k] for k in ("tensorboard", "progress")}})
  config.lock()
  task = SftTask(config)
  params = nn.meta.unbox(task.init(jax.random.key(0), next(task.eval_data(1, 1)))["params"])
  eval_sums = jax.jit(task.eval_sums)
  sums = [jax.device_get(eval_sums(params, b)) for b in task.eval_data(8, 100)]
  before = sum(s["exact"] for s in sums) / sum(s["conversations"] for s in sums)
  final = train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  assert before == 0 and final["eval/exact_match"] >= 0.5


def test_bad_conversations_are_one_line_errors(tmp_path, make_config):
  def error_of(lines):
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(lines))
    with pytest.raises(ConfigError) as error:
      SftTask(sft_config(make_config, path, **{"data.val_fraction": 0.0}))
    assert "\n" not in str(error.value)
    return str(error.value)

  fine = json.dumps({"prompt": "Hi?", "completion": "Hello."}) + "\n"
  path = tmp_path / "chats.jsonl"
  assert error_of([fine, "{not json\n"]).startswith(f"{path}:2: not JSON")
  assert error_of([fine, '{"text": "no conversation"}\n']).startswith(
      f"{path}:2: needs \"messages\", or \"prompt\" and \"completion\"")
  no_answer = json.dumps({"messages": [{"role": "user", "content": "Anyone?"}]}) + "\n"
  assert error_of([no_answer, fine]).startswith(f"{path}:1: the conversation has no assistant")
  bad_role = json.dumps({"messages": [{"role": "bot", "content": "Hi"}]}) + "\n"
  assert "message 0 has role 'bot'" in error_of([fine, bad_role])


def test_conversations_from_a_hugging_face_dataset(no_network, tmp_path, make_config):
  import datasets

  rows = [{"messages": [{"role": "user", "content": f"Say {i}."},
                        {"role": "assistant", "content": str(i)}]} for i in range(10)]
  datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "chats"))
  task = SftTask(sft_config(make_config, tmp_path / "chats", **{"data.source": "hf"}))
  assert len(task.conversations["train"]) == 9 and len(task.conversations["validation"]) == 1
  batch = next(iter(task.train_data(2, seed=0)))
  graded = bytes(batch["targets"][batch["weights"] == 1].astype(np.uint8)).decode()
  answers = graded.split("<|end|>\n")[:-1]  # several conversations packed in each row
  assert len(answers) == len(set(answers)) > 2 and set(answers) <= {str(i) for i in range(9)}
