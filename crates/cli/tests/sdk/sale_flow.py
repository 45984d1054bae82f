"""The taxid-etims 0.8.1 SDK, unchanged, against `ushuru serve` (TAXID_API_URL).

Run by crates/cli/tests/serve.rs with the venv scripts/test creates. Exits non-zero with a
message on the first thing that is not as the SDK's users expect.
"""

import os
import sys
import warnings

from kra_etims.client import KRAeTIMSClient
from decimal import Decimal

from kra_etims.exceptions import CreditNoteConflictError, CreditNoteExceedsOriginalError, KRAConflictError
from kra_etims.models import (BranchCustomerRegistration, CreditNoteReason, ItemRegistration, ReturnLine,
                              SaleInvoice, StockAdjustmentLine, StockMasterRequest)
from kra_etims.tax import build_invoice_totals, calculate_item

warnings.simplefilter("error")  # no UserWarning: every call below passes its key
tin = os.environ["USHURU_TIN"]
client = KRAeTIMSClient(api_key=os.environ["TAXID_API_KEY"], base_url=os.environ["TAXID_API_URL"])


def invoice(invc_no, items):
    return SaleInvoice(
        tin=tin, bhfId="00", invcNo=invc_no, confirmDt="20261121120000", itemList=items, **build_invoice_totals(items)
    )


def check(condition, what):
    if not condition:
        sys.exit(f"SDK check failed: {what}")


# A flat sale, signed.
flat = invoice("SDK-1", [calculate_item("Consulting", "SVC-01", "5800", "B")])
first = client.submit_sale(flat, idempotency_key=f"{tin}:SDK-1")
check(first["status"] == "SIGNED", f"first sale: {first}")
check(isinstance(first["purchaseId"], int), "purchaseId is an integer")
check(first["cuInvoiceNumber"].endswith(" NS"), f"cuInvoiceNumber {first['cuInvoiceNumber']}")
check(len(first["kraQrPayload"].split("#")) == 6, "kraQrPayload has six fields")

# The typed result validates as the SDK's SaleResult.
typed = client.submit_sale_typed(flat, idempotency_key=f"{tin}:SDK-1")
check(typed is not None, "typed replay")

# The same key and bytes: the stored sale again.
again = client.submit_sale(flat, idempotency_key=f"{tin}:SDK-1")
for field in ("purchaseId", "cuInvoiceNumber", "receiptSignature", "internalData"):
    check(again[field] == first[field], f"replay changed {field}")

# The same key with other bytes: IDEMPOTENCY_KEY_REUSED, raised as KRAConflictError.
other = invoice("SDK-1", [calculate_item("Consulting", "SVC-01", "5900", "B")])
try:
    client.submit_sale(other, idempotency_key=f"{tin}:SDK-1")
    sys.exit("SDK check failed: a reused key with another body was accepted")
except KRAConflictError as error:
    check("IDEMPOTENCY_KEY_REUSED" in str(error) or getattr(error, "code", "") == "IDEMPOTENCY_KEY_REUSED", str(error))

# Status.
status = client.get_sale_status(first["purchaseId"])
check(status["status"] == "SIGNED" and status["receiptSignature"] == first["receiptSignature"], f"status {status}")

# An itemised sale with mixed bands (the SDK sends items when bands mix).
items = [
    calculate_item("Flour", "FLOUR-2KG", "200", "A", 2).model_copy(update={"itemClsCd": "50221201"}),
    calculate_item("Soda", "SODA-500", "70", "B", 2).model_copy(update={"itemClsCd": "50202306"}),
    calculate_item("Fuel", "FUEL", "179.30", "E", "12.345").model_copy(update={"itemClsCd": "15101505"}),
]
mixed = client.submit_sale(invoice("SDK-2", items), idempotency_key=f"{tin}:SDK-2")
check(mixed["status"] == "SIGNED", f"itemised sale: {mixed}")
check(mixed["invcNo"] == "2", f"invcNo {mixed['invcNo']}")

# The original: the exact payload the control unit received, and its transport journal.
original = client.get_sale_original(first["purchaseId"])
check(original["kraRequest"]["invcNo"] == 1, f"original kraRequest {original.get('kraRequest')}")
check(any(e["endpoint"] == "saveTrnsSalesOsdc" and e["outcome"] == "ok" for e in original["transport"]),
      f"original transport {original.get('transport')}")

# Credit notes against the itemised sale: partial by line, too much, the rest, a second full.
partial = client.issue_credit_note(mixed["purchaseId"], idempotency_key="cn-1",
                                   return_lines=[ReturnLine(originalItemSeq=2, qty=Decimal("1"))],
                                   reason_code=CreditNoteReason.REFUND)
