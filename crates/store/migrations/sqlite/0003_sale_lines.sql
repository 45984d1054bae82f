-- A sale's priced lines, written in the same transaction as the sale (phase 1): what the
-- customer bought, line by line, independent of the KRA payload's wire format. Credit
-- notes reverse against these quantities.
CREATE TABLE sale_lines (
    tenant_id   INTEGER NOT NULL,
    branch_id   INTEGER NOT NULL,
    sale_id     INTEGER NOT NULL,
    item_seq    INTEGER NOT NULL CONSTRAINT sale_lines_seq_check CHECK (item_seq >= 1),
    item_cd     TEXT NOT NULL,
    item_nm     TEXT NOT NULL,
    tax_ty_cd   TEXT NOT NULL,
    qty         TEXT NOT NULL,
    uprc        TEXT NOT NULL,
    dc_amt      TEXT NOT NULL,
    taxbl_amt   TEXT NOT NULL,
    tax_amt     TEXT NOT NULL,
    tot_amt     TEXT NOT NULL,
    CONSTRAINT sale_lines_pk PRIMARY KEY (sale_id, item_seq),
    CONSTRAINT sale_lines_sale_fk FOREIGN KEY (sale_id, tenant_id, branch_id)
        REFERENCES sales (id, tenant_id, branch_id)
);
