"""Real Python clients against a Palisade listener on HTTPS, driven by gateway/tests/tls_ingress.rs:
the official openai SDK (HTTP/1.1) and httpx over HTTP/2 (ALPN), both trusting the private CA
the test made. Prints one line per client; exits non-zero on any failure.

Environment: PALISADE_TEST_URL (https://localhost:PORT), PALISADE_TEST_CA (PEM file),
PALISADE_TEST_KEY (an agent key).
"""

import os
import sys

import httpx
import openai

url = os.environ["PALISADE_TEST_URL"]
ca = os.environ["PALISADE_TEST_CA"]
key = os.environ["PALISADE_TEST_KEY"]

with httpx.Client(verify=ca, timeout=30.0) as http:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, http_client=http, max_retries=0)
    done = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello over https"}]
    )
    text = done.choices[0].message.content or ""
    if "hello over https" not in text:
        sys.exit(f"openai: unexpected answer {text!r}")
    print("openai: ok")

with httpx.Client(http2=True, verify=ca, timeout=30.0) as http:
    r = http.post(
        f"{url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello over h2"}]},
    )
    if r.status_code != 200:
        sys.exit(f"httpx: status {r.status_code}: {r.text}")
    text = r.json()["choices"][0]["message"]["content"]
    if "hello over h2" not in text:
        sys.exit(f"httpx: unexpected answer {text!r}")
    print(f"httpx: {r.http_version}")
