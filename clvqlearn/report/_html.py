"""Filling the self-contained HTML pages: escaped title, embedded JSON data.

Both pages (the concept browser and the study page) hold their data as one
``<script type="application/json">`` block that their code reads with
``JSON.parse`` and shows with ``textContent`` only.  User strings (tokens,
sentences, method and label names, titles, instructions) therefore never
reach the HTML parser as markup.
"""

from __future__ import annotations

import html
import json
import re

#: Characters that could end or confuse a <script> block (``</script>``, ``<!--``), or that older
#: JavaScript parsers read as line ends; JSON's \\u escapes keep the data identical.
_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_PLACEHOLDER = re.compile(r"__(TITLE|DATA)__")


def embed_json(data) -> str:
    """``data`` as JSON text that is safe inside a ``<script>`` element.

    Examples
    --------
    >>> embed_json({"t": "<!-- <script>"})
    '{"t":"\\\\u003c!-- \\\\u003cscript\\\\u003e"}'
    """
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda m: _SCRIPT_UNSAFE[m.group(0)], text)


def fill_page(page: str, *, title: str, data) -> str:
    """The page with its ``__TITLE__`` (HTML-escaped) and ``__DATA__`` (:func:`embed_json`) filled in.

    One pass, so a title that contains ``__DATA__`` stays text.
    """
    values = {"TITLE": html.escape(str(title)), "DATA": embed_json(data)}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], page)
