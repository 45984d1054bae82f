"""The taxid-etims 0.8.1 SDK's operator calls against `ushuru serve`: provision_tenant
provisions a branch while serving, issue_tenant_key issues its key, and that key signs a
sale at once; a branch key is refused, a duplicate conflicts, a bad PIN is refused.

Run by crates/cli/tests/provision.rs. Exits non-zero with a message on the first surprise.
"""

import os
import sys

from kra_etims.client import KRAeTIMSClient
from kra_etims.exceptions import KRAAuthorizationError, KRAConflictError, KRAeTIMSError
from kra_etims.models import SaleInvoice, TenantProvisioning
from kra_etims.tax import build_invoice_totals, calculate_item

url = os.environ["TAXID_API_URL"]
operator_key = os.environ["USHURU_OPERATOR_KEY"]
branch_key = os.environ["USHURU_BRANCH_KEY"]
tin = os.environ["USHURU_NEW_TIN"]
passed = 0


def check(condition, what):
    global passed
    if not condition:
        sys.exit(f"SDK provisioning check failed: {what}")
    passed += 1


operator = KRAeTIMSClient(api_key=operator_key, base_url=url)
provisioned = operator.provision_tenant(TenantProvisioning(tin=tin, bhfId="00", dvcSrlNo="SDK-POS-1"))
check(provisioned["tin"] == tin and provisioned["bhfId"] == "00", f"provisioned: {provisioned}")
check(provisioned["status"] == "READY" and provisioned["controlUnitType"] == "VSCU", f"provisioned: {provisioned}")
check("cmcKey" not in provisioned and "cmc_key" not in str(provisioned).lower(), "no cmcKey in the answer")

tenants = operator.list_tenants()
check(any(t["tin"] == tin for t in tenants), f"listed: {tenants}")

issued = operator.issue_tenant_key(provisioned["deviceId"], "sdk-till")
till = KRAeTIMSClient(api_key=issued["apiKey"], base_url=url)
items = [calculate_item("Consulting", "SVC-01", "1160", "B")]
invoice = SaleInvoice(tin=tin, bhfId="00", invcNo="PROV-1", confirmDt="20261122120000", itemList=items,
                      **build_invoice_totals(items))
signed = till.submit_sale(invoice, idempotency_key=f"{tin}:PROV-1")
check(signed["status"] == "SIGNED", f"sale: {signed}")

try:
    operator.provision_tenant(TenantProvisioning(tin=tin, bhfId="00", dvcSrlNo="SDK-POS-1"))
    sys.exit("SDK provisioning check failed: a duplicate was provisioned")
except KRAConflictError as error:
    check("TENANT_BRANCH_EXISTS" in str(error), f"duplicate: {error}")

try:
    KRAeTIMSClient(api_key=branch_key, base_url=url).provision_tenant(
        TenantProvisioning(tin=tin, bhfId="09", dvcSrlNo="SDK-POS-9"))
    sys.exit("SDK provisioning check failed: a branch key provisioned")
except KRAAuthorizationError as error:
    check("403" in str(error), f"branch key: {error}")

try:
    operator.provision_tenant(TenantProvisioning(tin="not-a-pin", bhfId="00", dvcSrlNo="X"))
    sys.exit("SDK provisioning check failed: a bad PIN was provisioned")
except KRAeTIMSError as error:
    check("422" in str(error) and "INVALID_TIN" in str(error), f"bad PIN: {error}")

print(f"{passed} provisioning checks passed")
