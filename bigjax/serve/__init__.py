"""Serving a trained run over HTTP in OpenAI's shapes: `python -m bigjax.serve --workdir=W`."""
