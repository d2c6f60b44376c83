#!/usr/bin/env python3
"""Writes corpus.jsonl: labelled sentences for the pii plugin's quality test.

Each line: {"text": ..., "spans": [{"kind": ..., "value": ...}]}. Values are generated with valid
checksums where the kind has one (Luhn, mod-97), in the formats people actually write, inside
varied sentences. Negatives are hand-picked look-alikes: order numbers, ISBNs, dates, versions,
UUIDs, timestamps, hashes, prices, identifiers. Deterministic (fixed seed): re-run to regenerate.

    python3 plugins/pii/corpus/gen.py > plugins/pii/corpus/corpus.jsonl
"""
import json
import random
import string

R = random.Random(8)

def luhn_complete(prefix, length):
    digits = [int(c) for c in prefix]
    while len(digits) < length - 1:
        digits.append(R.randrange(10))
    for check in range(10):
        d = digits + [check]
        s = 0
        for i, v in enumerate(reversed(d)):
            if i % 2 == 1:
                v *= 2
                if v > 9:
                    v -= 9
            s += v
        if s % 10 == 0:
            return "".join(map(str, d))

def card():
    prefix, length = R.choice([("4", 16), ("4", 16), ("51", 16), ("55", 16), ("2221", 16),
                               ("34", 15), ("37", 15), ("6011", 16), ("65", 16), ("35", 16)])
    n = luhn_complete(prefix + "".join(str(R.randrange(10)) for _ in range(2)), length)
    style = R.choice(["plain", "space", "dash"])
    if style == "plain":
        return n
    sep = " " if style == "space" else "-"
    if length == 15:
        return sep.join([n[:4], n[4:10], n[10:]])
    return sep.join(n[i:i + 4] for i in range(0, 16, 4))

