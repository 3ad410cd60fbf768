"""Generated tokens to text as it becomes final, with OpenAI's stop strings.

Text is released only once no later token can change it: a trailing replacement character may be
the first bytes of a character the next token completes (byte-level and byte-fallback
tokenizers), and a trailing piece of a stop string may be the start of that stop string. A stop
string ends the text before it, so streamed chunks join to exactly the non-streamed text.

Each call decodes the prompt's last few tokens together with the new ones: tokenizers such as
SentencePiece decode a token differently at the start of a text (a word-initial space is dropped),
so the new tokens alone would lose their first space.
"""

from typing import Sequence

CONTEXT_TOKENS = 4  # prompt tokens decoded with the new ones (see the module docstring)
INCOMPLETE = "\ufffd"  # what a decoder writes for bytes that are not (yet) a whole character


class TextStream:

  def __init__(self, tokenizer, prompt_ids: Sequence[int], stop: Sequence[str] = ()):
    self.tokenizer, self.stop = tokenizer, tuple(stop)
    self.context = [int(i) for i in prompt_ids[-CONTEXT_TOKENS:]]
    self.context_chars = len(tokenizer.decode(self.context))
    self.ids: list[int] = []
    self.released = 0  # characters of the text handed out so far
    self.stopped = False  # a stop string was found: the text is final

  def _text(self) -> str:
    return self.tokenizer.decode(self.context + self.ids)[self.context_chars:]

  def push(self, token_id: int) -> str:
    """The text that `token_id` makes final (often "", sometimes several tokens' worth)."""
    self.ids.append(int(token_id))
    text = self._text()
    ends = [i for i in (text.find(s, max(0, self.released - len(s) + 1)) for s in self.stop)
            if i >= 0]
    if ends:
      self.stopped = True
      return self._release(text, min(ends))
    safe = len(text.rstrip(INCOMPLETE))
    held = max((k for s in self.stop for k in range(1, min(len(s) - 1, safe) + 1)
                if text[safe - k:safe] == s[:k]), default=0)  # may begin a stop string
    return self._release(text, safe - held)

  def finish(self) -> str:
    """Whatever is still held back, once generation has ended without a stop string."""
    return "" if self.stopped else self._release(self._text(), None)

  def _release(self, text: str, end: int | None) -> str:
    piece = text[self.released:end]
    self.released += len(piece)
    return piece
