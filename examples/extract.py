"""Structured data out of free text: a JSON schema in, a validated dict out.

    python examples/extract.py [PACKAGE] [--text "..."] [--schema schema.json]   # default: models/smollm2-135m-int4

    contact = extract(model, "Reach Dr. Mia Chen at mia@lab.org or +44 20 7946 0958.", CONTACT)
    contact["email"]                                   # "mia@lab.org"

The answer is constrained to the schema (edgellama.Constraint.json_schema), so it always parses and
has the required fields; what goes into them is the model's reading of the text. A run that hits
the token limit mid-object raises instead of returning half a record.
"""
from __future__ import annotations

import argparse
import json
import sys

import edgellama

DEFAULT_PACKAGE = "models/smollm2-135m-int4"
CONTACT = {
    "type": "object", "additionalProperties": False, "required": ["name", "email", "phone", "role"],
    "properties": {
        "name": {"type": "string", "maxLength": 60},
        "email": {"type": "string", "pattern": "^[a-z0-9._-]+@[a-z0-9.-]+\\.[a-z]{2,6}$"},
        "phone": {"type": "string", "pattern": "^\\+?[0-9 ]{6,20}$"},
        "role": {"enum": ["engineer", "doctor", "teacher", "manager", "other"]},
    },
}
SAMPLE = ("Hi team, please loop in Dr. Mia Chen (she runs the imaging lab as a doctor) - her mail is "
          "mia.chen@lab.org and her phone +44 20 7946 0958.")


def extract(model, text: str, schema: dict, max_new_tokens: int = 200) -> dict:
    """The record `text` holds, as a dict that follows `schema`."""
    messages = [{"role": "system", "content": "Extract the requested fields from the user's text as JSON."},
                {"role": "user", "content": text}]
    result = model.chat(messages, max_new_tokens=max_new_tokens, sampling=edgellama.SamplingParams.greedy(),
                        constraint=edgellama.Constraint.json_schema(schema))
    if result.finish_reason != "eos":
        raise RuntimeError(f"the answer stopped early ({result.finish_reason}): {result.text!r}")
    return json.loads(result.text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", default=DEFAULT_PACKAGE)
    parser.add_argument("--text", default=SAMPLE, help="the text to read (default: a sample message)")
    parser.add_argument("--schema", help="a JSON schema file (default: a contact record)")
    args = parser.parse_args(argv)
    schema = CONTACT
    if args.schema:
        try:
            with open(args.schema, encoding="utf-8") as handle:
                schema = json.load(handle)
        except (OSError, ValueError) as exc:    # a schema file that is missing or not JSON
            parser.exit(1, f"{parser.prog}: error: --schema {args.schema}: {exc}\n")
    try:
        record = extract(edgellama.load(args.package), args.text, schema)
    except (edgellama.EdgeLlamaError, RuntimeError) as exc:   # edgellama's errors, and an answer cut short
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    print(json.dumps(record, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
