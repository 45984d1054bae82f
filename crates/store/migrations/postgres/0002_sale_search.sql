-- GET /v2/etims/sales/search?clientReference=… finds a branch's latest sale with the
-- POS's own reference without scanning the branch's sales.
CREATE INDEX sales_by_client_reference ON sales (tenant_id, branch_id, client_reference, id);
