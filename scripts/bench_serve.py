"""Serving throughput and latency over loopback, and single-stream decode against Hugging Face
transformers' `generate` on the same model.

    pip install -r requirements-bench.txt
    python scripts/bench_serve.py --workdir=runs/gpt_tiny [--clients=16 --requests=64
        --max_tokens=128 --prompt_chars=64 --rounds=3]

Starts `python -m bigjax.serve` for the run on a free loopback port (with one slot per client),
then sends `--requests` streamed greedy completions of `--max_tokens` each (prompts cut from
Python's standard library sources), first from one client, then from `--clients` concurrent ones,
and prints a JSON line for each: requests/s, output tokens/s, p50/p99 time to first token and
latency. Then single-stream decode of one prompt: `bigjax.generate` and transformers'
GPT2LMHeadModel.generate (PyTorch eager, KV cache) with the run's weights copied in, greedy, the
same prompt and length, in alternating rounds so that a busy host slows both alike (best round).
Last, the two ratios the serving issue sets targets for: concurrent / single-client output
tokens/s (target 4x) and bigjax / transformers single-stream tokens/s (target 1.5x), the latter
for the library call and for the server's single client.
"""

import asyncio
import json
import os
import pathlib
import statistics
import subprocess
import sys
import sysconfig
import time

import httpx
import numpy as np
from absl import app, flags

flags.DEFINE_string("workdir", None, "the run to serve (a GPT-2-style decoder for the "
                    "transformers comparison)", required=True)
flags.DEFINE_integer("clients", 16, "concurrent clients in the second measurement")
flags.DEFINE_integer("requests", 64, "completions per measurement")
flags.DEFINE_integer("max_tokens", 128, "tokens per completion")
flags.DEFINE_integer("prompt_chars", 64, "characters per prompt")
flags.DEFINE_integer("rounds", 3, "alternating single-stream rounds of each framework")

REPO = pathlib.Path(__file__).resolve().parent.parent


def prompts(count: int, chars: int) -> list[str]:
  """Distinct prompts cut from the standard library's sources (offline, the same everywhere)."""
  text = (pathlib.Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
  return [text[i * chars:(i + 1) * chars] for i in range(count)]


def percentile(values, q) -> float:
  return round(float(np.percentile(values, q)), 4)


# The server, driven over loopback.


def start_server(workdir: str, port: int, slots: int, max_waiting: int) -> subprocess.Popen:
  command = [sys.executable, "-m", "bigjax.serve", f"--workdir={os.path.abspath(workdir)}",
             f"--port={port}",
             f"--slots={slots}", f"--max_waiting={max_waiting}", "--model_name=bench"]
  env = {k: v for k, v in os.environ.items() if k != "BIGJAX_API_KEY"}
  server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 900
  while time.monotonic() < deadline:
    if server.poll() is not None:
      raise SystemExit(f"error: the server exited: {server.stderr.read()[-2000:]}")
    try:
      if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=30).status_code == 200:
        return server
    except httpx.TransportError:
      pass
    time.sleep(0.5)
  server.kill()
  raise SystemExit("error: the server was not ready within 900 s")


async def completion(client: httpx.AsyncClient, prompt: str, max_tokens: int):
  """(time to first text, latency, output tokens) of one streamed greedy completion."""
  start, first, tokens = time.perf_counter(), None, 0
  body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
          "stream_options": {"include_usage": True}}
  async with client.stream("POST", "/v1/completions", json=body) as response:
    response.raise_for_status()
    async for line in response.aiter_lines():
      if not line.startswith("data: {"):
        continue
      chunk = json.loads(line[len("data: "):])
      if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
        first = time.perf_counter()
      if chunk.get("usage"):
        tokens = chunk["usage"]["completion_tokens"]
  end = time.perf_counter()
  return (first or end) - start, end - start, tokens


async def drive(url: str, texts: list[str], clients: int, max_tokens: int) -> dict:
  """All of `texts` as completions, `clients` at a time; throughput and latency percentiles."""
  pending = list(reversed(texts))
  async with httpx.AsyncClient(base_url=url, timeout=600,
                               limits=httpx.Limits(max_connections=clients)) as client:
    async def worker():
      done = []
      while pending:
        done.append(await completion(client, pending.pop(), max_tokens))
      return done

    await completion(client, texts[0], 4)  # connections up, first request served
    start = time.perf_counter()
    results = [r for rs in await asyncio.gather(*[worker() for _ in range(clients)]) for r in rs]
    wall = time.perf_counter() - start
  ttft, latency, tokens = zip(*results)
  return {"clients": clients, "requests": len(results), "seconds": round(wall, 3),
          "requests_per_sec": round(len(results) / wall, 3),
          "output_tokens_per_sec": round(sum(tokens) / wall, 1),
          "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
          "latency_p50": percentile(latency, 50), "latency_p99": percentile(latency, 99)}


# Single-stream decode: bigjax.generate and transformers on the same weights.


