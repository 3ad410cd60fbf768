"""Every knob bigjax reads, one comment each. Experiment configs are small diffs of this one.

The returned ConfigDict is locked by the command line loader, so a typo such as
`--config.optim.lrr=1e-3` fails at once instead of being silently ignored.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "lm"  # objective, a key of bigjax.tasks.TASKS
  c.steps = 1000  # optimizer updates in the whole run
  c.batch_size = 16  # global batch in examples (sequences, images, rows), over all devices and processes
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
  c.max_consecutive_skips = 10  # on_nonfinite="skip": stop as "stop" does after this many skips in a row
  c.init_from = ""  # fresh runs copy matching params from this workdir or checkpoint (own checkpoints win)
  c.freeze = ""  # regex over "/"-joined param paths (e.g. "^(embed|encoder)/"): those params get no updates

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel replicas (-1 = the remaining devices; 1 if fsdp or tensor is -1)
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
  # "stdlib" (Python's own sources, no download), "text" (file or dir), "tfds", "sklearn",
  # "synthetic", "shards" (prepared by bigjax.data.prepare), "hf" (a local Hugging Face dataset),
  # "jsonl" (chat)
  c.data.source = "stdlib"
  c.data.path = ""  # file or directory: text, prepared shards, a Hugging Face dataset, JSONL conversations
  c.data.mixture = ""  # source="shards": "DIR:WEIGHT,DIR:WEIGHT" mixes prepared corpora by weight ("" = data.path alone)
  c.data.field = "text"  # source="hf": the column holding each document's text
  c.data.workers = 0  # processes building training batches (0 = threads of the training process)
  # sklearn: "digits", "diabetes"; synthetic (seq2seq): "reverse", "sort", "addition"; tfds:
  # "tiny_shakespeare", "lm1b" (lm, mlm), "mnist", "fashion_mnist" (images), "imdb_reviews"
  # (text_classify), "wmt14_translate/de-en", "wmt_t2t_translate/de-en" (seq2seq)
  c.data.name = ""
  c.data.tfds_dir = ""  # where tfds datasets are prepared ("" = ~/tensorflow_datasets); never downloaded
  c.data.tokenizer = "byte"  # "byte" (256 ids, NUL separates documents), "sentencepiece" or "hf" (a tokenizer.json)
  c.data.tokenizer_path = ""  # SentencePiece model file (trained on the train split if missing); for "hf" its directory
  c.data.vocab_size = 8000  # SentencePiece vocabulary when training a new tokenizer
  c.data.val_fraction = 0.1  # share held out for validation when the source has no split
  c.data.class_names = ()  # text_classify: class labels in id order (a Hugging Face id2label); () = the dataset's
  c.data.chat_template = ""  # conversations as text: "" (none), "plain" (bigjax.data.chat), or a Jinja template

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 0  # embedding rows (0 = the ids the tokenizer and the task's special tokens use)
  c.model.num_layers = 4  # Transformer blocks
  c.model.num_heads = 4  # query heads
  c.model.num_kv_heads = 0  # key/value heads for grouped-query attention (0 = num_heads)
  c.model.d_model = 128  # residual stream width
  c.model.d_ff = 512  # MLP hidden width
  c.model.max_len = 1024  # longest sequence the positions support
  c.model.positions = "learned"  # "learned" (GPT-2) or "rope" (Llama)
  c.model.rope_theta = 10000.0  # RoPE base frequency
  c.model.rope_scaling = ""  # "" (none) or "llama3" (Llama 3.1's long-context scaling, the four keys below)
  c.model.rope_factor = 8.0  # llama3: context length over the pretraining one
  c.model.rope_low_freq_factor = 1.0  # llama3: wavelengths over rope_original_max_len / this are divided by rope_factor
  c.model.rope_high_freq_factor = 4.0  # llama3: wavelengths under rope_original_max_len / this are kept
  c.model.rope_original_max_len = 8192  # llama3: the pretraining context length
  c.model.norm = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama)
  c.model.norm_eps = 0.0  # norm epsilon (0 = 1e-5 for layernorm, 1e-6 for rmsnorm)
  c.model.post_norm = False  # encoders: norm after each residual add and no final norm (Hugging Face BERT)
  c.model.embed_norm = False  # encoders: LayerNorm over the summed embeddings (Hugging Face BERT)
  c.model.mlp = "gelu"  # "gelu" (tanh approximation, GPT-2), "gelu_exact" (erf, BERT) or "swiglu" (Llama)
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
  c.optim.warmup_steps = 100  # linear warmup from 0 to lr (longer than `steps`: cut, with a warning)
  c.optim.min_lr_ratio = 0.1  # floor of the decay, as a fraction of lr
  c.optim.weight_decay = 0.1  # decoupled, on matrices only (norms, biases, embeddings are skipped)
  c.optim.clip_norm = 1.0  # global gradient norm clip (0 = off)
  c.optim.b1 = 0.9  # first moment decay (adam, adamw, lion)
  c.optim.b2 = 0.95  # second moment decay (adam, adamw, lion)
  c.optim.momentum = 0.9  # sgd momentum
  c.optim.grad_accum_steps = 1  # microbatches per update; the batch is split along its rows

  c.gan = ml_collections.ConfigDict()
  c.gan.discriminator_steps = 1  # k: discriminator updates per generator update, all in one train step
  c.gan.generator_lr = 2e-4  # the generator's own optimizer (config.optim otherwise)
  c.gan.discriminator_lr = 2e-4  # the discriminator's own optimizer (config.optim otherwise)
  c.gan.classifier = ""  # workdir of a digits classifier (configs/digits_mlp.py) that scores samples at eval ("" = no score)

  c.ensemble = ml_collections.ConfigDict()
  c.ensemble.members = 1  # K models trained side by side in one vmapped step; member k is the run with seed + k

  c.augment = ml_collections.ConfigDict()
  c.augment.crop_padding = 0  # images: zero-pad this many pixels per side, then crop back at random (0 = off)
  c.augment.flip = False  # images: random horizontal flip (only where a mirror image keeps its label)
  c.augment.rotate_degrees = 0.0  # images: rotate by a uniform angle within +-this
  c.augment.brightness = 0.0  # images: add a uniform shift within +-this
  c.augment.contrast = 0.0  # images: scale contrast by a uniform factor within 1 +- this
  c.augment.mixup_alpha = 0.0  # images: mixup with Beta(alpha, alpha) blends (0 = off)
  c.augment.cutmix_alpha = 0.0  # images: cutmix with Beta(alpha, alpha) box shares (0 = off)
  c.augment.token_delete = 0.0  # text_classify: drop each text token with this probability
  c.augment.token_swap = 0.0  # text_classify: swap a token with its neighbour with this probability
  c.augment.token_mask = 0.0  # text_classify: replace a token by [MASK] with this probability

  c.adversarial = ml_collections.ConfigDict()
  c.adversarial.attack = ""  # adversarial training: "fgsm" or "pgd" ("" = standard training)
  c.adversarial.epsilon = 0.0  # L-infinity radius in pixels of [0, 1]; > 0 also adds eval robust accuracy (PGD-10)
  c.adversarial.steps = 10  # PGD steps in training
  c.adversarial.step_size = 0.025  # PGD step size in training
  c.adversarial.mix = 0.5  # chance that a training example is replaced by its adversarial version

  c.federated = ml_collections.ConfigDict()
  c.federated.clients = 0  # FedAvg over this many simulated clients, one round per step (0 = off)
  c.federated.clients_per_round = 0  # clients sampled each round, without replacement (0 = all)
  c.federated.split = "iid"  # "iid" or "dirichlet" (each class spread over clients by Dirichlet(alpha))
  c.federated.alpha = 0.5  # Dirichlet concentration of split="dirichlet" (smaller = more skewed)
  c.federated.local_epochs = 1  # epochs each client trains per round, in local batches of batch_size
  c.federated.client_lr = 0.1  # clients' SGD step size (the server applies config.optim)

  c.privacy = ml_collections.ConfigDict()
  c.privacy.clip_norm = 0.0  # DP-SGD: clip each example's gradient (a client's change, federated) to this L2 norm (0 = off)
  c.privacy.noise_multiplier = 0.0  # Gaussian noise std as a multiple of clip_norm
  c.privacy.target_epsilon = 0.0  # > 0: calibrate noise_multiplier to spend this epsilon by the last step
  c.privacy.delta = 1e-5  # the delta of the (epsilon, delta) guarantee
  c.privacy.expected_batch_size = 0  # Poisson sampling's mean batch (rate = this / examples); batch_size rows hold the draws

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
  c.sample.top_p = 1.0  # then among the fewest tokens whose probability reaches p (1 = all)
  return c
