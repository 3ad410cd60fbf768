"""tfds datasets are read only once prepared: a run without them fails at once, in one line that
names data.tfds_dir and the command that prepares them, and never reaches the network."""

import subprocess
import sys
import time

import pytest

from bigjax import build
from bigjax.config_checks import ConfigError
from bigjax.data import prepare_tfds, tfds_source
from configs import bert_classify, gpt_tiny, mnist_cnn, mnist_mlp, wmt14_de_en


def lm_on(name):
  config = gpt_tiny.get_config()
  config.data.source, config.data.name = "tfds", name
  return config


# Every shipped config that reads tfds, and the two tfds corpora of the LM.
TFDS_CONFIGS = {
    "mnist": mnist_mlp.get_config(), "fashion_mnist": mnist_cnn.get_config("fashion"),
    "imdb_reviews": bert_classify.get_config("imdb"),
    "wmt14_translate/de-en": wmt14_de_en.get_config(),
    "wmt_t2t_translate/de-en": wmt14_de_en.get_config("t2t"),
    "tiny_shakespeare": lm_on("tiny_shakespeare"), "lm1b": lm_on("lm1b"),
}


@pytest.mark.parametrize("name", TFDS_CONFIGS)
def test_a_config_without_its_prepared_dataset_fails_at_once(no_network, tmp_path, name):
  config = TFDS_CONFIGS[name]
  config.data.tfds_dir = str(tmp_path)
  start = time.perf_counter()
  with pytest.raises(ConfigError) as e:
    build.make_task(config)
  message = str(e.value)
  assert "\n" not in message and f"tfds {name} is not prepared in {tmp_path}/" in message
  assert "data.tfds_dir" in message and f"python -m bigjax.data.prepare_tfds {name}" in message
  # Opening a dataset's metadata takes milliseconds; a download attempt retries for minutes.
  assert time.perf_counter() - start < 5
  assert list(tmp_path.iterdir()) == []  # nothing downloaded, nothing half-prepared


def test_the_command_line_prints_one_line_and_exits_2(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "bigjax.train", "--config=configs/mnist_mlp.py",
       f"--workdir={tmp_path / 'run'}", f"--config.data.tfds_dir={tmp_path / 'tfds'}"],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines() == [
      line for line in result.stderr.strip().splitlines() if line.startswith("error: tfds mnist")]


def test_prepare_then_read_by_index(tmp_path):
  """The preparing command's path, on a dataset whose examples are generated here (no download)."""
  import numpy as np
  import tensorflow_datasets as tfds

  class BigjaxTestSquares(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"x": np.int64, "square": np.int64}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(range(10)),
              "test": self._generate_examples(range(10, 13))}

    def _generate_examples(self, numbers):
      for n in numbers:
        yield n, {"x": n, "square": n * n}

  data_dir = str(tmp_path)
  with pytest.raises(ConfigError, match="bigjax_test_squares is not prepared"):
    tfds_source.data_source("bigjax_test_squares", "train", data_dir)
  prepare_tfds.prepare("bigjax_test_squares", data_dir)
  train = tfds_source.data_source("bigjax_test_squares", "train", data_dir)
  assert len(train) == 10
  assert sorted((int(r["x"]), int(r["square"])) for r in train) == [(n, n * n) for n in range(10)]
  assert len(tfds_source.data_source("bigjax_test_squares", "test", data_dir)) == 3


def test_the_preparing_command_names_an_unknown_dataset_in_one_line(tmp_path):
  result = subprocess.run([sys.executable, "-m", "bigjax.data.prepare_tfds", "mnistt",
                           f"--data_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == ["error: tfds has no dataset 'mnistt'; check "
                                                "data.name"]