check(partial["status"] == "SIGNED" and partial["cuInvoiceNumber"].endswith(" NR")
      and partial["originalPurchaseId"] == mixed["purchaseId"], f"partial credit note {partial}")
try:
    client.issue_credit_note(mixed["purchaseId"], idempotency_key="cn-2",
                             return_lines=[ReturnLine(originalItemSeq=2, qty=Decimal("5"))])
    sys.exit("SDK check failed: a credit note beyond the original was accepted")
except CreditNoteExceedsOriginalError as error:
    check(Decimal(str(error.remaining)) == 1 and Decimal(str(error.already_reversed)) == 1,
          f"exceeds: remaining {error.remaining}, already {error.already_reversed}")
full = client.issue_credit_note(mixed["purchaseId"], idempotency_key="cn-3")
check(full["status"] == "SIGNED" and full["creditNoteId"] != partial["creditNoteId"], f"full credit note {full}")
try:
    client.issue_credit_note(mixed["purchaseId"], idempotency_key="cn-4")
    sys.exit("SDK check failed: a second full credit note was accepted")
except CreditNoteConflictError as error:
    check(error.existing_credit_note_id == full["creditNoteId"]
          and error.existing_cu_invoice_no == full["cuInvoiceNumber"], f"409: {error}")

# Search by the POS's own reference.
found = client.find_sale(client_reference="SDK-2")
check(found["purchaseId"] == mixed["purchaseId"] and found["status"] == "SIGNED", f"find_sale {found}")

# The device checkpoint and the sequence monitor.
device = client.device_status()
check(device["status"] == "READY" and device["sdcId"] == first["sdcId"], f"device {device}")
monitoring = client.device_monitoring()
check(monitoring["sequenceHealthy"] is True and monitoring["findings"] == [], f"monitoring {monitoring}")

# Items: one registration, then a CSV catalogue with one bad row (207, still a success).
item = client.register_item(ItemRegistration(sku="SDK-WATER", itemNm="Water 500ml", itemClsCd="50202301",
                                             taxTyCd="B", unitPrice=Decimal("50.00")))
check(item["vscuRegistered"] is True and item["itemCd"] == "SDK-WATER", f"register_item {item}")
catalogue = os.path.join(os.environ["USHURU_SDK_WORK_DIR"], "items.csv")
with open(catalogue, "w") as file:
    file.write("sku,itemNm,itemClsCd,taxTyCd,unitPrice\nSDK-BREAD,Bread,50181900,B,65.00\nSDK-BAD,Bad,12,B,1\n")
imported = client.bulk_import_items(catalogue)
check(imported["failed"] == 1 and [r["status"] for r in imported["results"]] == ["SYNCED", "INVALID"],
      f"bulk_import_items {imported}")

# Stock: a movement in, looked up by its key, then the remaining quantity after it.
moved = client.submit_stock_adjustment(
    [StockAdjustmentLine(itemCd="SDK-WATER", itemNm="Water 500ml", ioType="M", qty=Decimal("24"),
                         prc=Decimal("50.00"), taxTyCd="B")],
    remark="Delivery", idempotency_key="sdk/stock 1")
check(moved.status == "SYNCED" and moved.sarNo >= 1 and Decimal(str(moved.totAmt)) == Decimal("1200.00"),
      f"submit_stock_adjustment {moved}")
again = client.inspect_stock_operation("sdk/stock 1")
check(again.movementId == moved.movementId and again.sarNo == moved.sarNo, f"inspect_stock_operation {again}")
residual = client.submit_stock_master(StockMasterRequest(originalIoKey="sdk/stock 1", itemCd="SDK-WATER",
                                                         rsdQty=Decimal("24")), idempotency_key="sdk-rsd-1")
check(residual.status == "SYNCED" and len(residual.transport) == 1, f"submit_stock_master {residual}")
check(client.inspect_stock_master("sdk-rsd-1").payloadSha256 == residual.payloadSha256, "inspect_stock_master")

# A buyer registered with the branch, and the init checkpoint.
customer = client.register_customer(BranchCustomerRegistration(pin="P000111222Q", name="Acme Ltd"))
check(customer["registered"] is True and customer["custNo"] == "000111222", f"register_customer {customer}")
init = client.initialize_branch()
check(init["status"] == "READY" and "cmcKey" not in init, f"initialize_branch {init}")

print("taxid-etims SDK: 22 checks passed against", os.environ["TAXID_API_URL"])
