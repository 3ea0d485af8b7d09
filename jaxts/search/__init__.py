"""Tree search over LLM tokens towards ``p_theta(y | x) exp(lam r(y)) / Z`` (issue 13): DTS / DTS*,
the seed's depth-limited MaxEnt-TS and the decoding baselines, all written against the host-side
:class:`LanguageModel` protocol (``TabularLM`` is its exactly enumerable toy)."""

from jaxts.search import baselines
from jaxts.search.baselines import beam, best_of_n, greedy, nfe_matched_n, nucleus, soft_best_of_n
from jaxts.search.dts import dts
from jaxts.search.maxent_ts import maxent_ts
from jaxts.search.protocol import LanguageModel, TabularLM, top_p_logprobs
from jaxts.search.result import SearchResult

__all__ = [
    "LanguageModel",
    "SearchResult",
    "TabularLM",
    "baselines",
    "beam",
    "best_of_n",
    "dts",
    "greedy",
    "maxent_ts",
    "nfe_matched_n",
    "nucleus",
    "soft_best_of_n",
    "top_p_logprobs",
]
