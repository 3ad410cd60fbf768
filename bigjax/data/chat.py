"""Conversations as text: the chat template a run renders its messages with.

A conversation is a list of {"role": "system"|"user"|"assistant", "content": str}. A run's
template is `config.data.chat_template`:
  ""        the run has none (chat requests are refused);
  "plain"   the documented template for byte-level runs, one turn per block:
                <|user|>
                What is 2+3?<|end|>
                <|assistant|>
                5<|end|>
            (the generation prompt is "<|assistant|>\n"; "<|end|>" closes every turn);
  a Jinja string   a Hugging Face template (tokenizer_config.json's "chat_template").

`render` returns the text as segments tagged with whether an assistant wrote them, so fine-tuning
can take its loss on assistant tokens only and a server can join them into one prompt.
"""

import functools

from bigjax.config_checks import ConfigError

ROLES = ("system", "user", "assistant")
PLAIN_END = "<|end|>"


def check_messages(messages) -> None:
  """A one-line error for anything but a list of {"role", "content"} turns with known roles."""
  if not isinstance(messages, list) or not messages:
    raise ConfigError("messages must be a non-empty list of {\"role\", \"content\"} objects")
  for i, message in enumerate(messages):
    if not isinstance(message, dict) or set(message) != {"role", "content"}:
      raise ConfigError(f"message {i} must have exactly the keys role and content")
    if message["role"] not in ROLES:
      raise ConfigError(f"message {i} has role {message['role']!r}; use one of "
                        f"{', '.join(ROLES)}")
    if not isinstance(message["content"], str):
      raise ConfigError(f"message {i}'s content must be a string")


def _plain(messages, add_generation_prompt: bool) -> str:
  text = "".join(f"<|{m['role']}|>\n{m['content']}{PLAIN_END}\n" for m in messages)
  return text + ("<|assistant|>\n" if add_generation_prompt else "")


@functools.cache
def _jinja(template: str):
  import jinja2.sandbox  # a template from a model's files is data: render it sandboxed

  return jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True).from_string(template)


def render_text(messages, template: str, add_generation_prompt: bool = False,
                special_tokens: dict[str, str] | None = None) -> str:
  """The whole conversation as one string; `special_tokens` fills a Jinja template's
  bos_token/eos_token."""
  if not template:
    raise ConfigError("this run has no chat template (data.chat_template is empty)")
  if template == "plain":
    return _plain(messages, add_generation_prompt)
  return _jinja(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                 **(special_tokens or {}))


def render(messages, template: str,
           special_tokens: dict[str, str] | None = None) -> list[tuple[str, bool]]:
  """[(text, written by the assistant)], joined the whole rendered conversation.

  Each turn's text is what rendering the conversation up to it adds to rendering the
  conversation before it, which works for any template that renders turns in order.
  """
  check_messages(messages)
  segments, done = [], ""
  for i, message in enumerate(messages):
    whole = render_text(messages[:i + 1], template, special_tokens=special_tokens)
    if not whole.startswith(done):
      raise ConfigError("the chat template does not render turns in order; it cannot be used "
                        "for assistant-only loss masking")
    is_assistant = message["role"] == "assistant"
    if is_assistant:  # the generation prompt ("<|assistant|>\n") is the user's side
      prompt = render_text(messages[:i], template, True, special_tokens)
      segments.append((prompt[len(done):], False))
      done = prompt
    segments.append((whole[len(done):], is_assistant))
    done = whole
  return segments
