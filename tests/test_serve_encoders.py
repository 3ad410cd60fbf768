"""bigjax.serve for encoder and encoder-decoder runs: the endpoints their task chooses, answering
what the task computes, on a live loopback server."""

import httpx
import jax
import numpy as np
import pytest

from bigjax.tasks import mlm
from conftest import initialised_run, tiny_config
from test_serve import AUTH, serving


@pytest.fixture(scope="module")
def classifier(corpus_path, tmp_path_factory):
  config = tiny_config(corpus_path, task="text_classify", **{"data.source": "stdlib"})
  workdir = initialised_run(config, str(tmp_path_factory.mktemp("classifier")))
  with serving(workdir) as live:
    yield live


def post(live, path, body):
  return httpx.post(live.url + path, headers=AUTH, json=body, timeout=60)


def test_a_classifier_serves_classify_and_embeddings(classifier):
  run, task = classifier.run, classifier.run.task
  texts = ["import os\nos.path.join(a, b)", "x = 1"]
  inputs_BxL = np.stack([mlm.encoder_inputs(task.tokenizer.encode(t), run.config.seq_len,
                                            task.special) for t in texts])

  answer = post(classifier, "/v1/classify", {"model": "tiny", "input": texts})
  assert answer.status_code == 200, answer.text
  probs_BxC = np.asarray(jax.jit(task.probabilities)(run.params, inputs_BxL))
  for row, probs_C in zip(answer.json()["data"], probs_BxC):
    assert list(row["probabilities"]) == list(task.class_names)
    np.testing.assert_allclose(list(row["probabilities"].values()), probs_C, rtol=1e-5)
    assert row["label"] == task.class_names[int(probs_C.argmax())]

  embedded = post(classifier, "/v1/embeddings", {"input": texts})
  assert embedded.status_code == 200, embedded.text
  expected_BxD = mlm.encoder_embeddings(run.model, run.params, inputs_BxL, task.special.pad)
  np.testing.assert_allclose([row["embedding"] for row in embedded.json()["data"]],
                             expected_BxD, rtol=1e-5, atol=1e-6)
  assert embedded.json()["usage"]["prompt_tokens"] == sum(len(t) + 2 for t in texts)

  too_long = post(classifier, "/v1/classify", {"input": "x" * 40})
  assert too_long.status_code == 400
  assert too_long.json()["error"]["message"] == ("the input has 40 tokens; this encoder reads "
                                                 "at most seq_len - 2 = 30")
  # The decoder's routes are not this run's.
  assert post(classifier, "/v1/completions", {"prompt": "x"}).status_code == 404
  assert post(classifier, "/v1/translate", {"input": "x"}).status_code == 404


def test_a_seq2seq_run_serves_translate_with_its_beam_search(corpus_path, tmp_path):
  config = tiny_config(corpus_path, task="seq2seq", seq_len=8,
                       **{"data.source": "synthetic", "data.name": "reverse",
                          "seq2seq.beam_size": 2})
  with serving(initialised_run(config, str(tmp_path))) as live:
    task, texts = live.run.task, ["1234", "98"]
    answer = post(live, "/v1/translate", {"input": texts})
    assert answer.status_code == 200, answer.text
    source_BxS = np.stack([task.source_inputs(t) for t in texts])
    outputs_BxT = jax.jit(task.translate)(live.run.params, source_BxS)
    assert [row["text"] for row in answer.json()["data"]] == \
        [task.output_text(row) for row in np.asarray(outputs_BxT)]
    assert post(live, "/v1/embeddings", {"input": "1"}).status_code == 404
