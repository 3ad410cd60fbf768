"""Every knob bigjax reads, one comment each. Experiment configs are small diffs of this one.

The returned ConfigDict is locked by the command line loader, so a typo such as
`--config.optim.lrr=1e-3` fails at once instead of being silently ignored.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "lm"  # objective, a key of bigjax.tasks.TASKS
  c.steps = 1000  # optimizer updates in the whole run
  c.batch_size = 16  # global batch, in sequences (summed over all devices and processes)
  c.seq_len = 256  # tokens per training sequence
  c.seed = 0  # root of every random number: params, dropout and data order
  c.compilation_cache_dir = "~/.cache/bigjax/jax"  # compiled programs kept across runs ("" = off)
  c.dtype = "float32"  # compute dtype; parameters and the loss stay float32 ("bfloat16" on GPU/TPU)
  c.log_every = 50  # steps between metric logs (the progress bar updates every step)
  c.profile_steps = ""  # "FIRST,LAST": jax.profiler trace of those steps into WORKDIR/profile ("" = off)
  c.eval_every = 500  # steps between evaluations (0 = only at the end)
  c.eval_steps = 20  # batches per evaluation
  c.checkpoint_every = 500  # steps between checkpoints (0 = only at the end)
  c.keep_checkpoints = 3  # most recent checkpoints kept on disk
  c.on_nonfinite = "stop"  # non-finite loss: "stop" names the step and last checkpoint; "skip" drops the update
  c.init_from = ""  # fresh runs copy matching params from this workdir or checkpoint (own checkpoints win)
  c.freeze = ""  # regex over "/"-joined param paths (e.g. "^(embed|encoder)/"): those params get no updates

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # pure data-parallel replicas (-1 = all remaining devices)
  c.mesh.fsdp = 1  # parameter/optimizer sharding axis, also splits the batch
  c.mesh.tensor = 1  # tensor-parallel axis: heads, MLP width and vocab are split over it

  # Logical axis -> mesh axes. Parameters name logical axes; this table places them.
  # A mesh axis already used by an earlier dimension of the same array is skipped.
  c.sharding_rules = (
      ("batch", ("data", "fsdp")),
      ("vocab", "tensor"),
      ("heads", "tensor"),
      ("kv_heads", "tensor"),
      ("mlp", "tensor"),
      ("embed", "fsdp"),
      ("head_dim", None),
      ("layers", None),
      ("length", None),
      ("act_embed", None),
  )

  c.early_stop = ml_collections.ConfigDict()
  c.early_stop.metric = ""  # eval metric (e.g. "eval/accuracy") whose best step is kept in WORKDIR/best ("" = off)
  c.early_stop.mode = "max"  # "max" or "min": which way the metric improves
  c.early_stop.patience = 0  # stop after this many evaluations without improvement (0 = never stop early)

  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator = ""  # "host:port" of process 0 ("" = JAX_COORDINATOR_ADDRESS or auto-detect)
  c.distributed.num_processes = 0  # processes in the job (0 = JAX_NUM_PROCESSES)
  c.distributed.process_id = -1  # this process's index (-1 = JAX_PROCESS_ID)
  c.distributed.heartbeat_seconds = 60  # a process whose peer is silent this long stops

  c.data = ml_collections.ConfigDict()
  c.data.source = "stdlib"  # "stdlib" (Python's own sources, no download), "text" (file or dir), "tfds", "sklearn"
  c.data.path = ""  # text file or directory for source="text"
  c.data.name = ""  # "tiny_shakespeare", "lm1b", "mnist", "fashion_mnist" (tfds); "digits", "diabetes" (sklearn)
  c.data.tfds_dir = ""  # tfds data_dir ("" = tfds default, ~/tensorflow_datasets)
  c.data.tokenizer = "byte"  # "byte" (256 ids, NUL separates documents) or "sentencepiece"
  c.data.tokenizer_path = ""  # SentencePiece model file; trained on the train split if missing
  c.data.vocab_size = 8000  # SentencePiece vocabulary when training a new tokenizer
  c.data.val_fraction = 0.1  # share held out for validation when the source has no split
  c.data.chat_template = ""  # conversations as text: "" (none), "plain" (bigjax.data.chat), or a Jinja template

  c.model = ml_collections.ConfigDict()
  c.model.num_layers = 4  # Transformer blocks
  c.model.num_heads = 4  # query heads
  c.model.num_kv_heads = 0  # key/value heads for grouped-query attention (0 = num_heads)
  c.model.d_model = 128  # residual stream width
  c.model.d_ff = 512  # MLP hidden width
  c.model.max_len = 1024  # longest sequence the positions support
  c.model.positions = "learned"  # "learned" (GPT-2) or "rope" (Llama)
  c.model.rope_theta = 10000.0  # RoPE base frequency
  c.model.norm = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama)
  c.model.mlp = "gelu"  # "gelu" (GPT-2) or "swiglu" (Llama)
  c.model.use_bias = True  # biases in dense layers and norms
  c.model.tie_embeddings = True  # output projection shares the token embedding
  c.model.dropout = 0.0  # dropout rate on embeddings, attention output and MLP output
  c.model.remat = "none"  # recompute in backward: "none", "full", "dots" (save matmuls), "dots_no_batch"
  c.model.scan_layers = True  # one compiled block scanned N times (fast compile) instead of N copies
  # "auto": causal self-attention is "blockwise" on CPU, jax.nn.dot_product_attention's own pick
  # (cuDNN where it can) elsewhere; "xla" / "cudnn" force that function's implementation.
  c.model.attention = "auto"
  c.model.attention_block_len = 64  # query block of "blockwise" attention
  c.model.name = "mlp"  # image/tabular model, a key of bigjax.models.vision.MODELS (Transformer tasks ignore it)
  c.model.hidden = (512, 256, 128)  # MLP hidden widths (also the dense layers after a CNN's convolutions)
  c.model.channels = (32, 64)  # CNN and autoencoder conv channels; each conv halves height and width
  c.model.patch_size = 2  # ViT square patch side, in pixels
  c.model.latent = 16  # autoencoder and VAE code width
  c.model.token_types = 0  # encoder segment embeddings (BERT with next-sentence prediction: 2)

  c.mlm = ml_collections.ConfigDict()
  c.mlm.mask_rate = 0.15  # share of tokens the masked-LM loss is taken on (80% [MASK], 10% random, 10% kept)
  c.mlm.nsp = False  # also predict whether segment B follows segment A (needs model.token_types=2)

  c.seq2seq = ml_collections.ConfigDict()
  c.seq2seq.beam_size = 4  # eval decoding: beams kept per example (1 = greedy)
  c.seq2seq.length_penalty = 0.6  # beam ranking divides log-prob by ((5 + length) / 6) ** this

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"  # "adamw", "adam", "sgd" (with momentum), "adafactor", "lion"
  c.optim.lr = 1e-3  # peak learning rate
  c.optim.schedule = "cosine"  # after warmup: "cosine", "linear" (to the floor) or "constant"
  c.optim.warmup_steps = 100  # linear warmup from 0 to lr
  c.optim.min_lr_ratio = 0.1  # floor of the decay, as a fraction of lr
  c.optim.weight_decay = 0.1  # decoupled, on matrices only (norms, biases, embeddings are skipped)
  c.optim.clip_norm = 1.0  # global gradient norm clip (0 = off)
  c.optim.b1 = 0.9  # first moment decay (adam, adamw, lion)
  c.optim.b2 = 0.95  # second moment decay (adam, adamw, lion)
  c.optim.momentum = 0.9  # sgd momentum
  c.optim.grad_accum_steps = 1  # microbatches per update; the batch is split along its rows

  # Adaptation and compression (bigjax/adapt): each is off at its default.
  c.lora = ml_collections.ConfigDict()
  c.lora.targets = ""  # regex fully matching the module paths given adapters, e.g. ".*(attn|mlp)/.*" ("" = off)
  c.lora.rank = 8  # adapter rank r; only the adapters train, and checkpoints refer to the base (init_from)
  c.lora.alpha = 16.0  # adapters are scaled by alpha / rank (peft's lora_alpha)
  c.lora.dropout = 0.0  # dropout on the adapters' inputs, in training only
  c.lora.base_qtype = ""  # QLoRA: the frozen base kept as "int8" or "int4" ("" = float)

  c.quant = ml_collections.ConfigDict()
  c.quant.weights = ""  # "int8" or "int4": quantization-aware training, weights fake-quantized ("" = off)
  c.quant.activations = ""  # "int8": the quantized matmuls' inputs too ("" = float)
  c.quant.tile = 0  # one weight scale per this many inputs (int4 usually; also QLoRA's base); 0 = per output channel
  c.quant.mode = "qat"  # "qat": float params, fake quantization; "ptq": integer params (written by bigjax.quantize)

  c.prune = ml_collections.ConfigDict()
  c.prune.sparsity = 0.0  # final share of zeros in every dense kernel, layer by layer (0 = off)
  c.prune.pattern = "unstructured"  # "unstructured" (smallest magnitudes) or "2:4" (2 of every 4 inputs; sparsity 0.5)
  c.prune.schedule = "gradual"  # "gradual" (Zhu & Gupta's cubic ramp from begin to end step) or "oneshot" (at begin_step)
  c.prune.begin_step = 0  # the first step that prunes
  c.prune.end_step = 0  # the step the ramp reaches `sparsity` (0 = three quarters of `steps`)
  c.prune.every = 10  # steps between mask updates on the ramp

  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = ""  # task=distill: the teacher run's workdir or checkpoint (same tokenizer)
  c.distill.temperature = 2.0  # both models' logits are divided by this for the soft targets
  c.distill.alpha = 0.5  # weight of the soft loss (KL to the teacher); 1 - alpha goes to the labels

  c.tracking = ml_collections.ConfigDict()
  c.tracking.wandb = "disabled"  # "disabled", "offline" (no key, no network) or "online"
  c.tracking.project = "bigjax"  # W&B project
  c.tracking.wandb_checkpoint = False  # upload the final checkpoint to W&B as a model artifact
  c.tracking.tensorboard = True  # write TensorBoard event files under WORKDIR/tb
  c.tracking.progress = True  # tqdm progress bar on process 0

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = "def "  # text the final sample continues ("" = no sample)
  c.sample.max_new_tokens = 200  # tokens generated after the prompt
  c.sample.temperature = 0.8  # softmax temperature (0 = greedy)
  c.sample.top_k = 40  # sample among the k most likely tokens (0 = all)
  return c
