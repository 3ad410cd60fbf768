"""OpenAI's request and response shapes, as pydantic models.

Requests forbid unknown fields and coerce nothing (strict mode), so a field bigjax does not
support (`best_of`, `logit_bias`, `presence_penalty`, ...) or a value of the wrong type is a 400
that names the field, never silently ignored or guessed. `top_k` is an extension (vLLM has it
too); every other field means what OpenAI's reference says.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 16  # choices per prompt
MAX_STOP = 4  # stop strings per request (OpenAI's limit)
MAX_INPUTS = 64  # prompts (or encoder inputs) per request
MAX_COMPLETION_LOGPROBS = 5  # completions' `logprobs` (OpenAI's limit)
MAX_CHAT_TOP_LOGPROBS = 20  # chat's `top_logprobs` (OpenAI's limit)
MAX_SEED = 2**31 - 1  # seeds are int32 on the device

Text = Annotated[str, Field(min_length=1)]
Texts = Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]


class Strict(BaseModel):
  model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Strict):
  include_usage: bool = False  # a last chunk with the request's usage and no choices


class SamplingRequest(Strict):
  """The fields completions and chat share."""

  model: str | None = None  # the served model's name (GET /v1/models); None = that one
  temperature: float = Field(1.0, ge=0, le=2)  # 0 = greedy
  top_p: float = Field(1.0, gt=0, le=1)
  top_k: int = Field(0, ge=0)  # 0 = all tokens
  seed: int | None = Field(None, ge=0, le=MAX_SEED)  # choice j of a prompt draws with seed + j
  stop: Text | Annotated[list[Text], Field(max_length=MAX_STOP)] | None = None
  n: int = Field(1, ge=1, le=MAX_N)
  stream: bool = False
  stream_options: StreamOptions | None = None


class CompletionRequest(SamplingRequest):
  prompt: Text | Texts
  max_tokens: int = Field(16, ge=1)
  logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
  echo: bool = False


class ChatMessage(Strict):
  role: Literal["system", "user", "assistant"]
  content: str


class ChatRequest(SamplingRequest):
  messages: Annotated[list[ChatMessage], Field(min_length=1)]
  max_tokens: int | None = Field(None, ge=1)  # None: up to the model's max_len
  max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens
  logprobs: bool = False
  top_logprobs: int | None = Field(None, ge=0, le=MAX_CHAT_TOP_LOGPROBS)


class EncoderRequest(Strict):
  model: str | None = None
  input: Text | Texts


class EmbeddingRequest(EncoderRequest):
  encoding_format: Literal["float"] = "float"


# Responses.


class Usage(BaseModel):
  prompt_tokens: int
  completion_tokens: int = 0
  total_tokens: int


class CompletionLogprobs(BaseModel):
  tokens: list[str]
  token_logprobs: list[float | None]  # None for the first prompt token (echo)
  top_logprobs: list[dict[str, float] | None]
  text_offset: list[int]


class CompletionChoice(BaseModel):
  index: int
  text: str
  logprobs: CompletionLogprobs | None = None
  finish_reason: Literal["stop", "length"] | None = None


class Completion(BaseModel):
  id: str
  object: Literal["text_completion"] = "text_completion"
  created: int
  model: str
  choices: list[CompletionChoice]
  usage: Usage | None = None


class TopLogprob(BaseModel):
  token: str
  logprob: float
  bytes: list[int]


class TokenLogprob(TopLogprob):
  top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
  content: list[TokenLogprob]


class ChatMessageOut(BaseModel):
  role: Literal["assistant"] | None = None
  content: str | None = None


class ChatChoice(BaseModel):
  index: int
  message: ChatMessageOut
  logprobs: ChatLogprobs | None = None
  finish_reason: Literal["stop", "length"] | None = None


class ChatChunkChoice(BaseModel):
  index: int
  delta: ChatMessageOut
  logprobs: ChatLogprobs | None = None
  finish_reason: Literal["stop", "length"] | None = None


class ChatCompletion(BaseModel):
  id: str
  object: Literal["chat.completion"] = "chat.completion"
  created: int
  model: str
  choices: list[ChatChoice]
  usage: Usage | None = None


class ChatCompletionChunk(BaseModel):
  id: str
  object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
  created: int
  model: str
  choices: list[ChatChunkChoice]
  usage: Usage | None = None


class ModelCard(BaseModel):
  id: str
  object: Literal["model"] = "model"
  created: int
  owned_by: str = "bigjax"


class ModelList(BaseModel):
  object: Literal["list"] = "list"
  data: list[ModelCard]


class EncoderResult(BaseModel):
  """One input's answer; which field is set depends on the endpoint."""

  object: str
  index: int
  embedding: list[float] | None = None  # /v1/embeddings
  label: str | None = None  # /v1/classify: the most likely class
  probabilities: dict[str, float] | None = None  # /v1/classify: every class
  text: str | None = None  # /v1/translate


class EncoderResponse(BaseModel):
  object: Literal["list"] = "list"
  data: list[EncoderResult]
  model: str
  usage: Usage


class ErrorBody(BaseModel):
  message: str
  type: str
  param: str | None = None
  code: str | None = None


class APIError(Exception):
  def __init__(self, status: int, message: str, param: str | None = None,
               code: str | None = None, type: str = "invalid_request_error",
               headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status, self.param, self.code, self.type, self.headers = status, param, code, type, headers


def check_model(requested: str | None, served: str) -> None:
  if requested not in (None, served):
    raise APIError(404, f"model {requested!r} is not served here; GET /v1/models lists "
                   f"{served!r}", param="model", code="model_not_found")


def error(message: str, type: str = "invalid_request_error", param: str | None = None,
          code: str | None = None) -> dict[str, Any]:
  """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
  return {"error": ErrorBody(message=message, type=type, param=param, code=code).model_dump()}
