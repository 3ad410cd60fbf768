"""Downloads and prepares tfds datasets for runs, which never download (bigjax/data/tfds_source.py).

    python -m bigjax.data.prepare_tfds mnist fashion_mnist imdb_reviews [--data_dir=DIR]

Run it on a machine with network, with DIR the directory the runs read as `data.tfds_dir`
(default: tfds's `~/tensorflow_datasets`), or copy DIR there afterwards. Each dataset is written as
array_record files, which `tfds.data_source` reads by index.
"""

import sys

from bigjax.config_checks import ConfigError
from bigjax.data import tfds_source


def prepare(name: str, data_dir: str = "") -> str:
  """Downloads and prepares `name` as array_record; returns the directory it is in."""
  dataset = tfds_source.builder(name, data_dir)
  dataset.download_and_prepare()
  return dataset.data_dir


def main(argv: list[str]) -> None:
  from absl import flags
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # tfds narrates its search at INFO
  names = argv[1:]
  if not names:
    print(f"error: name the datasets: {tfds_source.prepare_command('NAME [NAME...]', 'DIR')}",
          file=sys.stderr)
    sys.exit(2)
  for name in names:
    try:
      directory = prepare(name, flags.FLAGS.data_dir)
    except ConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    print(f"{name}: prepared in {directory}", flush=True)


if __name__ == "__main__":
  from absl import app, flags

  from bigjax import cli

  flags.DEFINE_string("data_dir", "", "the tfds data_dir runs read (data.tfds_dir); "
                      "'' = tfds's default")
  app.run(main, flags_parser=cli.parse_flags)
