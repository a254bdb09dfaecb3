"""JSON-schema checks that end in one line: where in the document, the value, what is allowed.
Shared by the node's parameters and the model configs."""
from typing import Any, Dict


def allowed(prop: Dict[str, Any]) -> str:
    """What a schema property admits, in words."""
    if "enum" in prop:
        return "one of " + ", ".join(map(str, prop["enum"]))
    kind = prop.get("type", "any")
    parts = [" or ".join(kind) if isinstance(kind, list) else kind]
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in prop:
            parts.append(f"{word} {prop[key]}")
    if prop.get("type") == "array":
        items = prop["items"]
        parts = [f"a non-empty list of {items.get('description') or items.get('type', 'values')}"
                 + (", each once" if prop.get("uniqueItems") else "")]
    return " ".join(parts)


def first_problem(schema: Dict[str, Any], data: Any) -> str:
    """'' when `data` is valid; else one sentence about the first problem (by document order)."""
    import jsonschema

    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(data), key=lambda e: [str(p) for p in e.path])
    if not errors:
        return ""
    e = errors[0]
    where = ".".join(str(p) for p in e.path)
    node = schema
    for p in e.path:  # the property's own schema, for what it allows
        node = node.get("properties", {}).get(str(p), {}) if isinstance(node, dict) else {}
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
