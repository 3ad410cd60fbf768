"""Serve a run over HTTP: OpenAI-compatible for language models, task endpoints for encoders.

    python -m bigjax.serve --workdir=runs/gpt_tiny [--port=8000 --host=127.0.0.1 --api_key=KEY
        --slots=8 --max_waiting=64 --request_timeout=600 --best]

Loads the run's newest checkpoint (`--best`: WORKDIR/best) onto one device, compiles the engine
(one decode program, one prefill program per prompt-length bucket) while /health already
answers, and turns /ready to 200 once a token has been decoded. The key may also come from the
BIGJAX_API_KEY environment variable, which keeps it out of the process list. Binds 127.0.0.1
unless --host says otherwise.
"""

import os
import sys

from absl import app, flags

from bigjax import cli

flags.DEFINE_string("workdir", None, "the run to serve", required=True)
flags.DEFINE_bool("best", False, "serve WORKDIR/best (the early-stopping checkpoint)")
flags.DEFINE_string("host", "127.0.0.1", "address to bind (0.0.0.0 exposes the server)")
flags.DEFINE_integer("port", 8000, "port to listen on")
flags.DEFINE_string("api_key", None, "required as 'Authorization: Bearer KEY' on every route but "
                    "/health and /metrics (default: $BIGJAX_API_KEY; none = open)")
flags.DEFINE_string("model_name", None, "the model's name in the API (default: the workdir's)")
flags.DEFINE_integer("slots", 8, "sequences decoded together")
flags.DEFINE_integer("max_waiting", 64, "sequences queued for a slot; beyond, requests get 503")
flags.DEFINE_list("buckets", [], "prompt lengths to compile prefill for (default: powers of 2 "
                  "from 16, and max_len)")
flags.DEFINE_integer("max_body_bytes", 1 << 20, "larger request bodies get 413")
flags.DEFINE_float("request_timeout", 600.0, "seconds a request may take, queueing included")


def main(argv) -> None:
  del argv
  import jax
  import uvicorn
  from absl import logging as absl_logging

  import bigjax
  from bigjax.config_checks import ConfigError
  from bigjax.serve import api

  f = flags.FLAGS
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax narrates every read at INFO
  try:
    run = bigjax.load(f.workdir, best=f.best, devices=jax.devices()[:1])
    options = api.ServeOptions(
        model_name=f.model_name or os.path.basename(os.path.abspath(f.workdir)),
        api_key=f.api_key if f.api_key is not None else os.environ.get("BIGJAX_API_KEY", ""),
        slots=f.slots, max_waiting=f.max_waiting, buckets=tuple(int(b) for b in f.buckets),
        max_body_bytes=f.max_body_bytes, request_timeout=f.request_timeout)
    server = api.create_app(run, options)
  except (ConfigError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  uvicorn.run(server, host=f.host, port=f.port, log_level="info")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
