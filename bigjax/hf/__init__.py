"""Hugging Face models in and out of bigjax.

  mapping.py    the Tensor table entry: one Hugging Face tensor <-> bigjax parameter(s), and layouts
  gpt2.py, llama.py, bert.py    one name table and config.json mapping per architecture
  convert.py    applies a table either way, with strict key accounting
  files.py      config.json and (sharded) safetensors, read and written
  tokenizer.py  a model's tokenizer.json in bigjax, and bigjax's bytes as a tokenizer.json
  __main__.py   `python -m bigjax.hf import|export`

Nothing here imports torch or transformers: files are read and written with `safetensors`'s numpy
API and plain JSON.
"""
