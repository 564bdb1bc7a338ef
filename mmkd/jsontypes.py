"""Names for JSON-shaped values: what ``store.json``, ``results.json``, the pipelines file and every
``to_dict()`` hold. A signature that says ``JSONDict`` promises plain data (str, numbers, bools,
None, lists and str-keyed dicts of those), not arbitrary objects.
"""

from __future__ import annotations

from typing import TypeAlias

JSONScalar: TypeAlias = "str | int | float | bool | None"
JSON: TypeAlias = "JSONScalar | list[JSON] | dict[str, JSON]"
JSONDict: TypeAlias = "dict[str, JSON]"
