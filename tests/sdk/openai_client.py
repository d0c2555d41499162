"""Drives the gateway with the official `openai` Python package, as a user would.

Usage: openai_client.py BASE_URL API_KEY MODEL [revoked]
Prints one JSON object: the plain completion, the streamed one and the SDK's exception for an
unknown model; with `revoked`, only the exception the SDK raises for the (revoked) key. The Rust
test tests/e2e/sdk.rs runs both phases. Exits non-zero on anything unexpected.
"""

import json
import sys

import openai
from openai import OpenAI


def main() -> None:
    base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=20)
    out = {"sdk_version": openai.__version__}
    if sys.argv[4:] == ["revoked"]:
        try:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
            out["revoked"] = "no error"
        except openai.AuthenticationError as e:
            out["revoked"] = {"type": type(e).__name__, "status": e.status_code, "code": e.code}
        print(json.dumps(out))
        return

    plain = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=32,
    )
    out["plain"] = {
        "model": plain.model,
        "content": plain.choices[0].message.content,
        "finish_reason": plain.choices[0].finish_reason,
        "total_tokens": plain.usage.total_tokens if plain.usage else None,
    }

    parts, usage, chunks = [], None, 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count to five"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        chunks += 1
        for choice in chunk.choices:
            if choice.delta and choice.delta.content:
                parts.append(choice.delta.content)
        if chunk.usage:
            usage = chunk.usage.total_tokens
    out["stream"] = {"chunks": chunks, "content": "".join(parts), "total_tokens": usage}

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        out["unknown_model"] = "no error"
    except openai.NotFoundError as e:
        out["unknown_model"] = {"type": type(e).__name__, "status": e.status_code, "code": e.code}

    print(json.dumps(out))


if __name__ == "__main__":
    main()
