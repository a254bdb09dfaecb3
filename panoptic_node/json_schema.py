"""JSON-schema checks that end in one line: where in the document, the value, what is allowed.
Shared by the node's parameters and the model configs."""
import math
from typing import Any, Dict, Optional


def allowed(prop: Dict[str, Any]) -> str:
    """What a schema property admits, in words."""
    if "anyOf" in prop:  # e.g. 0 (off) or a value in a range
        return " or ".join(allowed({"type": prop.get("type"), **option}) for option in prop["anyOf"])
    if "const" in prop:
        return f"{prop['const']}"
    if "enum" in prop:
        return "one of " + ", ".join(map(str, prop["enum"]))
    if prop.get("type") == "string" and "pattern" in prop and prop.get("examples"):
        return "a string like " + " or ".join(repr(e) for e in prop["examples"])
    kind = prop.get("type", "any")
    parts = [" or ".join(kind) if isinstance(kind, list) else kind]
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in prop:
            parts.append(f"{word} {prop[key]}")
    if prop.get("type") == "array":
        items = prop["items"]
        size = "a non-empty list" if prop.get("minItems", 0) >= 1 else "a list"
        parts = [f"{size} of {items.get('description') or items.get('type', 'values')}"
                 + (", each once" if prop.get("uniqueItems") else "")]
    return " ".join(parts)


def non_finite(data: Any, path=()) -> Optional[tuple]:
    """The path of the first NaN or infinite number in a document (YAML writes them .nan / .inf), or None:
    JSON schema bounds let NaN through, every comparison with it being false."""
    if isinstance(data, float) and not math.isfinite(data):
        return path
    children = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in children:
        found = non_finite(value, path + (key,))
        if found is not None:
            return found
    return None


def _at(schema: Dict[str, Any], path) -> Dict[str, Any]:
    """The schema of the property at `path`, for what it allows ({} where the path leaves the properties)."""
    node = schema
    for p in path:
        node = node.get("properties", {}).get(str(p), {}) if isinstance(node, dict) else {}
    return node


def first_problem(schema: Dict[str, Any], data: Any) -> str:
    """'' when `data` is valid; else one sentence about the first problem (by document order)."""
    import jsonschema

    nan_at = non_finite(data)
    if nan_at:
        value = data
        for p in nan_at:
            value = value[p]
        return f"'{'.'.join(map(str, nan_at))}' = {value!r} is invalid: allowed a finite {allowed(_at(schema, nan_at))}"
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(data), key=lambda e: [str(p) for p in e.path])
    if not errors:
        return ""
    e = errors[0]
    where = ".".join(str(p) for p in e.path)
    node = _at(schema, e.path)
    if e.validator == "required":
        missing = e.message.split("'")[1]
        return f"'{(where + '.' if where else '') + missing}' is missing (required: {', '.join(e.validator_value)})"
    if e.validator == "additionalProperties":
        known = sorted(e.schema.get("properties", {}))
        return f"{e.message.split('(')[-1].rstrip(')')} {'under ' + repr(where) if where else 'at the top level'}; " \
               f"expected some of {', '.join(known)}"
    if not where:
        return f"expected a mapping of keys to values, got {type(data).__name__}"
    return f"'{where}' = {e.instance!r} is invalid: allowed {allowed(node)}"
