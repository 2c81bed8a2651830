"""The text the gateway's strategies write to a model and read back, in one light module, so
that backends that replay the protocol (``service.bank_replay``) read the same constants
without importing the strategies (whose package loads the gateway's metrics, tracing and
search backends: 1.7 s more at the replay's start, measured on this machine).

- ``SEARCH_LINE``: a search request in the plain-text protocol, a line of the model's reply
  starting ``SEARCH:`` (``service.strategies.search``).
- ``FINAL_ANSWER``: the search strategy's request for its final answer, ``{why}`` filled
  with the reason; ``FINAL_ANSWER_MARK`` is its fixed part, by which a backend knows the call.
- ``PREFILL``: what ``service.strategies.sequential`` appends to a cut chain to force its
  answer.
"""

from __future__ import annotations

import re

SEARCH_LINE = re.compile(r"^[ \t]*SEARCH:[ \t]*(\S[^\n]*?)[ \t]*$", re.MULTILINE)
FINAL_ANSWER = ("{why} Using the search results above and what you know, state your final "
                "answer now, in the form \"The answer is X.\"")
FINAL_ANSWER_MARK = FINAL_ANSWER.split("{why} ", 1)[1]
PREFILL = "\n\nSo the final answer is"
