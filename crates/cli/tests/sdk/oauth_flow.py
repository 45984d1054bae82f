"""The taxid-etims 0.8.1 SDK in its OAuth 2.0 client-credentials mode (no API key) against
`ushuru serve`: the SDK fetches a token at POST /oauth/token with HTTP Basic and signs a
sale with it; a wrong secret is refused the way the SDK reports it.

Run by crates/cli/tests/serve.rs. Exits non-zero with a message on the first surprise.
"""

import os
import sys

from kra_etims.client import KRAeTIMSClient
from kra_etims.exceptions import KRAeTIMSAuthError
from kra_etims.models import SaleInvoice
from kra_etims.tax import build_invoice_totals, calculate_item

os.environ.pop("TAXID_API_KEY", None)  # OAuth mode only when no API key is configured
tin = os.environ["USHURU_TIN"]
url = os.environ["TAXID_API_URL"]
client_id = os.environ["USHURU_OAUTH_CLIENT_ID"]
secret = os.environ["USHURU_OAUTH_CLIENT_SECRET"]


def check(condition, what):
    if not condition:
        sys.exit(f"SDK OAuth check failed: {what}")


client = KRAeTIMSClient(client_id=client_id, client_secret=secret, base_url=url)
check(repr(client).find("oauth") >= 0 and secret not in repr(client), f"repr: {client!r}")
items = [calculate_item("Consulting", "SVC-01", "1160", "B")]
invoice = SaleInvoice(tin=tin, bhfId="00", invcNo="OAUTH-1", confirmDt="20261122120000", itemList=items,
                      **build_invoice_totals(items))
signed = client.submit_sale(invoice, idempotency_key=f"{tin}:OAUTH-1")
check(signed["status"] == "SIGNED", f"sale: {signed}")
status = client.get_sale_status(signed["purchaseId"])
check(status["status"] == "SIGNED", f"status: {status}")

wrong = KRAeTIMSClient(client_id=client_id, client_secret=secret + "x", base_url=url)
try:
    wrong.submit_sale(invoice, idempotency_key=f"{tin}:OAUTH-2")
    sys.exit("SDK OAuth check failed: a wrong secret signed a sale")
except KRAeTIMSAuthError as error:
    check("TIaaS Authentication failed" in str(error) and "client" in str(error), f"error: {error}")

print("4 OAuth checks passed")
