"""Helpers of bench/tax-vs-reference: generate invoices, time the reference, compare.

    python tax_reference.py generate LINES OUT.jsonl   # deterministic invoices, LINES lines in all
    python tax_reference.py reference IN.jsonl         # time taxid-etims 0.8.1 on them
    python tax_reference.py compare IN.jsonl OUT.jsonl # ushuru's output == the reference's, every field
"""

import json
import random
import sys
import time
from decimal import Decimal


def generate(total_lines: int, path: str) -> None:
    rng = random.Random(20261121)
    written = 0
    with open(path, "w") as out:
        while written < total_lines:
            count = min(rng.randint(1, 10), total_lines - written)
            lines = []
            for _ in range(count):
                price = f"{rng.randint(1, 5_000_000) / 100:.2f}" if rng.random() < 0.9 else str(rng.randint(1, 500))
                qty = str(rng.randint(1, 24)) if rng.random() < 0.8 else f"{rng.randint(1, 99_999) / 1000:.3f}"
                line = {
                    "name": rng.choice(["Maize flour 2kg", "Soda 500ml", "Diesel", "Consulting", "Sugar 1kg"]),
                    "item_code": f"SKU-{rng.randint(1, 99_999):05d}",
                    "price": price,
                    "band": rng.choice("ABBBBCDE"),
                    "qty": qty,
                    "price_is_inclusive": rng.random() < 0.8,
                }
                roll = rng.random()
                if roll < 0.1:
                    line["discount_rate"] = str(rng.randint(1, 30))
                elif roll < 0.15:
                    line["discount"] = "1.00"
                lines.append(line)
            out.write(json.dumps({"lines": lines}, separators=(",", ":")) + "\n")
            written += count


def _load(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _price(invoice: dict) -> tuple:
    from kra_etims.tax import build_invoice_totals, calculate_item

    items = [
        calculate_item(
            l["name"],
            l["item_code"],
            l["price"],
            l["band"],
            l["qty"],
            price_is_inclusive=l["price_is_inclusive"],
            discount=l.get("discount"),
            discount_rate=l.get("discount_rate"),
        )
        for l in invoice["lines"]
    ]
    return items, build_invoice_totals(items)


def reference(path: str) -> None:
    """Times only the arithmetic (calculate_item + build_invoice_totals): JSON parsing is
    done before the clock starts, which favours the reference."""
    invoices = _load(path)
    lines = sum(len(i["lines"]) for i in invoices)
    start = time.perf_counter()
    for invoice in invoices:
        _price(invoice)
    seconds = time.perf_counter() - start
    print(json.dumps({"lines": lines, "invoices": len(invoices), "seconds": seconds, "lines_per_second": lines / seconds}))


def compare(input_path: str, output_path: str) -> None:
    invoices = _load(input_path)
    results = _load(output_path)
    if len(invoices) != len(results):
        sys.exit(f"{len(invoices)} invoices in, {len(results)} results out")
    fields = ["qty", "uprc", "splyAmt", "dcRt", "dcAmt", "taxblAmt", "taxAmt", "totAmt"]
    checked = 0
    for n, (invoice, result) in enumerate(zip(invoices, results), 1):
        items, totals = _price(invoice)
        if "error" in result:
            sys.exit(f"invoice {n}: ushuru refused it: {result['error']}")
        for m, (item, got) in enumerate(zip(items, result["lines"]), 1):
            for field in fields:
                if Decimal(str(getattr(item, field))) != Decimal(got[field]):
                    sys.exit(f"invoice {n} line {m} {field}: reference {getattr(item, field)}, ushuru {got[field]}")
            checked += 1
        for field in ["totTaxblAmt", "totTaxAmt", "totAmt", "totItemCnt"]:
            if Decimal(str(totals[field])) != Decimal(str(result["totals"][field])):
                sys.exit(f"invoice {n} {field}: reference {totals[field]}, ushuru {result['totals'][field]}")
    print(f"identical: {checked} lines and {len(invoices)} invoice totals")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"generate": lambda: generate(int(args[0]), args[1]), "reference": lambda: reference(args[0]),
     "compare": lambda: compare(args[0], args[1])}[command]()
