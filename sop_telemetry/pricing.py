"""Cost estimates: dollars for a model call, from the user's own prices or the genai-prices database.

Usage::

    book = PriceBook({"my-model": {"input_per_million": 1.0, "output_per_million": 2.0}})
    book.cost("gpt-4o", prompt_tokens=1000, completion_tokens=500)   # 0.0075, from genai-prices
    book.cost("my-model", 1_000_000, 0)                               # 1.0, the user's price wins
    book.cost("no-such-model", 10, 10)                                # None: unknown is not zero

genai-prices ships its data inside the package and only goes to the network when `genai_prices.UpdatePrices` is
started, which this module never does: `calc_price` reads the bundled snapshot (or one the host program installed
itself). It is imported only when a price is first needed, because importing it takes longer than everything else
we do at start.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

logger = logging.getLogger("sop_telemetry")

_Calc = Callable[[int, int], Optional[float]]


class PriceBook:
    """Prices model calls: `overrides` (model id -> {input_per_million, output_per_million}, in dollars) first,
    then genai-prices' bundled data when the `cost` extra is installed. See the module docstring for examples."""

    def __init__(self, overrides: Optional[Mapping[str, Any]] = None) -> None:
        self._overrides: Dict[str, Tuple[float, float]] = {}
        for model, price in (overrides or {}).items():
            if hasattr(price, "input_per_million"):
                self._overrides[model] = (float(price.input_per_million), float(price.output_per_million))
            else:
                self._overrides[model] = (float(price["input_per_million"]), float(price["output_per_million"]))
        self._cache: Dict[str, Optional[_Calc]] = {}
        self._lock = threading.Lock()

    def cost(self, model: Optional[str], prompt_tokens: Optional[int], completion_tokens: Optional[int]) -> Optional[float]:
        """Dollars for one call, or None when the model's price is unknown or the tokens were not reported."""
        if not model or prompt_tokens is None and completion_tokens is None:
            return None
        calc = self._cache.get(model, _MISSING)
        if calc is _MISSING:
            with self._lock:
                calc = self._cache[model] = self._resolve(model)
        if calc is None:
            return None
        return calc(int(prompt_tokens or 0), int(completion_tokens or 0))

    def _resolve(self, model: str) -> Optional[_Calc]:
        # The user's prices win over the database for every spelling of the id ("openai/gpt-4o" finds a price
        # given for "gpt-4o").
        for ref, _provider in _candidates(model):
            if ref in self._overrides:
                inp, out = self._overrides[ref]
                return lambda p, c: (p * inp + c * out) / 1_000_000
        return _database_calc(model)


_MISSING: Any = object()


def _candidates(model: str):
    """Model refs to try: as given; then `provider/model` split (LiteLLM, OpenRouter and HF ids carry a prefix)."""
    yield model, None
    if "/" in model:
        provider, _, rest = model.partition("/")
        yield rest, provider.lower()
        yield rest, None
        if "/" in rest:
            yield rest.rsplit("/", 1)[1], None


def _database_calc(model: str) -> Optional[_Calc]:
    try:
        from genai_prices import Usage, calc_price
    except Exception:  # noqa: BLE001 - the cost extra is not installed
        return None
    for ref, provider in _candidates(model):
        try:
            calc_price(Usage(input_tokens=1, output_tokens=1), model_ref=ref, provider_id=provider)
        except Exception:  # noqa: BLE001 - LookupError for unknown models, anything else for odd refs
            continue

        def calc(p: int, c: int, ref: str = ref, provider: Optional[str] = provider) -> Optional[float]:
            try:
                price = calc_price(Usage(input_tokens=p, output_tokens=c), model_ref=ref, provider_id=provider)
                return float(price.total_price)
            except Exception:  # noqa: BLE001
                return None

        return calc
    return None
