"""tfds datasets, read only once prepared: training never downloads.

A download started by a training run fails badly: offline it retries for minutes before four
chained tracebacks, and on several hosts every process would download into the same directory at
once. So preparing is a step of its own (bigjax/data/prepare_tfds.py), on a machine with network,
into the directory the runs read (`data.tfds_dir`, or tfds's default `~/tensorflow_datasets`, or
`$TFDS_DATA_DIR`):

    python -m bigjax.data.prepare_tfds mnist imdb_reviews [--data_dir=DIR]

Datasets are prepared as array_record files, which `tfds.data_source` reads by index (with grain,
without TensorFlow). A run whose dataset is not there fails at once, in one line that says where it
looked and this command.
"""

from typing import Sequence

from bigjax.config_checks import ConfigError

FILE_FORMAT = "array_record"  # random access by index; tfds's other formats stream


def builder(name: str, data_dir: str = ""):
  """tfds's builder of `name` in `data_dir` ("" = tfds's default), for array_record files."""
  import tensorflow_datasets as tfds  # imported here: the offline datasets need no tfds
  import tensorflow_datasets.translate  # noqa: F401  (registers the WMT builders; tfds defers it)

  try:
    return tfds.builder(name, data_dir=data_dir or None, file_format=FILE_FORMAT)
  except tfds.core.registered.DatasetNotFoundError:
    raise ConfigError(f"tfds has no dataset {name!r}; check data.name") from None


def prepare_command(name: str, data_dir: str = "") -> str:
  return (f"python -m bigjax.data.prepare_tfds {name}"
          + (f" --data_dir={data_dir}" if data_dir else ""))


def data_source(name: str, split: str, data_dir: str = "") -> Sequence:
  """Records of `split`, by index, from the prepared dataset; a ConfigError if it is not there.

  tfds's own reader is called first, so `tfds.testing.mock_data` (which needs no files) works; if
  it fails and the dataset is not prepared, that is the reason, said in one line.
  """
  dataset = builder(name, data_dir)
  try:
    return dataset.as_data_source(split)
  except Exception as e:  # tfds raises several kinds for "no files here"
    # A finished preparation leaves dataset_info.json (tfds renames the directory into place).
    if not (dataset.data_path / "dataset_info.json").exists():
      raise ConfigError(
          f"tfds {name} is not prepared in {dataset.data_dir} (data.tfds_dir={data_dir!r}) and "
          f"runs never download: on a machine with network run "
          f"`{prepare_command(name, 'DIR')}`, copy DIR here and pass --config.data.tfds_dir=DIR"
      ) from None
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"tfds {name} in {dataset.data_dir} cannot be read by index "
                      f"({first_line}); prepare it again as {FILE_FORMAT}: "
                      f"`{prepare_command(name, data_dir)}`") from None
