"""Schemathesis hooks for scripts/api-fuzz.sh (loaded through SCHEMATHESIS_HOOKS).

Rule, scene, template, profile, role, group and notification-channel names are
unique per tenant (a second create with a taken name is a documented 409). Hypothesis draws the same few short
strings again and again ("0", "00", ...), so without help nearly every generated
create after the first collides, and the run cannot tell a 409 for a taken name from
a schema the server does not accept. A valid name gets a run-unique suffix; an
invalid one (blank, too long, not a string) is left alone, so negative cases stay
negative.
"""

import itertools
import json

import schemathesis

# Names are at most 255 characters; the suffix is at most 10 more.
_MAX_NAME_CHARS = 255
_SUFFIX_ROOM = 12
_counter = itertools.count(1)


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict):
        name = body.get("name")
        if (
            isinstance(name, str)
            and name.strip()
            and len(name) <= _MAX_NAME_CHARS - _SUFFIX_ROOM
        ):
            body["name"] = f"{name} #{next(_counter)}"
    return body


@schemathesis.deserializer("application/x-ndjson")
def ndjson_lines(ctx, response):
    """The telemetry export's JSON lines: the document's schema describes one line
    (OpenAPI 3.1 has no schema for a sequence of documents), so every line is checked
    against it here and the first is handed on for Schemathesis' own check. An empty
    export (no rows in the range) has nothing to check."""
    lines = [json.loads(line) for line in response.content.splitlines() if line.strip()]
    if not lines:
        raise NotImplementedError("an empty export has no line to validate")
    definition = ctx.operation.responses.find_by_status_code(response.status_code)
    if definition is not None:
        resolved = definition.get_schema("application/x-ndjson")
        if resolved.schema is not None:
            validator = definition.get_validator(
                resolved.media_type, resolved.schema, validate_formats=True
            )
            if validator is not None:
                for number, line in enumerate(lines, 1):
                    for error in validator.iter_errors(line):
                        raise ValueError(f"line {number} does not match the schema: {error}")
    return lines[0]