def iban():
    country, blen = R.choice([("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14), ("ES", 20), ("IT", 23), ("CH", 17)])
    if country == "GB" or country == "NL":
        bban = "".join(R.choice(string.ascii_uppercase) for _ in range(4)) + "".join(str(R.randrange(10)) for _ in range(blen - 4))
    elif country == "IT":
        bban = R.choice(string.ascii_uppercase) + "".join(str(R.randrange(10)) for _ in range(blen - 1))
    else:
        bban = "".join(str(R.randrange(10)) for _ in range(blen))
    conv = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(conv) % 97
    s = f"{country}{check:02d}{bban}"
    if R.random() < 0.5:
        s = " ".join(s[i:i + 4] for i in range(0, len(s), 4))
    return s

def ssn():
    while True:
        a = R.randrange(1, 900)
        if a != 666:
            break
    g, s = R.randrange(1, 100), R.randrange(1, 10000)
    return f"{a:03d}-{g:02d}-{s:04d}"

def phone():
    d = lambda n: "".join(str(R.randrange(10)) for _ in range(n))
    a = str(R.randrange(2, 10)) + d(2)
    return R.choice([
        f"+1 {a} {d(3)} {d(4)}", f"+1-{a}-{d(3)}-{d(4)}", f"({a}) {d(3)}-{d(4)}", f"{a}-{d(3)}-{d(4)}",
        f"{a}.{d(3)}.{d(4)}", f"+44 20 {d(4)} {d(4)}", f"+44 7{d(3)} {d(6)}", f"+49 30 {d(8)}",
        f"+49-89-{d(7)}", f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}", f"+81 3-{d(4)}-{d(4)}",
        f"+91 98{d(3)} {d(5)}", f"+61 2 {d(4)} {d(4)}", f"+5511{d(9)}", f"1-800-{d(3)}-{d(4)}",
        f"+1 ({a}) {d(3)}-{d(4)}", f"+34 6{d(2)} {d(3)} {d(3)}",
    ])

def email():
    first = R.choice(["jane", "john.smith", "m.garcia", "wei_chen", "olga", "a.b", "dev-ops", "sales+eu", "x9"])
    dom = R.choice(["example.com", "acme.co.uk", "mail.example.org", "uni-heidelberg.de", "corp.io", "gmail.com"])
    return f"{first}{R.randrange(100) if R.random() < 0.4 else ''}@{dom}"

def ip():
    if R.random() < 0.6:
        return ".".join(str(R.randrange(1, 255)) for _ in range(4))
    return R.choice(["2001:db8::1", "fe80::1ff:fe23:4567:890a", "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
                     "::1", "2606:4700:4700::1111", f"2001:db8:{R.randrange(65535):x}::{R.randrange(65535):x}"])

def rand_token(n, alphabet=string.ascii_letters + string.digits):
    return "".join(R.choice(alphabet) for _ in range(n))

def secret():
    kind = R.choice(["openai", "proj", "anthropic", "aws", "github", "slack", "bearer", "entropy", "pk", "stripe", "google", "jwt"])
    if kind == "openai":
        return "sk-" + rand_token(48), None
    if kind == "proj":
        return "sk-proj-" + rand_token(40, string.ascii_letters + string.digits + "_-"), None
    if kind == "anthropic":
        return "sk-ant-api03-" + rand_token(60, string.ascii_letters + string.digits + "_-"), None
    if kind == "aws":
        return "AKIA" + rand_token(16, string.ascii_uppercase + string.digits), None
    if kind == "github":
        return R.choice(["ghp_", "gho_", "ghs_"]) + rand_token(36), None
    if kind == "slack":
        return R.choice(["xoxb-", "xoxp-"]) + f"{R.randrange(10**11)}-{R.randrange(10**12)}-" + rand_token(24), None
    if kind == "bearer":
        t = rand_token(32, string.ascii_letters + string.digits + "._-")
        return t, "Authorization: Bearer " + t
    if kind == "entropy":
        return rand_token(R.choice([24, 32, 40])), None
    if kind == "stripe":
        return "sk_live_" + rand_token(24), None
    if kind == "google":
        return "AIza" + rand_token(35, string.ascii_letters + string.digits + "_-"), None
    if kind == "jwt":
        return "eyJhbGciOiJIUzI1NiJ9." + rand_token(40) + "." + rand_token(43, string.ascii_letters + string.digits + "_-"), None
    body = "\n".join(rand_token(64, string.ascii_letters + string.digits + "+/") for _ in range(4))
    t = R.choice(["RSA ", "EC ", "OPENSSH ", ""])
    return f"-----BEGIN {t}PRIVATE KEY-----\n{body}\n-----END {t}PRIVATE KEY-----", None

TEMPLATES = {
    "email": ["Please reply to {v} by Friday.", "Contact: {v}", "my email is {v}, thanks", "cc {v} and the team",
              "Send the invoice to <{v}>.", "(from {v})"],
    "phone": ["Call me at {v} tomorrow.", "Phone: {v}", "reach the office on {v} or by mail", "mobile {v}.",
              "Her number is {v}; she is in after 9."],
    "card": ["My card number is {v}, expiry 09/27.", "charge {v} please", "Card: {v}", "use the card {v} for this order",
             "payment with {v} failed"],
    "ssn": ["SSN: {v}", "My social security number is {v}.", "employee ssn {v} on file", "Please verify {v} for the claim."],
    "iban": ["Transfer to IBAN {v} today.", "IBAN: {v}", "account {v} (Deutsche Bank)", "pay into {v}, reference 2231"],
    "ip": ["The server at {v} is down.", "blocked IP {v} after 5 attempts", "connect to {v} on port 8443", "source={v} dest=internal"],
    "secret": ["here is my key {v} please debug", "OPENAI_API_KEY={v}", "token: {v}", "export AWS_ACCESS_KEY_ID={v}",
               "use `{v}` for the API"],
}

GEN = {"email": email, "phone": phone, "card": card, "ssn": ssn, "iban": iban, "ip": ip}

NEGATIVES = [
    "Your order number is 1234567890123456.", "Order #ORD-2024-001234 has shipped.", "Order 4111111111111112 is late.",
    "ISBN 978-3-16-148410-0", "ISBN-13: 978-0-306-40615-7", "ISBN 0-306-40615-2",
    "The meeting is on 2024-01-15 at 10:30:00.", "Timestamp: 2024-03-08T14:22:05Z", "logged 2025-11-27 04:42:29 UTC",
    "Date: 03/08/2024", "born 12.05.1987", "Upgrade to version 1.2.3.4 now.", "running v10.0.19041.1",
    "release 2.14.0-beta.3", "node v20.11.1", "build 10.0.22621.2428", "python 3.12.1",
    "id 550e8400-e29b-41d4-a716-446655440000", "uuid: 123e4567-e89b-12d3-a456-426614174000",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8", "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "md5 d41d8cd98f00b204e9800998ecf8427e", "Price: $1,299.99 (was $1,499.00)", "Total 12,345,678 units",
    "The ratio was 3.14159265358979.", "See section 4.2.1 of RFC 7231.", "Call std::vector<int>::push_back here.",
    "at 12:30:45.123 the job started", "MAC 00:1A:2B:3C:4D:5E", "port 8080 and 443 are open",
    "tracking number 1Z999AA10123456784", "Invoice INV-000123456 due 2024-02-01", "getUserAccountBalanceV2Handler",
    "ProcessPaymentRequestHandlerFactoryImpl", "The quick brown fox jumps over the lazy dog.", "user@localhost is not routable",
    "email me at jane at example dot com", "employee id 123456789", "ZIP 94105-1234", "room 415-555 is booked",
    "reference DE00 1234 5678 9012 3456 78", "account GB00 WEST 1234 5698 7654 32", "BIC DEUTDEFF",
    "Use the sk-learn library (scikit-learn).", "the task-runner-config-v2 file", "see https://example.com/docs/api/v1/users",
    "path /usr/local/lib/python3.12/site-packages", "matrix 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
    "phone extension 4412", "Call 911 or 112 in an emergency.", "score 98.6 out of 100", "lat 37.7749, lon -122.4194",
    "temperature 23.5.", 
    "Coordinates 40.7128 N 74.0060 W", "ticket JIRA-12345", "The total was 4111 USD for 1111 items.", "numbers 123-45-678 and 12-345-6789", "serial 000-12-3456",
    "SKU 4006381333931", "EAN 5901234123457", "array[0] = [1, 2, 3]", "base version 0.1.0",
    "AKIA is a prefix used by AWS", "my key is in the vault", "Bearer token goes in the header",
    "sk-1234", "ghp_ is the GitHub prefix", "A1B2C3D4E5", "CamelCaseIdentifierName", "AbstractSingletonProxyFactoryBean", "XMLHttpRequestEventTarget2",
    "kubernetesClusterRoleBindingV1beta1", "TestPaymentGatewayIntegration",
    "weights_v2_final_FINAL_2024.ckpt", "dist/plugins/model-allow.wasm", "from 10:00 to 18:00",
    "release on 11/27/2026 at 5:40 PM", "2001 was a good year; so was 1999.", "file_2024_03_08_backup.tar.gz",
    "Room 2.201, building 7.", "HTTP/1.1 200 OK", "ratio 16:9 screen",
]

def main():
    rows = []
    for kind, gen in GEN.items():
        for _ in range(60):
            v = gen()
            rows.append({"text": R.choice(TEMPLATES[kind]).format(v=v), "spans": [{"kind": kind, "value": v}]})
    for _ in range(84):
        v, text = secret()
        if text is None:
            text = R.choice(TEMPLATES["secret"]).format(v=v)
        rows.append({"text": text, "spans": [{"kind": "secret", "value": v}]})
    # Mixed sentences with several kinds.
    for _ in range(20):
        e, p, c = email(), phone(), card()
        rows.append({"text": f"Customer {e}, phone {p}, paid with {c}.",
                     "spans": [{"kind": "email", "value": e}, {"kind": "phone", "value": p}, {"kind": "card", "value": c}]})
    for t in NEGATIVES:
        rows.append({"text": t, "spans": []})
    for r in rows:
        print(json.dumps(r))

if __name__ == "__main__":
    main()