def gpt2_from_bigjax(cfg, params):
  """transformers' GPT2LMHeadModel holding the bigjax decoder's weights (GPT-2 settings only)."""
  import jax
  import torch
  import transformers

  if (cfg.positions, cfg.norm, cfg.mlp, cfg.num_kv_heads, cfg.use_bias) != (
      "learned", "layernorm", "gelu", cfg.num_heads, True):
    raise SystemExit("error: the transformers comparison needs a GPT-2-style run (learned "
                     "positions, LayerNorm, GELU, biases, one key/value head per query head)")
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=cfg.vocab_size, n_positions=cfg.max_len, n_embd=cfg.d_model,
      n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.d_ff,
      activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
      layer_norm_epsilon=1e-5, tie_word_embeddings=cfg.tie_embeddings, bos_token_id=None,
      eos_token_id=None, pad_token_id=0)).eval()
  D = cfg.d_model
  tensor = lambda x, *shape: torch.tensor(np.asarray(x, np.float32).reshape(*shape))
  weights = {"transformer.wte.weight": tensor(params["embed"]["embedding"], -1, D),
             "transformer.wpe.weight": tensor(params["pos_embed"]["embedding"], -1, D),
             "transformer.ln_f.weight": tensor(params["final_norm"]["scale"], D),
             "transformer.ln_f.bias": tensor(params["final_norm"]["bias"], D)}
  for i in range(cfg.num_layers):
    p = jax.tree.map(lambda x: x[i], params["layers"]) if cfg.scan_layers else params[f"layer_{i}"]
    a, h = p["attn"], f"transformer.h.{i}."
    # Conv1D weights are (in, out), like Flax kernels: q, k and v side by side.
    weights |= {
        h + "ln_1.weight": tensor(p["attn_norm"]["scale"], D),
        h + "ln_1.bias": tensor(p["attn_norm"]["bias"], D),
        h + "attn.c_attn.weight": tensor(np.concatenate(
            [np.reshape(a[n]["kernel"], (D, D)) for n in ("query", "key", "value")], 1), D, -1),
        h + "attn.c_attn.bias": tensor(np.concatenate(
            [np.reshape(a[n]["bias"], D) for n in ("query", "key", "value")]), -1),
        h + "attn.c_proj.weight": tensor(a["out"]["kernel"], D, D),
        h + "attn.c_proj.bias": tensor(a["out"]["bias"], D),
        h + "ln_2.weight": tensor(p["mlp_norm"]["scale"], D),
        h + "ln_2.bias": tensor(p["mlp_norm"]["bias"], D),
        h + "mlp.c_fc.weight": tensor(p["mlp"]["up"]["kernel"], D, -1),
        h + "mlp.c_fc.bias": tensor(p["mlp"]["up"]["bias"], -1),
        h + "mlp.c_proj.weight": tensor(p["mlp"]["down"]["kernel"], -1, D),
        h + "mlp.c_proj.bias": tensor(p["mlp"]["down"]["bias"], D)}
  weights["lm_head.weight"] = (weights["transformer.wte.weight"] if cfg.tie_embeddings else
                               tensor(np.asarray(params["unembed"]["kernel"]).T, -1, D))
  model.load_state_dict(weights)
  return model


def single_stream(run, prompt_ids: np.ndarray, max_tokens: int, rounds: int) -> dict:
  """Best-of-rounds tokens/s of one greedy sequence, bigjax.generate against transformers."""
  import jax
  import torch

  from bigjax import generate

  model = gpt2_from_bigjax(run.model.cfg, run.params)
  ids = torch.tensor(prompt_ids[None], dtype=torch.long)
  with torch.inference_mode():
    theirs_logits = model(ids).logits.numpy()
  ours_logits = np.asarray(jax.jit(run.model.apply)({"params": run.params}, prompt_ids[None])[0])
  logit_error = float(np.abs(ours_logits - theirs_logits).max())

  def ours():
    return generate.generate(run.model, run.params, [prompt_ids], max_tokens, temperature=0.0)[0]

  def theirs():
    with torch.inference_mode():
      out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                           do_sample=False, use_cache=True)
    return out[0, len(prompt_ids):].numpy()

  agree = np.array_equal(ours(), theirs())  # also the warm-up (bigjax compiles here)
  seconds = {"bigjax": [], "transformers": []}
  for _ in range(rounds):
    for name, fn in (("bigjax", ours), ("transformers", theirs)):
      start = time.perf_counter()
      fn()
      seconds[name].append(time.perf_counter() - start)
  return {"max_logit_difference": logit_error, "greedy_tokens_agree": bool(agree),
          **{f"{name}_tokens_per_sec": round(max_tokens / min(s), 1)
             for name, s in seconds.items()},
          **{f"{name}_median_seconds": round(statistics.median(s), 4)
             for name, s in seconds.items()},
          "transformers_threads": torch.get_num_threads()}


def main(argv) -> None:
  del argv
  import jax
  import portpicker
  from absl import logging as absl_logging

  import bigjax

  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax narrates every read at INFO

  f = flags.FLAGS
  texts = prompts(f.requests, f.prompt_chars)
  port = portpicker.pick_unused_port()
  server = start_server(f.workdir, port, slots=f.clients, max_waiting=max(64, f.requests))
  try:
    url = f"http://127.0.0.1:{port}"
    reports = [asyncio.run(drive(url, texts, clients, f.max_tokens))
               for clients in (1, f.clients)]
  finally:
    server.terminate()
    server.wait(timeout=60)
  for report in reports:
    print(json.dumps({"server": "bigjax.serve", **report}))
  run = bigjax.load(f.workdir, devices=jax.devices()[:1])
  stream = single_stream(run, run.tokenizer.encode(texts[0]), f.max_tokens, f.rounds)
  print(json.dumps({"single_stream": True, "jax": jax.__version__, **stream}))
  one, many = (r["output_tokens_per_sec"] for r in reports)
  theirs = stream["transformers_tokens_per_sec"]
  print(f"{f.clients} clients / 1 client output tokens/s: {many / one:.2f}x (target 4x)")
  print(f"single stream vs transformers generate: bigjax.generate "
        f"{stream['bigjax_tokens_per_sec'] / theirs:.2f}x, bigjax.serve (1 client, HTTP) "
        f"{one / theirs:.2f}x (target 1.5x)")


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  from bigjax.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
