"""A small MCP server for the approvals tests, built with the official `mcp` Python SDK.

Tools: `send_email(to, subject, body)` and `transfer_funds(from_account, to_account, amount)`.
Each executed call is appended as one JSON line to the file named by $OUTBOX, so a test counts
what really ran (emails sent, transfers made) independently of the gateway.

Run: `python payments_mail.py` (stdio) or `python payments_mail.py http <port>` (streamable HTTP
on 127.0.0.1:<port>/mcp).
"""

import json
import os
import sys

from mcp.server.fastmcp import FastMCP

mcp = FastMCP("payments-mail")


def _record(kind: str, **fields) -> int:
    """Append one executed operation to $OUTBOX; return how many of `kind` ran so far."""
    path = os.environ.get("OUTBOX")
    if not path:
        return 0
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": kind, **fields}) + "\n")
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if json.loads(line)["kind"] == kind)


@mcp.tool()
def send_email(to: str, subject: str, body: str) -> str:
    """Send an e-mail."""
    n = _record("email", to=to, subject=subject, body=body)
    return f"sent email #{n} to {to}"


@mcp.tool()
def transfer_funds(from_account: str, to_account: str, amount: float) -> str:
    """Move money between accounts."""
    n = _record("transfer", from_account=from_account, to_account=to_account, amount=amount)
    return f"transfer #{n}: {amount} from {from_account} to {to_account}"


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "http":
        mcp.settings.host = "127.0.0.1"
        mcp.settings.port = int(sys.argv[2])
        mcp.run(transport="streamable-http")
    else:
        mcp.run()
